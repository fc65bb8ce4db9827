"""The audit runner: how a model's accuracy degrades under a chain of attacks and budgets.

The path of the data: :mod:`~mlsec.auditing.plan` resolves and validates the suite, eps grid and
thresholds once; :mod:`~mlsec.auditing.clean` checks the data once and runs the clean pass;
:mod:`~mlsec.auditing.chain` runs the survivors chain with the resume store; the sanity checks
(:mod:`~mlsec.auditing.checks`) and examples (:mod:`~mlsec.auditing.examples`) follow, and
everything lands in an :class:`~mlsec.auditing.report.AuditReport`.

Inside an initialised process group (``torchrun``, see :mod:`mlsec.core.distributed`) every rank
calls :func:`audit` with the same arguments: the samples are split across the ranks, no sample
attacked twice, and every rank returns the same report, equal to a single process's. Rank 0 alone
draws progress and runs the sanity checks and examples.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from torch import nn

from mlsec.attacks import Attack
from mlsec.auditing import checks
from mlsec.auditing.certified import Certification, method_name, run_certification
from mlsec.auditing.chain import ChainResult, Runner, run_chain
from mlsec.auditing.chain_checks import ChainView, chain_checks
from mlsec.auditing.checks import CheckRun
from mlsec.auditing.clean import HEAD, CleanPass, clean_pass
from mlsec.auditing.examples import find_examples
from mlsec.auditing.plan import Plan, make_plan, resolve_suite
from mlsec.auditing.report import AttackOutcome, AuditReport
from mlsec.auditing.resume import Checkpoint
from mlsec.auditing.soundness import check_soundness
from mlsec.auditing.suite import DEFAULT_EPS, Suite
from mlsec.auditing.thresholds import Threshold, evaluate
from mlsec.core import model as _model
from mlsec.core.data import Samples, as_samples
from mlsec.core.distributed import Group, agree, broadcast, current, gather_results
from mlsec.core.fingerprint import fingerprint_code, fingerprint_model, fingerprint_tensors
from mlsec.core.progress import Tracker
from mlsec.core.progress import progress as progress_bars
from mlsec.core.text import printable
from mlsec.core.threat import Norm, check_certified_norm
from mlsec.core.version import VERSION
from mlsec.defenses.certified.smoothing import Smoothing

__all__ = ["DEFAULT_EPS", "AttackOutcome", "AuditReport", "audit", "environment", "open_store"]


def environment(device: torch.device) -> dict[str, str]:
    """Versions, platform and device, for the report."""
    env = {
        "mlsec": VERSION,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def open_store(
    checkpoint: str | Path | None,
    fingerprint: dict[str, Any],
    *,
    samples: int,
    console: Console | None,
    announce: bool,
    group: Group | None = None,
) -> Checkpoint | None:
    """The checkpoint folder for ``fingerprint`` (versions added), or ``None`` without one.

    In a job of several processes rank 0 opens (and may create) the folder first, then the
    others; an error on any rank stops every rank.
    """
    if checkpoint is None:
        return None
    group = group or Group()
    fingerprint = {**fingerprint, "mlsec": VERSION, "torch": torch.__version__}

    opened: list[Checkpoint] = []

    def open_it() -> None:
        opened.append(Checkpoint(Path(checkpoint), fingerprint, samples=samples, rank=group.rank))

    def wait() -> None:
        return None

    gather_results(group, open_it if group.is_main else wait)
    if group.world > 1:
        gather_results(group, wait if group.is_main else open_it)
    store = opened[0]
    if store.records and announce:
        (console or Console(stderr=True)).print(
            f"resuming from {printable(store.directory)}: {len(store.records)} finished "
            "batches recorded",
            highlight=False,
            markup=False,
        )
    return store


def audit(
    model: nn.Module,
    data: Samples | tuple[torch.Tensor, torch.Tensor] | Any,
    *,
    suite: Suite | str | Path | None = None,
    attacks: Sequence[Attack | str] | None = None,
    eps: Sequence[float] | None = None,
    norm: Norm | None = None,
    bounds: tuple[float, float] | None = None,
    thresholds: Sequence[Threshold] = (),
    batch_size: int = 500,
    checkpoint: str | Path | None = None,
    sanity_checks: bool = True,
    survivors: bool = True,
    examples: int = 8,
    workers: int = 0,
    progress: bool = False,
    console: Console | None = None,
    model_name: str = "model",
    data_name: str = "data",
    data_classes: Mapping[str, int] | None = None,
    certify: str | Smoothing | None = None,
    noise_samples: int = 8,
) -> AuditReport:
    """Measure clean accuracy and robust accuracy under a chain of attacks over an eps grid.

    Args:
        model: the classifier, returning logits; left in the mode it was given in.
        data: ``(x, y)`` (inputs within the bounds, integer labels), a map-style ``Dataset`` or
            ``DataLoader``, or a :class:`~mlsec.core.data.Samples`; read batch by batch.
        suite: a Suite, a built-in suite name or a TOML file (:mod:`.suite`; ``default``).
        attacks: instead of a suite, attacks or registered names, chained in this order.
        eps: the budgets in input units; overrides the suite's grids.
        norm: overrides every attack's norm.
        bounds: overrides every attack's input bounds.
        thresholds: CI thresholds (:mod:`mlsec.auditing.thresholds`), judged in the report.
        batch_size: samples per attack call.
        checkpoint: a folder recording each finished batch; rerun with it to resume.
        sanity_checks: run the gradient-masking checks (:mod:`mlsec.auditing.checks`).
        survivors: attack only samples still standing (``False``: same numbers, more time).
        examples: how many clean/adversarial pairs to keep for the report's image grid.
        workers: data-loading worker processes (0: read in this process).
        progress: show progress: bars on a terminal, else one line per finished stage.
        console: where progress goes (default stderr).
        model_name: name of the model in the report.
        data_name: name of the data in the report.
        data_classes: an image folder's class name → label map, recorded in ``config``.
        certify: certified accuracy (a lower bound) at each eps too: ``"ibp"`` (linf) or a
            :class:`~mlsec.defenses.certified.smoothing.Smoothing` (l2; attacks then run on the
            smoothed classifier), checked against the attacks (:mod:`.soundness`).
        noise_samples: smoothing: noisy copies each forward pass of the attacks averages.

    Returns:
        An :class:`AuditReport` (under ``torchrun`` every rank gets rank 0's).

    Example:
        >>> import mlsec
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> model = mlsec.zoo.load("mnist-cnn")
        >>> report = audit(model, (x[:50], y[:50]), attacks=["fgsm"], eps=[0.3])
        >>> report.robust_accuracy("fgsm", 0.3) < report.clean_accuracy
        True

    """
    resolved = resolve_suite(suite, attacks, eps, norm, bounds)
    plan = make_plan(resolved, thresholds=thresholds, batch_size=batch_size,
                     survivors=survivors, certified=certify is not None)  # fmt: skip
    extra = {} if data_classes is None else {"data_classes": dict(data_classes)}
    config = plan.config(sanity_checks=sanity_checks, **extra)
    setup = _settle(model, certify, noise_samples, plan, config, (model_name, data_name), examples)
    samples, group = as_samples(data), current()
    agree(group, "settings or data", [_data_probe(samples), setup.config])
    main = group.is_main
    with progress_bars(enabled=progress and main, console=console) as tracker:
        job = _Job(setup.attacked, samples, plan, tracker, group, workers, model_name)
        clean, chain = _measure(job, checkpoint, console, announce=progress and main)
        warnings = _sanity(setup, samples, clean, chain, tracker) if sanity_checks and main else []
        certification, found = _certificates(setup, job, clean, chain)
    report = main and _report(setup, samples, clean, chain, warnings + found, certification)
    return cast(AuditReport, broadcast(group, report or None))  # every rank gets rank 0's


@dataclass(frozen=True)
class _Setup:
    """What the audit settled before any work: the models, certificate, plan and report config."""

    model: nn.Module
    attacked: nn.Module  # the smoothed classifier with smoothing, else the model itself
    certify: str | Smoothing | None
    plan: Plan
    config: dict[str, Any]
    names: tuple[str, str]
    examples: int
    check_runs: list[CheckRun] = field(default_factory=list)  # what each sanity check cost


def _settle(
    model: nn.Module,
    certify: str | Smoothing | None,
    noise_samples: int,
    plan: Plan,
    config: dict[str, Any],
    names: tuple[str, str],
    examples: int,
) -> _Setup:
    """The model the attacks run on (smoothing: the smoothed classifier), checked before work."""
    attacked = model
    if certify is not None:
        check_certified_norm(method_name(certify), plan.suite.norm)
    if isinstance(certify, Smoothing):
        attacked = certify.smoothed(model, samples=noise_samples)
        config = {**config, "noise_samples": noise_samples}
    return _Setup(model, attacked, certify, plan, config, names, examples)


def _certificates(
    setup: _Setup, job: _Job, clean: CleanPass, chain: ChainResult
) -> tuple[Certification | None, list[str]]:
    """The certificates at the plan's eps grid, checked against the attacks; and the warnings."""
    if setup.certify is None:
        return None, []
    certification = _certify(setup.model, job, setup.certify)
    warnings = check_soundness(
        certification,
        setup.plan,
        clean.correct,
        chain.robust,
        model=setup.model,
        attacked=setup.attacked,
        samples=job.samples,
    )
    return certification, warnings


@dataclass(frozen=True)
class _Job:
    """What the clean pass and the chain share: the model, the data, the plan, the ranks."""

    model: nn.Module
    samples: Samples
    plan: Plan
    tracker: Tracker
    group: Group
    workers: int
    name: str


def _measure(
    job: _Job, checkpoint: str | Path | None, console: Console | None, *, announce: bool
) -> tuple[CleanPass, ChainResult]:
    """The clean pass, then (the ranks agreeing on the model) the resumable survivors chain."""
    plan, samples = job.plan, job.samples
    clean = clean_pass(
        job.model,
        samples,
        bounds=plan.suite.bounds,
        batch_size=plan.batch_size,
        tracker=job.tracker,
        group=job.group,
        workers=job.workers,
        name=job.name,
    )
    fingerprint = _fingerprint(job.model, clean.digest, plan)
    agree(job.group, "models", fingerprint)
    store = open_store(
        checkpoint,
        fingerprint,
        samples=len(samples),
        console=console,
        announce=announce,
        group=job.group,
    )
    device = _model.device_of(job.model)
    runner = Runner(samples, plan.batch_size, device, job.tracker, store, job.group, job.workers)
    return clean, run_chain(runner, job.model, plan, clean.correct)


def _certify(model: nn.Module, job: _Job, method: str | Smoothing) -> Certification:
    """Certificates of every sample at the suite's eps grid, the ranks sharing the work."""
    return run_certification(
        model,
        job.samples,
        method=method,
        eps=job.plan.eps,
        bounds=job.plan.suite.bounds,
        batch_size=job.plan.batch_size,
        tracker=job.tracker,
        group=job.group,
        workers=job.workers,
    )


def _data_probe(samples: Samples) -> list[Any]:
    """The data's size and a digest of its first, middle and last samples (ranks compare them)."""
    n = len(samples)
    x, y = samples.get(sorted({0, n // 2, n - 1}))
    return [n, fingerprint_tensors(x, y)]


def _fingerprint(model: nn.Module, data: str, plan: Plan) -> dict[str, Any]:
    """Everything that decides the numbers (the suite's config holds each attack's seed).

    Not the batch size nor the number of processes: randomness is keyed by sample, so neither
    changes a number, and a resumed run may change both.
    """
    return {
        "model": fingerprint_model(model),
        "code": fingerprint_code(model),
        "data": data,
        "suite": plan.suite.to_config(),
        "survivors": plan.survivors,
    }


def _sanity(
    setup: _Setup, samples: Samples, clean: CleanPass, chain: ChainResult, tracker: Tracker
) -> list[str]:
    """The model's checks on the clean pass's first samples, then the chain's; costs recorded."""
    model = setup.attacked
    # The audit restores the modes it changes, so the model is in the mode it was handed in.
    was_training = any(module.training for module in model.modules())
    stage = tracker.stage("sanity checks", total=None)
    x, y = samples.get(range(min(len(samples), HEAD)))
    warnings = checks.model_checks(
        model,
        x,
        y,
        clean.logits,
        was_training=was_training,
        random_by_design=setup.attacked is not setup.model,  # a smoothed classifier
        runs=setup.check_runs,
    )
    view = ChainView(model, samples, setup.plan, clean.correct, chain.robust, setup.check_runs)
    warnings += chain_checks(view)
    stage.finish()
    return warnings


def _report(
    setup: _Setup,
    samples: Samples,
    clean: CleanPass,
    chain: ChainResult,
    warnings: list[str],
    certification: Certification | None,
) -> AuditReport:
    model, plan, names, config = setup.attacked, setup.plan, setup.names, setup.config
    n = len(samples)
    accuracy = {key: int(mask.sum()) / n for key, mask in chain.robust.items()}
    accuracy.update({("worst", value): acc for value, acc in chain.worst_case.items()})
    if certification is not None:
        accuracy.update(
            {("certified", o.eps): o.certified_accuracy for o in certification.outcomes}
        )
    return AuditReport(
        model=names[0],
        data=names[1],
        norm=plan.suite.norm,
        bounds=plan.suite.bounds,
        n=n,
        clean_accuracy=clean.accuracy,
        outcomes=chain.outcomes,
        worst_case=chain.worst_case,
        warnings=warnings,
        thresholds=evaluate(plan.thresholds, clean.accuracy, accuracy),
        examples=find_examples(model, samples, plan, clean.correct, chain.robust, setup.examples),
        config=config,
        environment=environment(_model.device_of(model)),
        correct=clean.correct,
        robust=chain.robust,
        strength_note=plan.strength_note,
        certification=certification,
        checks=list(setup.check_runs),
    )
