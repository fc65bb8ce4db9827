"""What every training method shares: the config, the schedule, the result, collapse detection."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mlsec.core.validation import check_count, check_number, check_seed
from mlsec.errors import InputError

__all__ = [
    "CatastrophicOverfittingWarning",
    "TrainConfig",
    "TrainingResult",
    "detect_collapse",
    "parse_schedule",
]


class CatastrophicOverfittingWarning(UserWarning):
    """Held-out robust accuracy collapsed while clean accuracy held (Wong et al. 2020)."""


def parse_schedule(text: str, epochs: int) -> Callable[[float], float]:
    """The learning-rate multiplier as a function of training progress in ``[0, 1]``.

    Schedules: ``constant``; ``cosine`` (to zero); ``linear`` (to zero); ``cyclic`` (linear up to
    the peak at 40% of training, then down to zero, as Fast-AT uses); ``step:E1,E2,...`` (times 0.1
    after each listed epoch, e.g. ``step:100,150``).

    Example:
        >>> f = parse_schedule("step:5,8", epochs=10)
        >>> f(0.0), round(f(0.6), 6), round(f(0.9), 6)
        (1.0, 0.1, 0.01)

    """
    usage = "use constant, cosine, linear, cyclic or step:E1,E2,... (epochs after which lr x 0.1)"
    name = text.strip().lower()
    if name == "constant":
        return lambda _: 1.0
    if name == "cosine":
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * t))
    if name == "linear":
        return lambda t: 1.0 - t
    if name == "cyclic":
        return lambda t: t / 0.4 if t < 0.4 else (1.0 - t) / 0.6
    if name.startswith("step:"):
        try:
            milestones = sorted(int(part) for part in name[5:].split(","))
        except ValueError:
            raise InputError(f"schedule {text!r} does not parse; {usage}") from None
        if not milestones or milestones[0] < 1 or milestones[-1] >= epochs:
            raise InputError(
                f"schedule {text!r}: step epochs must lie in [1, {epochs - 1}] for {epochs} epochs"
            )
        return lambda t: 0.1 ** sum(t * epochs >= m - 1e-9 for m in milestones)
    raise InputError(f"schedule {text!r} does not parse; {usage}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What every training method shares.

    Args:
        epochs: passes over the training data.
        batch_size: samples per optimiser step.
        optimizer: ``"sgd"`` (with ``momentum``, Nesterov off) or ``"adam"``.
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty of the optimiser.
        schedule: learning-rate schedule over all steps (:func:`parse_schedule`).
        eps_ramp: epochs over which the training eps grows linearly from 0 to ``eps``.
        seed: seeds the data order, the inner attacks and the global RNG (dropout).
        eval_steps: PGD steps of the held-out robust accuracy each epoch.
        eval_size: held-out samples evaluated each epoch (the first ones).
        keep: ``"last"`` weights at the end, or the ``"best"`` held-out robust accuracy's.

    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    eps_ramp: int = 0
    seed: int = 0
    eval_steps: int = 10
    eval_size: int = 1000
    keep: Literal["last", "best"] = "last"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_steps", "eval_size"):
            check_count(name, getattr(self, name))
        check_count("eps_ramp", self.eps_ramp, low=0)
        check_seed(self.seed)
        if self.optimizer not in ("sgd", "adam"):
            raise InputError(f"optimizer must be 'sgd' or 'adam' (got {self.optimizer!r})")
        check_number("lr", self.lr)
        for name in ("momentum", "weight_decay"):
            check_number(name, getattr(self, name), zero=True)
        if self.keep not in ("last", "best"):
            raise InputError(f"keep must be 'last' or 'best' (got {self.keep!r})")
        parse_schedule(self.schedule, self.epochs)


@dataclass(frozen=True)
class TrainingResult:
    """What :meth:`AdversarialTraining.fit` returns; the model itself is trained in place.

    Attributes:
        history: one record per epoch: ``epoch``, ``loss``, ``train_accuracy`` (on the training
            method's inputs), ``clean_accuracy`` and ``robust_accuracy`` (held out; ``None``
            without held-out data), ``eps``, ``lr``, ``seconds`` (the epoch's wall time).
        best_epoch: the epoch with the highest held-out robust accuracy (``None`` without
            held-out data).
        collapsed_at: the epoch at which catastrophic overfitting was detected, else ``None``.
        kept: the epoch whose weights the model holds at the end.

    """

    history: list[dict[str, Any]]
    best_epoch: int | None
    collapsed_at: int | None
    kept: int


def detect_collapse(history: list[dict[str, Any]], *, drop: float) -> bool:
    """Whether the last epoch shows catastrophic overfitting.

    Held-out robust accuracy fell more than ``drop`` (absolute) below the best epoch's while clean
    accuracy stayed within ``drop`` of that epoch's: the model has learnt to beat the training
    attack, not perturbations (Wong et al. 2020 saw FGSM-trained models go from ~45% to 0% PGD
    accuracy within an epoch).

    Example:
        >>> h = [{"clean_accuracy": 0.97, "robust_accuracy": r} for r in (0.5, 0.7, 0.1)]
        >>> detect_collapse(h[:2], drop=0.2), detect_collapse(h, drop=0.2)
        (False, True)

    """
    scored = [r for r in history if r.get("robust_accuracy") is not None]
    if len(scored) < 2:
        return False
    best = max(scored[:-1], key=lambda r: r["robust_accuracy"])
    last = scored[-1]
    robust_fell = last["robust_accuracy"] < best["robust_accuracy"] - drop
    clean_held = last["clean_accuracy"] >= best["clean_accuracy"] - drop
    return bool(robust_fell and clean_held)
