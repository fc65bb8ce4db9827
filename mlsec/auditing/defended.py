"""Audit a purifier the way it would be attacked: non-adaptive and adaptive, side by side.

- **undefended**: the bare classifier under each attack.
- **non-adaptive**: adversarial examples made against the bare classifier, then purified. This is
  how the papers that introduced Defense-GAN and APE-GAN evaluated them.
- **adaptive**: the attack runs against the defended model itself. A purifier that is not
  differentiable (Defense-GAN's projection) is crossed with BPDA (its declared surrogate, the
  identity); a randomised one (Defense-GAN's random starts) is attacked in expectation with EOT
  over ``eot`` draws folded into the batch. A differentiable purifier (APE-GAN) gets the exact
  gradient.

It is the plain audit's pipeline: the plan (:mod:`~mlsec.auditing.plan`) with its thresholds, the
data checked once and the clean pass (:mod:`~mlsec.auditing.clean`), the chain's
:class:`~mlsec.auditing.chain.Runner` with the resume store, and an
:class:`~mlsec.auditing.report.AuditReport` per column. Each attack is judged alone (a row is
that attack's accuracy, not the chain's), and a randomised purifier's draws are keyed by the
sample (:mod:`mlsec.core.keyed`), so a resumed audit, another batch size or another number of
processes gives the numbers of an uninterrupted single run.

The adaptive number is the one to trust; when it falls clearly below the non-adaptive one the
report says so: the robustness holds only against attackers who ignore the defense.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from mlsec.attacks import EOT, Attack, create, get
from mlsec.attacks.base import examples_for_checked_data
from mlsec.attacks.steps import success_mask
from mlsec.auditing.chain import Runner
from mlsec.auditing.clean import clean_pass
from mlsec.auditing.defended_columns import GAP, Columns, column_reports, worst_cases
from mlsec.auditing.defended_report import DefenseReport, DefenseRow
from mlsec.auditing.plan import Plan, make_plan, strength_note
from mlsec.auditing.run import open_store
from mlsec.auditing.suite import Suite, SuiteEntry
from mlsec.auditing.thresholds import Threshold
from mlsec.core import model as _model
from mlsec.core.data import Samples, as_samples
from mlsec.core.distributed import Group, agree, broadcast, current
from mlsec.core.fingerprint import fingerprint_code, fingerprint_model
from mlsec.core.keyed import SampleKeys, drawing_for
from mlsec.core.progress import Tracker
from mlsec.core.progress import progress as progress_bars
from mlsec.core.validation import check_count
from mlsec.defenses.base import Purifier
from mlsec.errors import InputError

__all__ = ["GAP", "DefenseReport", "DefenseRow", "evaluate_defense", "worst_cases"]


# The defended audit's way to the standard suite's strength (see mlsec.auditing.plan).
STANDARD_COMMAND = (
    "mlsec audit --defense ... --attacks apgd,apgd-t,square --steps 100 "
    '(attacks=["apgd", "apgd-t", "square"], steps=100 in Python)'
)


@dataclass(frozen=True)
class _Setup:
    """The defended audit's settings, validated: its plan and how the adaptive attack is made."""

    plan: Plan
    attacks: tuple[str, ...]
    adaptive: tuple[str, ...]
    grid: tuple[float, ...]
    draws: int


def _plan(
    defense: Purifier,
    eps: Sequence[float],
    attacks: Sequence[str],
    adaptive: Sequence[str],
    steps: int,
    eot: int,
    seed: int,
    batch_size: int,
    thresholds: Sequence[Threshold],
) -> _Setup:
    if not isinstance(defense, Purifier):
        raise InputError(f"evaluate_defense needs a purifier (got {type(defense).__name__})")
    check_count("steps", steps)
    check_count("eot", eot)
    if not eps or any(not 0 <= e <= 1 for e in eps):
        raise InputError(f"eps values must lie in [0, 1] (got {list(eps)})", subject="eps")
    unknown = [a for a in adaptive if a not in attacks]
    if unknown:
        raise InputError(f"adaptive attacks {unknown} must also be in attacks {list(attacks)}")
    grid = tuple(sorted(float(e) for e in eps))
    entries = tuple(
        SuiteEntry(label=name, attack=_attack(name, steps, seed), eps=grid) for name in attacks
    )
    plan = make_plan(
        Suite(name="defended", entries=entries),
        thresholds=thresholds,
        batch_size=batch_size,
        survivors=False,
    )
    draws = eot if defense.randomized else 1
    note = strength_note([entry.attack for entry in entries], command=STANDARD_COMMAND)
    return _Setup(replace(plan, strength_note=note), tuple(attacks), tuple(adaptive), grid, draws)


def _attack(name: str, steps: int, seed: int) -> Attack:
    params: dict[str, object] = {"eps": 0.0, "seed": seed}
    if "steps" in {f.name for f in dataclasses.fields(get(name))}:
        params["steps"] = steps
    return create(name, **params)


# The call number a judging forward pass draws at (the clean pass draws at 0).
_JUDGE_CALL = 1


def _wrong(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Samples ``model`` misclassifies: the attacks' own success test, untargeted.

    A randomised model draws for each sample from keys of its index.
    """
    with torch.no_grad(), drawing_for(SampleKeys.of(0, index), _JUDGE_CALL):
        return success_mask(model(x), y, targeted=False)


def _run(
    setup: _Setup, runner: Runner, model: nn.Module, defended: nn.Module, columns: Columns
) -> None:
    """Each attack at each eps, on the bare model judged on both, then through the defense.

    The adaptive attack runs on the survivors of the defended clean pass and is judged by one
    more forward pass of the defended model.
    """
    for name in setup.attacks:
        for e in setup.grid:
            attack = next(p.attack for p in setup.plan.at(e) if p.label == name)

            def transfer(
                xb: torch.Tensor, yb: torch.Tensor, index: torch.Tensor, a: Attack = attack
            ) -> list[torch.Tensor]:
                x_adv = examples_for_checked_data(a, model, xb, yb, index)
                return [_wrong(model, x_adv, yb, index), _wrong(defended, x_adv, yb, index)]

            everyone = torch.ones(len(runner.samples), dtype=torch.bool)
            result = runner.attack(f"{name} eps={e:g} non-adaptive", everyone, transfer, judges=2)
            columns.add("undefended", name, e, result.broken[0], result)
            columns.add("non_adaptive", name, e, result.broken[1], result)
            if name not in setup.adaptive:
                continue
            through = EOT(attack=attack, samples=setup.draws) if setup.draws > 1 else attack

            def adaptive(
                xb: torch.Tensor, yb: torch.Tensor, index: torch.Tensor, a: Attack = through
            ) -> list[torch.Tensor]:
                x_adv = examples_for_checked_data(a, defended, xb, yb, index)
                return [_wrong(defended, x_adv, yb, index)]

            pool = columns.clean["non_adaptive"]
            result = runner.attack(f"{name} eps={e:g} adaptive", pool, adaptive)
            columns.add("adaptive", name, e, result.broken[0], result)


def evaluate_defense(
    defense: Purifier,
    model: nn.Module,
    data: Samples | tuple[torch.Tensor, torch.Tensor] | Any,
    *,
    eps: Sequence[float] = (0.3,),
    attacks: Sequence[str] = ("fgsm", "pgd", "apgd"),
    adaptive: Sequence[str] = ("pgd", "apgd"),
    steps: int = 20,
    eot: int = 4,
    seed: int = 0,
    batch_size: int = 100,
    thresholds: Sequence[Threshold] = (),
    checkpoint: str | Path | None = None,
    workers: int = 0,
    progress: bool = False,
    console: Console | None = None,
    model_name: str = "model",
    data_name: str = "data",
    defense_name: str | None = None,
) -> DefenseReport:
    """Accuracy of ``model`` behind ``defense`` under non-adaptive and adaptive attacks (linf).

    Args:
        defense: a fitted purifier.
        model: the bare classifier (eval mode; returns logits).
        data: ``(x, y)`` within [0, 1], a map-style ``Dataset`` or ``DataLoader``, or a
            :class:`~mlsec.core.data.Samples`; read batch by batch.
        eps: linf budgets.
        attacks: registered attacks run non-adaptively (against the bare classifier).
        adaptive: registered gradient attacks also run adaptively (through the defense).
        steps: iterations of the iterative attacks.
        eot: draws of the defense's randomness per adaptive step (EOT); ignored for a
            deterministic purifier.
        seed: the attacks' seed.
        batch_size: samples per attack call (an EOT call purifies ``eot`` times as many).
        thresholds: CI thresholds on the adaptive column (an attack's adaptive accuracy, else
            its non-adaptive one; ``worst``: the adaptive worst case; drops from the defended
            clean accuracy).
        checkpoint: a folder recording each finished batch; rerun with it to resume.
        workers: data-loading worker processes.
        progress: show progress (bars on a terminal, one line per stage otherwise).
        console: where progress goes (stderr by default).
        model_name: the model's label in the report.
        data_name: the data's label in the report.
        defense_name: the defense's label in the report (default: its registered name).

    Returns:
        A :class:`DefenseReport`; its ``flags`` say when the adaptive worst case is more than
        :data:`GAP` below the non-adaptive one.

    """
    setup = _plan(defense, eps, attacks, adaptive, steps, eot, seed, batch_size, thresholds)
    start = time.perf_counter()
    samples = as_samples(data)
    group = current()
    agree(group, "settings", [setup.plan.suite.to_config(), len(samples)])
    model.eval()
    defended = defense.wrap(model).eval()
    with progress_bars(enabled=progress and group.is_main, console=console) as tracker:
        columns, digest = _clean(setup, model, defended, samples, tracker, group, workers)
        fingerprint = _fingerprint(setup, defense, model, defended, digest)
        agree(group, "models or defenses", fingerprint)
        announce = progress and group.is_main
        store = open_store(checkpoint, fingerprint, samples=len(samples), console=console,
                           announce=announce, group=group)  # fmt: skip
        device = _model.device_of(model)
        runner = Runner(samples, batch_size, device, tracker, store, group, workers)
        _run(setup, runner, model, defended, columns)
    settings = _settings(setup, defense, steps, seed)
    names = (defense_name or defense.name, model_name, data_name)
    report = column_reports(columns, setup.plan, names[0], defense.params(), *names[1:],
                            settings, purifier=defense.name)  # fmt: skip
    report.seconds = round(time.perf_counter() - start, 1)
    shared: DefenseReport = broadcast(group, report if group.is_main else None)
    return shared


def _settings(setup: _Setup, defense: Purifier, steps: int, seed: int) -> dict[str, Any]:
    gradient = "exact gradient" if defense.differentiable else f"BPDA, {defense.surrogate_name}"
    if setup.draws > 1:
        gradient += f", EOT over {setup.draws} draws"
    return {
        "eps": list(setup.grid),
        "attacks": list(setup.attacks),
        "adaptive": list(setup.adaptive),
        "steps": steps,
        "eot": setup.draws,
        "seed": seed,
        "gradient": gradient,
    }


def _clean(
    setup: _Setup,
    model: nn.Module,
    defended: nn.Module,
    samples: Samples,
    tracker: Tracker,
    group: Group,
    workers: int,
) -> tuple[Columns, str]:
    """Both clean passes (the bare and the defended model); the columns and the data's digest."""
    options: dict[str, Any] = {
        "bounds": (0.0, 1.0),
        "batch_size": setup.plan.batch_size,
        "tracker": tracker,
        "group": group,
        "workers": workers,
    }
    bare = clean_pass(model, samples, description="clean", **options)
    behind = clean_pass(defended, samples, description="clean defended", **options)
    columns = Columns(
        n=len(samples),
        adaptive=bool(setup.adaptive),
        bare=bare.correct,
        behind=behind.correct,
        device=_model.device_of(model),
    )
    return columns, bare.digest


def _fingerprint(
    setup: _Setup,
    defense: Purifier,
    model: nn.Module,
    defended: nn.Module,
    data: str,
) -> dict[str, object]:
    return {
        "model": fingerprint_model(model),
        "code": fingerprint_code(model),
        "defense": {
            "name": defense.name,
            "params": defense.params(),
            "networks": fingerprint_model(defended),
            "code": fingerprint_code(defended),
        },
        "data": data,
        "suite": setup.plan.suite.to_config(),
        "settings": {
            "adaptive": list(setup.adaptive),
            "eot": setup.draws,
            "differentiable": defense.differentiable,
        },
    }
