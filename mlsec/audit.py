"""The audit runner: how a model's accuracy degrades under each attack and budget.

For every attack the eps grid is walked in ascending order and only the samples that are still
classified correctly are attacked again: an example found at a smaller eps is admissible at every
larger one, so the numbers are those of attacking everything, for less time. The per-sample worst
case over attacks is the mean over samples of the minimum over attacks (never the minimum of the
per-attack means).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from mlsec import _model
from mlsec._checks import check_batch, run_model
from mlsec.attacks import FGSM, PGD, Attack, create
from mlsec.errors import InputError
from mlsec.threat import Norm

__all__ = ["DEFAULT_EPS", "AttackOutcome", "AuditReport", "audit", "default_attacks"]

SCHEMA_VERSION = 1
DEFAULT_EPS = (0.1, 0.2, 0.3)


def default_attacks() -> list[Attack]:
    """The default suite: FGSM and PGD-40 (step 2.5 eps / 40, random start), linf."""
    return [FGSM(eps=0.0), PGD(eps=0.0, steps=40)]


@dataclass(frozen=True, kw_only=True)
class AttackOutcome:
    """Robust accuracy of one attack at one eps."""

    attack: str
    eps: float
    robust_accuracy: float
    attacked: int
    seconds: float
    params: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class AuditReport:
    """The result of :func:`audit`.

    Attributes:
        n: number of samples evaluated.
        clean_accuracy: accuracy on the unperturbed samples.
        outcomes: one :class:`AttackOutcome` per attack and eps.
        worst_case: eps -> fraction of samples that survive every attack at that eps.
        warnings: signs that the evaluation may overstate robustness.
        correct: bool ``[n]``, correctly classified clean samples.
        robust: ``(attack, eps)`` -> bool ``[n]``, samples that survive that attack.

    """

    model: str
    data: str
    norm: str
    n: int
    clean_accuracy: float
    outcomes: list[AttackOutcome]
    worst_case: dict[float, float]
    warnings: list[str]
    environment: dict[str, str]
    correct: torch.Tensor = field(repr=False)
    robust: dict[tuple[str, float], torch.Tensor] = field(repr=False)

    @property
    def attacks(self) -> list[str]:
        """Attack labels in the order they ran."""
        return list(dict.fromkeys(outcome.attack for outcome in self.outcomes))

    @property
    def eps(self) -> list[float]:
        """The eps grid, ascending."""
        return sorted(self.worst_case)

    def robust_accuracy(self, attack: str, eps: float) -> float:
        """Robust accuracy of ``attack`` at ``eps``."""
        for outcome in self.outcomes:
            if outcome.attack == attack and math.isclose(outcome.eps, eps):
                return outcome.robust_accuracy
        raise KeyError(f"no result for attack {attack!r} at eps {eps}")

    def seconds(self, attack: str) -> float:
        """Total time spent on ``attack`` over the eps grid."""
        return sum(outcome.seconds for outcome in self.outcomes if outcome.attack == attack)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-sample masks, as plain JSON types."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "data": self.data,
            "norm": self.norm,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "results": [dataclasses.asdict(outcome) for outcome in self.outcomes],
            "worst_case": [
                {"eps": eps, "robust_accuracy": acc} for eps, acc in self.worst_case.items()
            ],
            "attack_seconds": {name: self.seconds(name) for name in self.attacks},
            "warnings": list(self.warnings),
            "environment": dict(self.environment),
        }

    def to_json(self) -> str:
        """The report as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=2)


def _labels(attacks: Sequence[Attack]) -> list[str]:
    names = [attack.name for attack in attacks]
    return [
        name if names.count(name) == 1 else f"{name}-{names[: i + 1].count(name)}"
        for i, name in enumerate(names)
    ]


def _environment(device: torch.device) -> dict[str, str]:
    from mlsec import __version__

    return {
        "mlsec": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
    with progress:
        yield progress


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _probability_warning(logits: torch.Tensor) -> str | None:
    """A warning if the outputs look like probabilities (non-negative rows summing to 1)."""
    if logits.numel() == 0:
        return None
    sums = logits.double().sum(dim=1)
    if bool((logits >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
        return (
            "the model's outputs look like probabilities (rows sum to 1): softmax outputs weaken "
            "gradients and can overstate robustness; audit the logits instead"
        )
    return None


def audit(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    attacks: Sequence[Attack | str] | None = None,
    eps: Sequence[float] = DEFAULT_EPS,
    norm: Norm | None = None,
    batch_size: int = 500,
    progress: bool = False,
    model_name: str = "model",
    data_name: str = "data",
) -> AuditReport:
    """Measure clean accuracy and robust accuracy under each attack at each eps.

    Args:
        model: the classifier, returning logits; left in the mode it was given in.
        data: ``(x, y)``: inputs within the attacks' bounds and integer labels.
        attacks: attacks (their own eps is replaced by each grid value) or registered names;
            default FGSM and PGD-40.
        eps: the budgets, in input units.
        norm: if given, overrides each attack's norm.
        batch_size: samples per attack call.
        progress: show a rich progress bar on stderr.
        model_name: name of the model in the report.
        data_name: name of the data in the report.

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
    grid = sorted(float(e) for e in eps)
    if not grid:
        raise InputError("give at least one eps value")
    if len(set(grid)) != len(grid):
        raise InputError(f"eps values must be distinct (got {list(eps)})")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1 (got {batch_size})")
    chosen = [
        create(a, eps=grid[0]) if isinstance(a, str) else a
        for a in (default_attacks() if attacks is None else attacks)
    ]
    if not chosen:
        raise InputError("give at least one attack")
    if norm is not None:
        chosen = [dataclasses.replace(a, norm=norm) for a in chosen]
    for attack in chosen:
        for value in grid:
            dataclasses.replace(attack, eps=value)  # validates every (attack, eps) up front
    labels = _labels(chosen)
    bounds = chosen[0].bounds
    device = _model_device(model)
    if isinstance(y, torch.Tensor) and x.shape[0] == 0:
        raise InputError("the data set is empty")
    check_batch(model, x.to(device), y.to(device), None, bounds)
    n = x.shape[0]
    batches = [(slice(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]

    warnings: list[str] = []
    with _progress(progress, total=n) as bar:
        clean_task = bar.add_task("clean", total=n)
        outputs = []
        with _model.frozen(model), torch.no_grad():
            for rows in batches:
                out = run_model(model, x[rows].to(device).to(_model.compute_dtype(model, x)))
                if not isinstance(out, torch.Tensor) or out.dim() != 2:
                    raise InputError("the model must return logits [batch, classes]")
                outputs.append(out.float().cpu())
                bar.advance(clean_task, rows.stop - rows.start)
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
        if (warning := _probability_warning(logits)) is not None:
            warnings.append(warning)
        correct = logits.argmax(dim=1) == y.cpu()

        outcomes: list[AttackOutcome] = []
        robust: dict[tuple[str, float], torch.Tensor] = {}
        for label, attack in zip(labels, chosen, strict=True):
            alive = correct.clone()
            for value in grid:
                configured = dataclasses.replace(attack, eps=value)
                todo = alive.nonzero().flatten()
                task = bar.add_task(f"{label} eps={value:g}", total=len(todo))
                start = time.perf_counter()
                for chunk in todo.split(batch_size):
                    result = configured.run(model, x[chunk].to(device), y[chunk].to(device))
                    alive[chunk] = ~result.success.cpu()
                    bar.advance(task, len(chunk))
                seconds = time.perf_counter() - start
                robust[(label, value)] = alive.clone()
                outcomes.append(
                    AttackOutcome(
                        attack=label,
                        eps=value,
                        robust_accuracy=int(alive.sum()) / n,
                        attacked=len(todo),
                        seconds=seconds,
                        params={k: v for k, v in configured.params().items() if k != "eps"},
                    )
                )

    worst_case = {}
    for value in grid:
        survives = torch.stack([robust[(label, value)] for label in labels]).all(dim=0)
        worst_case[value] = int(survives.sum()) / n
    return AuditReport(
        model=model_name,
        data=data_name,
        norm=chosen[0].norm if len({a.norm for a in chosen}) == 1 else "mixed",
        n=n,
        clean_accuracy=int(correct.sum()) / n,
        outcomes=outcomes,
        worst_case=worst_case,
        warnings=warnings,
        environment=_environment(device),
        correct=correct,
        robust=robust,
    )
