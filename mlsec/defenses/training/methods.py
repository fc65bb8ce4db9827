"""The training methods: standard training, PGD-AT, Fast-AT and TRADES, registered by name.

Every method is a frozen dataclass of its hyperparameters; :meth:`AdversarialTraining.fit` trains
any of them with the one loop (:mod:`mlsec.defenses.training.loop`), whose inner maximisation is an
:class:`mlsec.attacks.PGD`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from mlsec.attacks.base import examples_for_checked_data
from mlsec.attacks.pgd import PGD
from mlsec.core import model as model_helpers
from mlsec.core.data import as_tensors
from mlsec.core.registry import Registry
from mlsec.core.threat import Norm, ThreatModel
from mlsec.core.validation import check_batch, check_count, check_labels, check_number
from mlsec.defenses.base import Defense
from mlsec.defenses.training.config import TrainConfig, TrainingResult
from mlsec.defenses.training.loop import Trainer
from mlsec.errors import InputError

__all__ = [
    "METHODS",
    "TRADES",
    "AdversarialTraining",
    "FastAdversarialTraining",
    "PGDAdversarialTraining",
    "StandardTraining",
]


# The training methods by name: ``mlsec train --method NAME``.
METHODS = Registry[type["AdversarialTraining"]]("training method")


@dataclass(frozen=True, kw_only=True)
class AdversarialTraining(Defense):
    """Base class of the training methods: the threat model they train (and evaluate) against.

    Args:
        eps: the perturbation budget trained against, in input units.
        norm: ``"linf"`` or ``"l2"``.
        bounds: ``(low, high)`` that every input value lies in.

    """

    name: ClassVar[str] = ""

    eps: float
    norm: Norm = "linf"
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        ThreatModel(norm=self.norm, eps=self.eps, bounds=self.bounds)

    @abc.abstractmethod
    def training_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        seed: int,
        index: torch.Tensor | None = None,
        attacked: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss to minimise and the logits whose accuracy the log reports.

        Args:
            model: the classifier that trains, in train mode (in a run over several ranks, its
                DistributedDataParallel wrapper: every forward through it takes part in the
                gradient average).
            x: the batch.
            y: its labels.
            eps: the training budget at this step.
            seed: the inner attack's seed at this step.
            index: the samples' positions in the training set, which key the attack's random
                draws (default ``0 .. B-1``).
            attacked: the model the inner attack crafts against (the module the wrapper holds);
                default ``model``. Attacks put it in eval mode for their own duration.

        """

    def _pgd(self, eps: float, steps: int, step_size: float | None, seed: int, **kw: Any) -> PGD:
        return PGD(
            eps=eps,
            norm=self.norm,
            bounds=self.bounds,
            steps=steps,
            step_size=step_size,
            random_start=True,
            last_iterate=True,
            seed=seed,
            **kw,
        )

    def wrap(self, model: nn.Module) -> nn.Module:
        """The defended model is the trained model itself, in eval mode."""
        return model.eval()

    def fit(  # type: ignore[override]  # the base takes any options; this names its own
        self,
        data: Any,
        *,
        model: nn.Module,
        config: TrainConfig | None = None,
        held_out: Any = None,
        folder: Path | str | None = None,
        resume: bool = False,
        progress: bool = False,
        console: Console | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> TrainingResult:
        """Train ``model`` in place on ``data``.

        Inside an initialised process group (``torchrun``, or
        ``torch.distributed.init_process_group``) every rank calls ``fit`` with the same
        arguments: the model trains in DistributedDataParallel, each rank crafting the examples of
        its share of every global batch of ``config.batch_size``, and ends with the weights one
        process would reach (:mod:`~mlsec.defenses.training.ranks`). Rank 0 alone writes the
        folder and shows progress; ranks given different settings, data or models are refused.

        Args:
            data: training data: an ``(x, y)`` pair, a Dataset or a DataLoader.
            model: the classifier to train (its parameters on the device it should train on).
            config: epochs, optimiser, schedule, seed; :class:`TrainConfig` defaults if omitted.
            held_out: data for the per-epoch clean and PGD accuracy (the first
                ``config.eval_size`` samples). Without it nothing is evaluated, the best epoch is
                unknown and catastrophic overfitting goes undetected.
            folder: where ``log.jsonl``, the per-epoch ``checkpoint.safetensors`` and the best
                epoch's ``best.safetensors`` go. A folder that already holds a checkpoint is
                refused unless ``resume``.
            resume: continue from the folder's checkpoint, which must come from the same method,
                config, model and data (a SHA-256 of ``data`` and ``held_out`` is compared); the
                result equals an uninterrupted run's.
            progress: show a progress bar and one line per epoch on ``console``.
            console: where progress goes (stderr by default).
            on_epoch: called with each epoch's record after its checkpoint is written.

        Returns:
            A :class:`TrainingResult`; ``model`` ends in eval mode with the kept weights.

        """
        config = config or TrainConfig()
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module (got {type(model).__name__})")
        x, y = self._data(model, data, "training data")
        if len(torch.unique(y)) < 2:
            raise InputError(
                f"training data has a single class ({int(y[0])}); a classifier needs at least two"
            )
        held = None
        if held_out is not None:
            hx, hy = self._data(model, held_out, "held-out data")
            held = (hx[: config.eval_size], hy[: config.eval_size])
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise InputError(
                "the model has no trainable parameters (all have requires_grad=False); "
                "give a model whose weights can be trained"
            )
        path = None if folder is None else Path(folder)
        trainer = Trainer(self, model, config, params, x, y, held, path)
        trainer.agree()
        if path is not None:
            trainer.prepare_folder(resume)
        elif resume:
            raise InputError("resume needs the folder of the interrupted run", subject="resume")
        return trainer.train(show=progress, console=console, on_epoch=on_epoch)

    def _data(self, model: nn.Module, data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``data`` as tensors on the model's device, checked once for the whole set."""
        device = model_helpers.device_of(model)
        x, y = (t.to(device) for t in as_tensors(data, what))
        try:
            # Once for the whole set: the same checks the inner attack skips on every batch.
            with model_helpers.frozen(model):
                check_batch(model, x, y, None, self.bounds)
                check_labels(model, x, y, None)
        except InputError as error:
            raise InputError(f"{what}: {error}") from None
        return x, y


@METHODS.register("standard")
@dataclass(frozen=True, kw_only=True)
class StandardTraining(AdversarialTraining):
    """Plain training on clean inputs: the baseline; ``eps`` only sets the held-out evaluation."""

    name: ClassVar[str] = "standard"

    def training_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        seed: int,
        index: torch.Tensor | None = None,
        attacked: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on the clean batch."""
        logits = model(x)
        return F.cross_entropy(logits, y), logits


def _target(model: nn.Module, attacked: nn.Module | None) -> nn.Module:
    """The model an inner attack crafts against: ``attacked``, else the trained model itself."""
    return model if attacked is None else attacked


def _check_steps(steps: object, step_size: object) -> None:
    check_count("steps", steps)
    if step_size is not None:
        check_number("step_size", step_size)


@METHODS.register("pgd")
@dataclass(frozen=True, kw_only=True)
class PGDAdversarialTraining(AdversarialTraining):
    """PGD adversarial training (Madry et al. 2018): train on PGD's last, highest-loss iterate.

    Args:
        steps: PGD steps of the inner maximisation.
        step_size: PGD step; default ``2.5 * eps / steps``.

    Example:
        >>> import mlsec
        >>> from mlsec.defenses import PGDAdversarialTraining, TrainConfig
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> model = mlsec.zoo.architectures.mnist_cnn()
        >>> result = PGDAdversarialTraining(eps=0.3, steps=2).fit(
        ...     (x[:64], y[:64]), model=model, config=TrainConfig(epochs=1, batch_size=32))
        >>> len(result.history)
        1

    """

    name: ClassVar[str] = "pgd"

    steps: int = 10
    step_size: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_steps(self.steps, self.step_size)

    def training_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        seed: int,
        index: torch.Tensor | None = None,
        attacked: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on PGD's last iterate."""
        step_size = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        attack = self._pgd(eps, self.steps, step_size, seed)
        x_adv = examples_for_checked_data(attack, _target(model, attacked), x, y, index)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


@METHODS.register("fast")
@dataclass(frozen=True, kw_only=True)
class FastAdversarialTraining(AdversarialTraining):
    """Fast adversarial training (Wong et al. 2020): one FGSM step from a random start.

    After each epoch the held-out PGD accuracy is checked for catastrophic overfitting
    (:func:`~mlsec.defenses.training.detect_collapse`); on a collapse :meth:`fit` warns, restores
    the best epoch's weights and stops.

    Args:
        alpha: the FGSM step; default ``1.25 * eps`` (the paper's).
        collapse_drop: the drop in held-out robust accuracy (absolute) that counts as a collapse.

    """

    name: ClassVar[str] = "fast"

    alpha: float | None = None
    collapse_drop: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha is not None:
            check_number("alpha", self.alpha)
        drop = self.collapse_drop
        if not (isinstance(drop, int | float) and not isinstance(drop, bool) and 0 < drop < 1):
            raise InputError(f"collapse_drop must lie in (0, 1) (got {self.collapse_drop!r})")

    def training_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        seed: int,
        index: torch.Tensor | None = None,
        attacked: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on the FGSM step from a random start."""
        alpha = self.alpha if self.alpha is not None else 1.25 * eps
        attack = self._pgd(eps, 1, alpha, seed)
        x_adv = examples_for_checked_data(attack, _target(model, attacked), x, y, index)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


@METHODS.register("trades")
@dataclass(frozen=True, kw_only=True)
class TRADES(AdversarialTraining):
    """TRADES (Zhang et al. 2019): clean loss plus ``beta`` times a KL divergence.

    The divergence is between the predictions at ``x`` and at the PGD point that maximises it.

    Args:
        beta: weight of the robustness term; larger trades clean accuracy for robustness (6,
            the default, is the value of the paper's CIFAR-10 runs).
        steps: PGD steps of the inner KL maximisation.
        step_size: PGD step; default ``2.5 * eps / steps``.

    """

    name: ClassVar[str] = "trades"

    beta: float = 6.0
    steps: int = 10
    step_size: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("beta", self.beta, zero=True)
        _check_steps(self.steps, self.step_size)

    def training_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        seed: int,
        index: torch.Tensor | None = None,
        attacked: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean cross-entropy plus ``beta`` times KL(p(x) || p(x_adv)), batch mean."""
        step_size = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        attack = self._pgd(eps, self.steps, step_size, seed, loss="kl")
        x_adv = examples_for_checked_data(attack, _target(model, attacked), x, y, index)
        logits = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(
            F.log_softmax(logits_adv, dim=1),
            F.log_softmax(logits, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return F.cross_entropy(logits, y) + self.beta * robust, logits_adv
