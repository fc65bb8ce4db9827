"""Certificates against attacks, on every run: no certified sample may be broken within eps.

A sample certified at eps and broken by an attack within eps contradicts one of the two. For
interval bounds, which hold exactly (up to float rounding), that is a bug: :func:`check_soundness`
raises :class:`~mlsec.errors.SoundnessError` naming the sample, the budget and the attack. A
randomized-smoothing certificate is of the smoothed classifier and holds with probability at least
``1 - alpha``; the attacks' verdict there comes from a Monte Carlo estimate of that classifier, so
each contradiction is re-judged with PREDICT (Cohen et al.'s test, ``n`` fresh draws) on the
attack's example, re-made from its sample-keyed draws. Those that PREDICT confirms are counted;
more than ``alpha`` explains is a warning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlsec.auditing.certified import Certification, allowed_violations
from mlsec.auditing.plan import Plan, PlannedAttack
from mlsec.core import model as _model
from mlsec.core.data import Samples
from mlsec.defenses.certified.smoothing import Smoothing
from mlsec.errors import SoundnessError

__all__ = ["check_soundness"]

# Where a sample fell: the stage that broke it, or None when the model misclassified it clean.
_Fall = tuple[int, PlannedAttack | None]


def check_soundness(
    certification: Certification,
    plan: Plan,
    correct: torch.Tensor,
    robust: dict[tuple[str, float], torch.Tensor],
    *,
    model: nn.Module,
    attacked: nn.Module,
    samples: Samples,
) -> list[str]:
    """Compare the certificates with the attacks; record what was found; return the warnings.

    Args:
        certification: the certificates (its ``soundness`` record is filled in here).
        plan: the chain that ran.
        correct: bool ``[n]``, the clean pass.
        robust: ``(label, eps)`` -> bool ``[n]``, the samples standing after each stage.
        model: the certified model (smoothing: the base classifier).
        attacked: the model the attacks ran on (smoothing: the soft smoothed classifier).
        samples: the data.

    Raises:
        SoundnessError: an interval-bound certificate was broken.

    """
    falls: dict[float, list[_Fall]] = {}
    for eps in certification.eps:
        stages = [stage for stage in plan.stages if stage.eps <= eps]
        if not stages:
            continue
        standing = robust[(stages[-1].label, stages[-1].eps)]
        for i in (certification.masks[eps] & ~standing).nonzero().flatten().tolist():
            falls.setdefault(eps, []).append((i, _fall(i, correct, robust, stages)))
    params = certification.params
    if certification.method == "ibp":
        _refuse_broken_intervals(falls)
        certification.soundness.update(checked=True, violations=0)
        return []
    smoothing = Smoothing(**params)
    broken = _rejudge(falls, smoothing, model, attacked, samples)
    return _smoothing_record(certification, falls, broken, smoothing.alpha)


def _fall(
    i: int,
    correct: torch.Tensor,
    robust: dict[tuple[str, float], torch.Tensor],
    stages: list[PlannedAttack],
) -> PlannedAttack | None:
    if not bool(correct[i]):
        return None
    return next(stage for stage in stages if not bool(robust[(stage.label, stage.eps)][i]))


def _refuse_broken_intervals(falls: dict[float, list[_Fall]]) -> None:
    for eps, found in falls.items():
        i, stage = found[0]
        how = (
            "the model misclassifies it without any perturbation"
            if stage is None
            else f"{stage.label} broke it at eps {stage.eps:g}"
        )
        raise SoundnessError(
            f"sample {i} is certified by interval bounds at eps {eps:g}, but {how} "
            f"({len(found)} such samples at this eps): the bounds or the attack are wrong, or the "
            "model's forward differs from its layers; please report this with the command"
        )


def _rejudge(
    falls: dict[float, list[_Fall]],
    smoothing: Smoothing,
    model: nn.Module,
    attacked: nn.Module,
    samples: Samples,
) -> set[int]:
    """The samples whose example PREDICT confirms as a wrong class (not an abstention)."""
    by_stage: dict[int, tuple[PlannedAttack | None, list[int]]] = {}
    for found in falls.values():
        for i, stage in found:
            by_stage.setdefault(id(stage), (stage, []))[1].append(i)
    device = _model.device_of(model)
    broken: set[int] = set()
    for stage, indices in by_stage.values():
        rows = sorted(set(indices))
        x, y = (t.to(device) for t in samples.get(rows))
        index = torch.tensor(rows, dtype=torch.long, device=device)
        example = x if stage is None else _remake(stage, attacked, x, y, index)
        with _model.frozen(model):
            prediction = smoothing.predict(model, example, index=index)
        wrong = (prediction != y) & (prediction >= 0)
        broken.update(r for r, w in zip(rows, wrong.tolist(), strict=True) if w)
    return broken


def _remake(
    stage: PlannedAttack, attacked: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """The stage's example for these samples: the same keyed draws give the same example."""
    result = stage.attack.run(attacked, x, y, index=index)
    return result.x_adv


def _smoothing_record(
    certification: Certification,
    falls: dict[float, list[_Fall]],
    broken: set[int],
    alpha: float,
) -> list[str]:
    rows: list[dict[str, Any]] = []
    warnings = []
    for outcome in certification.outcomes:
        found = {i for i, _ in falls.get(outcome.eps, [])}
        violations = len(found & broken)
        allowed = allowed_violations(outcome.certified, alpha)
        rows.append(
            {
                "eps": outcome.eps,
                "certified": outcome.certified,
                "contradicted": len(found),
                "confirmed": violations,
                "allowed": allowed,
            }
        )
        if violations > allowed:
            warnings.append(
                f"{violations} of {outcome.certified} samples certified by randomized smoothing "
                f"at l2 radius {outcome.eps:g} were broken by an attack within it (PREDICT "
                f"confirms each); alpha = {alpha:g} explains at most {allowed}: the base model or "
                "the noise draws may not be what the certificate assumed"
            )
    certification.soundness.update(checked=True, per_eps=rows)
    return warnings
