"""The audit runner: how a model's accuracy degrades under a chain of attacks and budgets.

Survivors only: the eps grid is walked in ascending order and, at each eps, the suite's attacks run
in chain order, each on the samples nothing has broken yet. A sample broken at a smaller eps is
broken at every larger one (the same example is admissible), and a sample one attack broke is not
handed to the next. The per-sample worst case is the fraction of samples surviving every attack;
it equals the naive run's (every attack on every sample at every eps) while costing less.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import nn

from mlsec.attacks import Attack
from mlsec.auditing import checks
from mlsec.auditing.report import AttackOutcome, AuditReport, Example
from mlsec.auditing.resume import BatchRecord, Checkpoint
from mlsec.auditing.suite import DEFAULT_EPS, Suite, load_suite
from mlsec.auditing.thresholds import Threshold, check_against, evaluate
from mlsec.core import model as _model
from mlsec.core.fingerprint import fingerprint_code, fingerprint_model, fingerprint_tensors
from mlsec.core.text import printable
from mlsec.core.threat import Norm
from mlsec.core.validation import check_batch, run_model
from mlsec.errors import InputError

__all__ = ["DEFAULT_EPS", "AttackOutcome", "AuditReport", "audit"]


class _Rate(ProgressColumn):
    """Samples per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} samples/s", style="cyan")


@contextmanager
def _progress(enabled: bool, console: Console | None) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=not enabled,
    )
    with progress:
        yield progress


def _environment(device: torch.device) -> dict[str, str]:
    from mlsec.core.version import VERSION as __version__

    env = {
        "mlsec": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def _resolve_suite(
    suite: Suite | str | Path | None,
    attacks: Sequence[Attack | str] | None,
    eps: Sequence[float] | None,
    norm: Norm | None,
    bounds: tuple[float, float] | None,
) -> Suite:
    if suite is not None and attacks is not None:
        raise InputError("give either suite= or attacks=, not both")
    if attacks is not None:
        resolved = Suite.from_attacks(attacks, DEFAULT_EPS if eps is None else eps)
    elif isinstance(suite, Suite):
        resolved = suite
    else:
        resolved = load_suite(suite if suite is not None else "default")
    return resolved.with_overrides(eps=eps, norm=norm, bounds=bounds)


def audit(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
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
    progress: bool = False,
    console: Console | None = None,
    model_name: str = "model",
    data_name: str = "data",
    data_classes: Mapping[str, int] | None = None,
) -> AuditReport:
    """Measure clean accuracy and robust accuracy under a chain of attacks over an eps grid.

    Args:
        model: the classifier, returning logits; left in the mode it was given in.
        data: ``(x, y)``: inputs within the bounds and integer labels.
        suite: a :class:`mlsec.auditing.suite.Suite`, a built-in suite name (``default``, ``quick``,
            ``standard``, ``thorough``) or a TOML file; default ``default`` (FGSM, then PGD-40).
        attacks: instead of a suite, attacks (their eps is replaced by each grid value) or
            registered names, chained in this order.
        eps: the budgets in input units; overrides the suite's grids.
        norm: overrides every attack's norm.
        bounds: overrides every attack's input bounds.
        thresholds: CI thresholds (see :mod:`mlsec.auditing.thresholds`); their verdicts go in the report.
        batch_size: samples per attack call.
        checkpoint: a folder where each finished batch is recorded; an interrupted audit with the
            same folder resumes where it stopped.
        sanity_checks: run the gradient-masking checks (:mod:`mlsec.auditing.checks`).
        survivors: attack only samples still standing (``False``: the naive run, every attack on
            every sample at every eps; same numbers, more time).
        examples: how many clean/adversarial pairs to keep for the report's image grid.
        progress: show rich progress bars (on ``console``, default stderr).
        console: where progress bars go.
        model_name: name of the model in the report.
        data_name: name of the data in the report.
        data_classes: how the data's class names map to labels (an image folder's folder name →
            label, see :func:`mlsec.io.loading.image_folder_classes`); recorded in the report's
            ``config`` when given.

    Returns:
        An :class:`AuditReport`.

    Example:
        >>> import mlsec
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> model = mlsec.zoo.load("mnist-cnn")
        >>> report = audit(model, (x[:50], y[:50]), attacks=["fgsm"], eps=[0.3])
        >>> report.robust_accuracy("fgsm", 0.3) < report.clean_accuracy
        True

    """
    x, y = data
    plan = _resolve_suite(suite, attacks, eps, norm, bounds)
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1 (got {batch_size})")
    check_against(thresholds, plan)
    device = _model.device_of(model)
    if x.shape[0] == 0:
        raise InputError("the data set is empty")
    check_batch(model, x.to(device), y.to(device), None, plan.bounds)
    n = x.shape[0]
    was_training = any(module.training for module in model.modules())
    store = None
    if checkpoint is not None:
        from mlsec.core.version import VERSION as __version__

        # Everything that decides the numbers; the suite's config holds each attack's seed.
        store = Checkpoint(
            Path(checkpoint),
            {
                "model": fingerprint_model(model),
                "code": fingerprint_code(model),
                "data": fingerprint_tensors(x, y),
                "suite": plan.to_config(),
                "batch_size": batch_size,
                "survivors": survivors,
                "mlsec": __version__,
                "torch": torch.__version__,
            },
            samples=n,
        )
        if store.records and progress:
            (console or Console(stderr=True)).print(
                f"resuming from {printable(store.directory)}: {len(store.records)} finished "
                "batches recorded",
                highlight=False,
                markup=False,
            )

    with _progress(progress, console) as bar:
        task = bar.add_task("clean", total=n)
        outputs = []
        dtype = _model.compute_dtype(model, x)
        with _model.frozen(model), torch.no_grad():
            for start in range(0, n, batch_size):
                out = run_model(model, x[start : start + batch_size].to(device, dtype), model_name)
                if not isinstance(out, torch.Tensor) or out.dim() != 2:
                    raise InputError("the model must return logits [batch, classes]")
                outputs.append(out.float().cpu())
                bar.advance(task, len(out))
        logits = torch.cat(outputs)
        if not bool(torch.isfinite(logits).all()):
            raise InputError("the model returned NaN or infinite logits on the clean data")
        classes = logits.shape[1]
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            raise InputError(
                f"labels lie in [{low}, {high}] but the model has {classes} outputs; "
                f"labels must lie in [0, {classes - 1}]"
            )
        correct = logits.argmax(dim=1) == y.cpu()

        outcomes: list[AttackOutcome] = []
        robust: dict[tuple[str, float], torch.Tensor] = {}
        worst_case: dict[float, float] = {}
        alive = correct.clone()  # standing after every attack at every eps so far
        stage = 0
        for value in plan.eps:
            for entry in plan.at(value):
                attack = dataclasses.replace(entry.attack, eps=value)
                pool = alive if survivors else torch.ones_like(alive)
                todo = pool.nonzero().flatten()
                task = bar.add_task(f"{entry.label} eps={value:g}", total=len(todo))
                seconds, broken_total = 0.0, 0
                for number, chunk in enumerate(todo.split(batch_size)):
                    indices = chunk.tolist()
                    record = store.get(stage, number, indices) if store is not None else None
                    if record is None:
                        began = time.perf_counter()
                        result = attack.run(model, x[chunk].to(device), y[chunk].to(device))
                        broken = chunk[result.success.cpu()].tolist()
                        record = BatchRecord(
                            stage=stage,
                            batch=number,
                            indices=indices,
                            broken=broken,
                            seconds=time.perf_counter() - began,
                        )
                        if store is not None:
                            store.append(record)
                    newly = torch.tensor(record.broken, dtype=torch.long)
                    broken_total += int(alive[newly].sum()) if len(newly) else 0
                    alive[newly] = False
                    seconds += record.seconds
                    bar.advance(task, len(indices))
                robust[(entry.label, value)] = alive.clone()
                outcomes.append(
                    AttackOutcome(
                        attack=entry.label,
                        eps=value,
                        robust_accuracy=int(alive.sum()) / n,
                        attacked=len(todo),
                        broken=broken_total,
                        seconds=seconds,
                        params={k: v for k, v in attack.params().items() if k != "eps"},
                    )
                )
                stage += 1
            worst_case[value] = int(alive.sum()) / n

        warnings: list[str] = []
        if sanity_checks:
            task = bar.add_task("sanity checks", total=None)
            warnings += checks.model_checks(model, x, y, logits, was_training=was_training)
            warnings += checks.attack_checks(model, x, y, correct, plan)
            bar.update(task, total=1, completed=1)

    accuracy = {key: int(mask.sum()) / n for key, mask in robust.items()}
    accuracy.update({("worst", value): acc for value, acc in worst_case.items()})
    return AuditReport(
        model=model_name,
        data=data_name,
        norm=plan.norm,
        bounds=plan.bounds,
        n=n,
        clean_accuracy=int(correct.sum()) / n,
        outcomes=outcomes,
        worst_case=worst_case,
        warnings=warnings,
        thresholds=evaluate(thresholds, int(correct.sum()) / n, accuracy),
        examples=_examples(model, x, y, plan, correct, robust, examples),
        config={
            "suite": plan.to_config(),
            "batch_size": batch_size,
            "survivors": survivors,
            "sanity_checks": sanity_checks,
            "thresholds": [t.spec for t in thresholds],
            **({} if data_classes is None else {"data_classes": dict(data_classes)}),
        },
        environment=_environment(device),
        correct=correct,
        robust=robust,
    )


def _examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: Suite,
    correct: torch.Tensor,
    robust: dict[tuple[str, float], torch.Tensor],
    limit: int,
) -> list[Example]:
    """A few samples each stage broke, attacked again alone to show an example it finds.

    With a random start the rerun can miss a sample the batch run broke; such a sample is
    skipped, so every example shown is a real adversarial example.
    """
    per_stage = max(1, limit // max(1, len(robust)))
    device = _model.device_of(model)
    found: list[Example] = []
    before = correct
    for value in plan.eps:
        for entry in plan.at(value):
            after = robust[(entry.label, value)]
            candidates = (before & ~after).nonzero().flatten()[: 3 * per_stage].tolist()
            before = after
            attack = dataclasses.replace(entry.attack, eps=value)
            kept = 0
            for index in candidates:
                if kept == per_stage or len(found) == limit:
                    break
                xi, yi = x[index : index + 1].to(device), y[index : index + 1].to(device)
                result = attack.run(model, xi, yi)
                if not bool(result.success[0]):
                    continue
                kept += 1
                found.append(
                    Example(
                        index=index,
                        label=int(yi[0]),
                        attack=entry.label,
                        eps=value,
                        clean_prediction=int(yi[0]),  # only correctly classified samples break
                        adversarial_prediction=int(result.logits.argmax(1)[0]),
                        clean=xi[0].detach().float().cpu(),
                        adversarial=result.x_adv[0].detach().float().cpu(),
                    )
                )
    return found
