"""The privacy audit of one model: how well membership-inference attacks tell its members apart.

:func:`audit_privacy` scores the members (the model's training data) and the non-members with
each attack and reports ROC AUC, balanced accuracy and TPR at low FPR per attack
(:func:`~mlsec.attacks.inference.metrics.membership_metrics`) in a
:class:`~mlsec.auditing.privacy_report.PrivacyReport`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from torch import nn

from mlsec.attacks.inference.art_blackbox import art_blackbox
from mlsec.attacks.inference.lira import lira_offline
from mlsec.attacks.inference.metrics import (
    DEFAULT_FPRS,
    MembershipMetrics,
    check_fprs,
    membership_metrics,
)
from mlsec.attacks.inference.scores import SCORES, logit_scaled, logits_of
from mlsec.auditing.privacy_report import LeakThreshold, PrivacyReport, evaluate_leaks
from mlsec.auditing.run import environment
from mlsec.auditing.shadows import Shadows, ShadowSet, sample_hashes, shadow_phi, train_shadows
from mlsec.core import model as model_helpers
from mlsec.core.data import Samples, as_tensors
from mlsec.core.progress import Tracker
from mlsec.core.progress import progress as progress_bars
from mlsec.core.validation import check_count, check_seed
from mlsec.errors import InputError

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "audit_privacy"]

DEFAULT_ATTACKS = ("loss", "confidence", "entropy", "art-blackbox", "lira")
ATTACKS = DEFAULT_ATTACKS
# Members per non-member (or the reverse) above which the report warns.
_IMBALANCE = 4.0

Pair = tuple[torch.Tensor, torch.Tensor]


def _tensors(data: Any, name: str) -> Pair:
    if isinstance(data, Samples):
        return data.tensors()
    return as_tensors(data, name)


def _check_data(members: Pair, non_members: Pair, names: tuple[str, str]) -> list[str]:
    """Refuse too few samples, different shapes and overlap; the samples' fingerprints."""
    for (x, _), name in zip((members, non_members), names, strict=True):
        if x.shape[0] < 2:
            raise InputError(f"{name}: membership inference needs at least 2 samples (got 1)")
    if members[0].shape[1:] != non_members[0].shape[1:]:
        raise InputError(
            f"{names[0]} and {names[1]} have different input shapes per sample "
            f"({tuple(members[0].shape[1:])} and {tuple(non_members[0].shape[1:])}); give data "
            "the model takes, the same for both"
        )
    hashes = sample_hashes(*members) + sample_hashes(*non_members)
    inside = set(hashes[: members[0].shape[0]])
    shared = [i for i, h in enumerate(hashes[members[0].shape[0] :]) if h in inside]
    if shared:
        raise InputError(
            f"{len(shared)} samples are in both {names[0]} and {names[1]} (the same input and "
            f"label; the first is {names[1]} sample {shared[0]}); a sample is a member or not: "
            "remove them from one of the two"
        )
    return hashes


def _warnings(
    members: Pair,
    non_members: Pair,
    accuracy: tuple[float, float],
    results: list[MembershipMetrics],
) -> list[str]:
    found = []
    m, n = members[0].shape[0], non_members[0].shape[0]
    error = ((m + n + 1) / (12.0 * m * n)) ** 0.5  # the AUC's standard error without a signal
    below = [r for r in results if r.attack in SCORES and r.auc < 0.5 - 3.0 * error]
    if below:
        found.append(
            f"the members score lower than the non-members under {below[0].attack} (AUC "
            f"{below[0].auc:.3f}): no membership signal does that; the two sets likely differ in "
            "distribution (e.g. difficulty), which biases every attack that compares them"
        )
    if max(m, n) > _IMBALANCE * min(m, n):
        found.append(
            f"members and non-members differ a lot in number ({m:,} and {n:,}): ART's attack "
            f"model fits on {min(m, n) // 2:,} of each only, and the low-FPR figures rest on "
            f"{n:,} non-members"
        )
    if accuracy[0] <= accuracy[1]:
        found.append(
            f"the model is no more accurate on the members ({accuracy[0]:.1%}) than on the "
            f"non-members ({accuracy[1]:.1%}): if the members are not its training data, the "
            "attacks measure nothing"
        )
    return found


def _null_auc(phi: torch.Tensor, inside: torch.Tensor, members: int) -> tuple[float, float]:
    """The members-vs-non-members AUC of the shadows' own scores on samples they never saw.

    For shadow ``k`` neither set is training data on its OUT samples, so membership cannot
    separate them: an AUC away from 0.5 measures how the two sets differ in distribution. Returns
    the mean over shadows and one shadow's standard error under no difference.
    """
    aucs, errors = [], []
    for k in range(phi.shape[0]):
        out = ~inside[k]
        mine, others = phi[k, :members][out[:members]], phi[k, members:][out[members:]]
        if len(mine) == 0 or len(others) == 0:
            continue
        aucs.append(membership_metrics("null", mine, others, ()).auc)
        m, n = len(mine), len(others)
        errors.append(((m + n + 1) / (12.0 * m * n)) ** 0.5)
    if not aucs:
        return 0.5, 1.0
    return sum(aucs) / len(aucs), max(errors)


def _lira(
    logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, shadow_set: ShadowSet, **kw: Any
) -> tuple[torch.Tensor, list[str], list[str]]:
    hashes, members = kw.pop("hashes"), kw.pop("members")
    inside = shadow_set.membership(hashes)
    phi = shadow_phi(shadow_set, x, y, **kw)
    scores = lira_offline(logit_scaled(logits, y), phi, inside)
    info = shadow_set.info
    null, error = _null_auc(phi, inside, members)
    notes = [
        f"offline LiRA, {len(shadow_set.models)} shadows ({info.get('arch')}, "
        f"{info.get('method')}), fixed variance; its strength depends on how closely the shadows' "
        "training resembles the target's",
        f"on samples they never trained on, the shadows tell members from non-members with AUC "
        f"{null:.3f} (0.5: the two sets do not differ in distribution)",
    ]
    warnings = []
    if abs(null - 0.5) > max(0.02, 3.0 * error):
        warnings.append(
            f"the members and non-members differ in distribution: shadow models that trained on "
            f"neither set already tell them apart with AUC {null:.3f}; attacks that learn from "
            "the two sets (art-blackbox) or compare them directly (loss, confidence, entropy) "
            "measure that difference as well as membership, LiRA calibrates it away per sample"
        )
    return scores, notes, warnings


def _run_attacks(
    model: nn.Module,
    data: tuple[Pair, Pair],
    logits: torch.Tensor,
    shadow_set: ShadowSet | None,
    settings: dict[str, Any],
    tracker: Tracker,
) -> list[MembershipMetrics]:
    members, non_members = data
    m = members[0].shape[0]
    x = torch.cat([members[0], non_members[0]])
    y = torch.cat([members[1], non_members[1]])
    results = []
    for name in settings["attacks"]:
        stage = tracker.stage(name, total=x.shape[0])
        start = time.perf_counter()
        notes: list[str] = []
        if name in SCORES:
            scores = SCORES[name](logits, y)
            member_scores, non_scores = scores[:m], scores[m:]
        elif name == "art-blackbox":
            member_scores, non_scores, note = art_blackbox(
                model, members, non_members, seed=settings["seed"], device=settings["device"]
            )
            notes.append(note)
        else:
            assert shadow_set is not None
            scores, notes, warnings = _lira(
                logits,
                y,
                x,
                shadow_set,
                hashes=settings["hashes"],
                members=m,
                batch_size=settings["batch_size"],
                device=settings["device"],
            )
            member_scores, non_scores = scores[:m], scores[m:]
            settings["warnings"].extend(warnings)
        seconds = time.perf_counter() - start
        # An attack scored on part of the non-members (art-blackbox: a half) cannot measure as
        # low an FPR as the others; it reports the rates it can and says which it cannot.
        fprs = [f for f in settings["fprs"] if f * len(non_scores) >= 1.0 - 1e-9]
        if len(fprs) < len(settings["fprs"]):
            dropped = ", ".join(f"{f:g}" for f in settings["fprs"] if f not in fprs)
            notes.append(
                f"no TPR at FPR {dropped}: its {len(non_scores):,} non-members cannot measure it"
            )
        results.append(
            membership_metrics(name, member_scores, non_scores, fprs, seconds=seconds, notes=notes)
        )
        stage.advance(x.shape[0])
        stage.finish()
    return results


def _check_attacks(
    attacks: Sequence[str], shadows: Shadows | None, shadow_set: ShadowSet | None
) -> list[str]:
    chosen = [attacks] if isinstance(attacks, str) else list(attacks)
    unknown = [a for a in chosen if a not in ATTACKS]
    if unknown or not chosen:
        raise InputError(
            f"unknown membership attack {unknown[0] if unknown else '(none given)'!r}; known "
            f"attacks: {', '.join(ATTACKS)}",
            subject="attacks",
        )
    if "lira" in chosen and shadows is None and shadow_set is None:
        raise InputError(
            "lira needs shadow models: give shadows (a Shadows recipe) or an already trained "
            "shadow_set, or leave lira out of the attacks",
            subject="attacks",
        )
    return list(dict.fromkeys(chosen))


def audit_privacy(
    model: nn.Module,
    members: Any,
    non_members: Any,
    *,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    shadows: Shadows | None = None,
    shadow_set: ShadowSet | None = None,
    fprs: Sequence[float] = DEFAULT_FPRS,
    thresholds: Sequence[LeakThreshold] = (),
    batch_size: int = 500,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    console: Console | None = None,
    model_name: str = "model",
    members_name: str = "members",
    non_members_name: str = "non-members",
) -> PrivacyReport:
    """Audit how much ``model`` leaks about which samples it was trained on.

    Args:
        model: the classifier, returning logits.
        members: its training data (or a part of it): an ``(x, y)`` pair, a
            :class:`~mlsec.core.data.Samples`, a Dataset or a DataLoader.
        non_members: data it never saw, from the same distribution.
        attacks: among :data:`DEFAULT_ATTACKS` (``loss``, ``confidence``, ``entropy``,
            ``art-blackbox``, ``lira``), in the order to run.
        shadows: the recipe of LiRA's shadow models, trained here on members and non-members
            together (cached: see :func:`~mlsec.auditing.shadows.train_shadows`).
        shadow_set: already trained shadows (instead of ``shadows``): train once, audit several
            models with them; their per-sample scores are computed once.
        fprs: the false-positive rates to report a TPR at; each must be at least
            ``1 / len(non_members)``.
        thresholds: leak thresholds to evaluate (:func:`parse_leak_thresholds`).
        batch_size: samples per forward pass.
        seed: seeds ART's split and attack model.
        device: where the model computes (default: where its weights are).
        progress: show a progress line per stage on ``console``.
        console: where progress goes (stderr by default).
        model_name: the model's name in the report.
        members_name: the members' name in the report and errors.
        non_members_name: the non-members' name in the report and errors.

    Returns:
        A :class:`PrivacyReport`: the metrics per attack in the order they ran.

    """
    start = time.perf_counter()
    chosen = _check_attacks(attacks, shadows, shadow_set)
    check_count("batch_size", batch_size)
    check_seed(seed)
    names = (members_name, non_members_name)
    data = (_tensors(members, members_name), _tensors(non_members, non_members_name))
    hashes = _check_data(*data, names)
    fprs = check_fprs(fprs, data[1][0].shape[0])
    device = torch.device(device) if device is not None else model_helpers.device_of(model)
    settings: dict[str, Any] = {
        "attacks": chosen,
        "fprs": fprs,
        "seed": seed,
        "batch_size": batch_size,
        "device": device,
        "hashes": hashes,
        "warnings": [],
        "start": start,
    }
    with progress_bars(enabled=progress, console=console) as tracker:
        logits, shadow_set, results = _score(
            model, data, settings, shadows, shadow_set, tracker, console
        )
    return _report(model_name, names, data, logits, results, shadow_set, settings, thresholds)


def _report(
    model_name: str,
    names: tuple[str, str],
    data: tuple[Pair, Pair],
    logits: torch.Tensor,
    results: list[MembershipMetrics],
    shadow_set: ShadowSet | None,
    settings: dict[str, Any],
    thresholds: Sequence[LeakThreshold],
) -> PrivacyReport:
    m = data[0][0].shape[0]
    correct = (logits.argmax(1) == torch.cat([data[0][1], data[1][1]])).double()
    accuracy = (float(correct[:m].mean()), float(correct[m:].mean()))
    info = None if shadow_set is None else dict(shadow_set.info)
    return PrivacyReport(
        model=model_name,
        members=names[0],
        non_members=names[1],
        member_accuracy=accuracy[0],
        non_member_accuracy=accuracy[1],
        results=results,
        shadows=info if "lira" in settings["attacks"] else None,
        warnings=_warnings(*data, accuracy, results) + settings["warnings"],
        thresholds=evaluate_leaks(thresholds, results),
        config={
            **{k: settings[k] for k in ("attacks", "seed", "batch_size")},
            "fprs": list(settings["fprs"]),
            "shadows": info,
        },
        environment=environment(settings["device"]),
        seconds=time.perf_counter() - settings["start"],
        notes=["scores: higher means more likely a member"],
    )


def _score(
    model: nn.Module,
    data: tuple[Pair, Pair],
    settings: dict[str, Any],
    shadows: Shadows | None,
    shadow_set: ShadowSet | None,
    tracker: Tracker,
    console: Console | None,
) -> tuple[torch.Tensor, ShadowSet | None, list[MembershipMetrics]]:
    """The model's logits, the shadows (trained here if needed) and each attack's metrics."""
    x = torch.cat([data[0][0], data[1][0]])
    y = torch.cat([data[0][1], data[1][1]])
    stage = tracker.stage("logits", total=x.shape[0])
    logits = logits_of(model, x, settings["batch_size"], settings["device"])
    _check_labels(logits, y)
    stage.advance(x.shape[0])
    stage.finish()
    if "lira" in settings["attacks"] and shadow_set is None:
        assert shadows is not None
        shadow_set = train_shadows(
            shadows, x, y, device=settings["device"], progress=tracker.enabled, console=console
        )
    results = _run_attacks(model, data, logits, shadow_set, settings, tracker)
    return logits, shadow_set, results


def _check_labels(logits: torch.Tensor, y: torch.Tensor) -> None:
    classes = logits.shape[1]
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise InputError(
            f"labels lie in [{low}, {high}] but the model has {classes} outputs; labels must lie "
            f"in [0, {classes - 1}]"
        )
