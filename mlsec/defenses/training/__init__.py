"""Adversarial training: PGD-AT (Madry et al.), Fast-AT (Wong et al.) and TRADES (Zhang et al.).

Every method is a frozen dataclass of its hyperparameters behind the :class:`Defense` interface;
:class:`TrainConfig` holds what all of them share (epochs, optimiser, schedule, seed). One loop,
:meth:`AdversarialTraining.fit`, trains any of them: the inner maximisation is an
:class:`mlsec.attacks.PGD` (there is no second PGD), each epoch ends with clean and PGD accuracy on
held-out data, and with a folder it appends one JSON line per epoch to ``log.jsonl`` and writes a
checkpoint (weights, optimiser and RNG state, all safetensors, through a temporary file and a
rename) from which ``resume=True`` continues exactly. A checkpoint records the settings and a
SHA-256 of the data it was made with; resuming with anything else, or from a damaged file, is an
:class:`InputError` that says which.

References:
    A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu. Towards Deep Learning Models Resistant
    to Adversarial Attacks. ICLR 2018. arXiv:1706.06083.

    E. Wong, L. Rice, J. Z. Kolter. Fast is better than free: Revisiting adversarial training.
    ICLR 2020. arXiv:2001.03994.

    H. Zhang, Y. Yu, J. Jiao, E. P. Xing, L. El Ghaoui, M. I. Jordan. Theoretically Principled
    Trade-off between Robustness and Accuracy. ICML 2019. arXiv:1901.08573.

"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeGuard

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from mlsec.attacks.base import examples_for_checked_data
from mlsec.attacks.pgd import PGD
from mlsec.core import model as _model
from mlsec.core.data import as_tensors
from mlsec.core.files import write_atomic
from mlsec.core.fingerprint import fingerprint_tensors
from mlsec.core.threat import Norm, ThreatModel
from mlsec.core.validation import MAX_SEED, check_batch, check_labels, check_seed
from mlsec.defenses.base import Defense
from mlsec.errors import InputError

__all__ = [
    "TRADES",
    "AdversarialTraining",
    "CatastrophicOverfittingWarning",
    "FastAdversarialTraining",
    "PGDAdversarialTraining",
    "StandardTraining",
    "TrainConfig",
    "TrainingResult",
    "detect_collapse",
    "parse_schedule",
    "save_weights",
]

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
LOG = "log.jsonl"
RUN_FILES = (CHECKPOINT, LOG, BEST)

# A run checkpoint's safetensors metadata key (a JSON object) and the formats, by the command that
# writes each: a checkpoint handed to the other command is refused by name.
META_KEY = "mlsec"
TRAIN_FORMAT = "mlsec-train-checkpoint/2"
GAN_FORMAT = "mlsec-gan-checkpoint/1"
_WRITERS = {TRAIN_FORMAT: "mlsec train", GAN_FORMAT: "mlsec defend train"}
_RETIRED = {"mlsec-train-checkpoint/1"}  # older mlsec train, which recorded no data fingerprint


class CatastrophicOverfittingWarning(UserWarning):
    """Held-out robust accuracy collapsed while clean accuracy held (Wong et al. 2020)."""


# --- configuration -------------------------------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InputError(f"{name} must be an integer >= 1 (got {value!r})")
        if not _is_int(self.eps_ramp) or self.eps_ramp < 0:
            raise InputError(f"eps_ramp must be an integer >= 0 (got {self.eps_ramp!r})")
        check_seed(self.seed)
        if self.optimizer not in ("sgd", "adam"):
            raise InputError(f"optimizer must be 'sgd' or 'adam' (got {self.optimizer!r})")
        if not _is_number(self.lr) or self.lr <= 0:
            raise InputError(f"lr must be a number > 0 (got {self.lr!r})")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise InputError(f"{name} must be a number >= 0 (got {value!r})")
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


# --- the methods ---------------------------------------------------------------------------------


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
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss to minimise and the logits whose accuracy the log reports.

        ``model`` is in train mode; attacks put it in eval mode for their own duration.
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
            progress: show a rich progress bar and one line per epoch on ``console``.
            console: where progress goes (stderr by default).
            on_epoch: called with each epoch's record after its checkpoint is written.

        Returns:
            A :class:`TrainingResult`; ``model`` ends in eval mode with the kept weights.

        """
        config = config or TrainConfig()
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module (got {type(model).__name__})")
        device = _model.device_of(model)
        x, y = (t.to(device) for t in as_tensors(data, "training data"))
        self._check_data(model, x, y, "training data")
        if len(torch.unique(y)) < 2:
            raise InputError(
                f"training data has a single class ({int(y[0])}); a classifier needs at least two"
            )
        held = None
        if held_out is not None:
            hx, hy = (t.to(device) for t in as_tensors(held_out, "held-out data"))
            self._check_data(model, hx, hy, "held-out data")
            held = (hx[: config.eval_size], hy[: config.eval_size])
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise InputError(
                "the model has no trainable parameters (all have requires_grad=False); "
                "give a model whose weights can be trained"
            )
        run = _Run(
            self, model, config, params, x, y, held, None if folder is None else Path(folder)
        )
        if folder is not None:
            run.prepare_folder(resume)
        elif resume:
            raise InputError("resume needs the folder of the interrupted run")
        return run.train(progress=progress, console=console, on_epoch=on_epoch)

    def _check_data(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, what: str) -> None:
        was_training = model.training
        model.eval()
        try:
            # Once for the whole set: the same checks the inner attack skips on every batch.
            check_batch(model, x, y, None, self.bounds)
            check_labels(model, x, y, None)
        except InputError as error:
            raise InputError(f"{what}: {error}") from None
        finally:
            model.train(was_training)


@dataclass(frozen=True, kw_only=True)
class StandardTraining(AdversarialTraining):
    """Plain training on clean inputs: the baseline; ``eps`` only sets the held-out evaluation."""

    name: ClassVar[str] = "standard"

    def training_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on the clean batch."""
        logits = model(x)
        return F.cross_entropy(logits, y), logits


def _check_steps(steps: object, step_size: object) -> None:
    if not _is_int(steps) or steps < 1:
        raise InputError(f"steps must be an integer >= 1 (got {steps!r})")
    if step_size is not None and (not _is_number(step_size) or step_size <= 0):
        raise InputError(f"step_size must be a number > 0 (got {step_size!r})")


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
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on PGD's last iterate."""
        step_size = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        x_adv = examples_for_checked_data(self._pgd(eps, self.steps, step_size, seed), model, x, y)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


@dataclass(frozen=True, kw_only=True)
class FastAdversarialTraining(AdversarialTraining):
    """Fast adversarial training (Wong et al. 2020): one FGSM step from a random start.

    After each epoch the held-out PGD accuracy is checked for catastrophic overfitting
    (:func:`detect_collapse`); on a collapse :meth:`fit` warns, restores the best epoch's weights
    and stops.

    Args:
        alpha: the FGSM step; default ``1.25 * eps`` (the paper's).
        collapse_drop: the drop in held-out robust accuracy (absolute) that counts as a collapse.

    """

    name: ClassVar[str] = "fast"

    alpha: float | None = None
    collapse_drop: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha is not None and (not _is_number(self.alpha) or self.alpha <= 0):
            raise InputError(f"alpha must be a number > 0 (got {self.alpha!r})")
        if not _is_number(self.collapse_drop) or not 0 < self.collapse_drop < 1:
            raise InputError(f"collapse_drop must lie in (0, 1) (got {self.collapse_drop!r})")

    def training_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on the FGSM step from a random start."""
        alpha = self.alpha if self.alpha is not None else 1.25 * eps
        x_adv = examples_for_checked_data(self._pgd(eps, 1, alpha, seed), model, x, y)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


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
        if not _is_number(self.beta) or self.beta < 0:
            raise InputError(f"beta must be a number >= 0 (got {self.beta!r})")
        _check_steps(self.steps, self.step_size)

    def training_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean cross-entropy plus ``beta`` times KL(p(x) || p(x_adv)), batch mean."""
        step_size = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        attack = self._pgd(eps, self.steps, step_size, seed, loss="kl")
        x_adv = examples_for_checked_data(attack, model, x, y)
        logits = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(
            F.log_softmax(logits_adv, dim=1),
            F.log_softmax(logits, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return F.cross_entropy(logits, y) + self.beta * robust, logits_adv


METHODS: dict[str, type[AdversarialTraining]] = {
    cls.name: cls
    for cls in (StandardTraining, PGDAdversarialTraining, FastAdversarialTraining, TRADES)
}


# --- the loop ------------------------------------------------------------------------------------


def check_folder(folder: Path, *, resume: bool, files: tuple[str, ...] = RUN_FILES) -> None:
    """Raise :class:`InputError` unless ``folder`` can hold a new run, or a run to resume.

    Args:
        folder: the run's folder.
        resume: whether the run continues from the folder's checkpoint.
        files: the names of the files the run writes there, none of which may be a folder.

    """
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder")
    for name in files:
        if (folder / name).is_dir():
            raise InputError(
                f"{folder / name} is a folder where the run keeps its {name} file; remove it or "
                "choose another folder"
            )
    checkpoint = folder / CHECKPOINT
    if resume and not checkpoint.exists():
        raise InputError(f"--resume: {folder} holds no {CHECKPOINT} to resume from")
    if not resume and checkpoint.exists():
        raise InputError(
            f"{folder} holds the checkpoint of an earlier run; resume it (--resume) or choose "
            "another folder"
        )


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``model``'s state dict to ``path`` as safetensors, atomically."""
    write_atomic(Path(path), save_safetensors(_state(model), metadata=metadata))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous tensors: copy what it would refuse.
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


# --- run files: what the checkpoints of mlsec train and mlsec defend train share -----------------


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def damaged(path: Path, what: str) -> InputError:
    """The error for a checkpoint that does not hold what mlsec wrote: ``what`` says where."""
    return InputError(f"--resume: {path} is damaged ({what}); start a new run in another folder")


def read_safetensors(
    path: Path, label: str, advice: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file; never unpickles.

    Args:
        path: the file.
        label: what the file is, for the message, e.g. ``"--resume: cannot read"``.
        advice: what to do instead, for the message.

    Raises:
        InputError: one line naming ``path`` for a folder, a missing, truncated or corrupt file.

    """
    try:
        blob = path.read_bytes()
        tensors = load_safetensors(blob)
    except (OSError, SafetensorError, ValueError, RuntimeError) as error:
        raise InputError(
            f"{label} {path} ({_one_line(error)}): it is truncated or not a safetensors file; "
            + advice
        ) from None
    # load() has checked the header: a JSON object whose "__metadata__" maps strings to strings.
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    return tensors, dict(header.get("__metadata__") or {})


def read_checkpoint(path: Path, expected: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the ``mlsec`` metadata of a run checkpoint in format ``expected``.

    Raises:
        InputError: one line naming ``path`` for an unreadable file, one without mlsec's metadata
            or with metadata that is not a JSON object, and a checkpoint of another command or an
            older format.

    """
    tensors, metadata = read_safetensors(
        path, "--resume: cannot read", "start a new run in another folder"
    )
    raw = metadata.get(META_KEY)
    if raw is None:
        raise InputError(
            f"--resume: {path} holds no mlsec metadata (another program or an older mlsec wrote "
            "it); start a new run in another folder"
        )
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise damaged(path, "its mlsec metadata is not a JSON object")
    found = meta.get("format")
    if found != expected:
        if isinstance(found, str) and found in _RETIRED:
            raise InputError(
                f"--resume: {path} was written by an older mlsec, which did not record the data it "
                "was made with; start a new run in another folder"
            )
        if not isinstance(found, str) or found not in _WRITERS:
            raise damaged(path, f"unknown checkpoint format {found!r}")
        raise InputError(
            f"--resume: {path} was written by {_WRITERS[found]}, not by {_WRITERS[expected]}; "
            "start a new run in another folder"
        )
    return tensors, meta


_ABSENT = object()


def _show(value: object) -> str:
    if value is _ABSENT:
        return "missing"
    return "none" if value is None else json.dumps(value)


def _setting_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    differences = []
    for key, value in current.items():
        old = saved.get(key, _ABSENT)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            differences += [f"{key}.{d}" for d in _setting_differences(old, value)]
        elif old != value:
            differences.append(f"{key}: {_show(old)} in the checkpoint, {_show(value)} now")
    return differences


def check_same_run(path: Path, saved: object, current: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` unless a checkpoint's settings equal the run's.

    Args:
        path: the checkpoint, for the message.
        saved: the settings the checkpoint recorded (JSON).
        current: the run's settings (JSON values); its ``"data"`` maps names of the data (e.g.
            ``"training data"``) to their hashes (:func:`mlsec.auditing.resume.fingerprint_tensors`),
            reported as ``NAME differs``.

    """
    if not isinstance(saved, Mapping):
        raise damaged(path, "its settings are not a JSON object")
    ours = {k: v for k, v in current.items() if k != "data"}
    settings = _setting_differences(saved, ours)
    saved_data = saved.get("data")
    saved_data = saved_data if isinstance(saved_data, Mapping) else {}
    data = [
        f"{name} differs"
        for name, h in current.get("data", {}).items()
        if saved_data.get(name) != h
    ]
    if settings or data:
        made = "other settings" if settings else "other data"
        raise InputError(
            f"--resume: the checkpoint in {path.parent} was made with {made} "
            f"({'; '.join(settings + data)}); resume with the same settings and data, or start a "
            "new run in another folder"
        )


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def state_problem(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], prefix: str = ""
) -> str | None:
    """Why ``got`` does not load into a state dict like ``expected``, or None if it fits.

    The first missing, unexpected, misshapen or mistyped tensor, named with ``prefix``.
    """
    for problem, keys in (
        ("missing tensor", [k for k in expected if k not in got]),
        ("unexpected tensor", sorted(k for k in got if k not in expected)),
    ):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            return f"{problem} {prefix}{keys[0]}{more}"
    for key, reference in expected.items():
        mismatch = _mismatch(f"{prefix}{key}", got[key], reference)
        if mismatch is not None:
            return mismatch
    return None


def _mismatch(where: str, value: torch.Tensor, like: torch.Tensor) -> str | None:
    """Why ``value`` cannot stand in for ``like`` (shape, then dtype), or None."""
    if value.shape != like.shape:
        return f"{where} has shape {list(value.shape)}, not {list(like.shape)}"
    if value.dtype != like.dtype:
        return f"{where} is {_dtype(value)}, not {_dtype(like)}"
    return None


def optimizer_problem(
    optimizer: torch.optim.Optimizer, state: Mapping[int, Mapping[str, Any]], prefix: str
) -> str | None:
    """Why ``state`` (per-parameter optimiser state by index) does not fit, or None if it does.

    What a parameter's state holds is learnt from a probe: the same optimiser, one step on a
    two-element parameter (a per-parameter buffer then has shape ``[2]``, a counter shape ``[]``).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    probe_param = torch.zeros(2, requires_grad=True)
    probe = type(optimizer)([probe_param], **optimizer.defaults)
    probe_param.grad = torch.ones(2)
    probe.step()
    reference = probe.state[probe_param]
    for index, entries in sorted(state.items()):
        if not 0 <= index < len(params):
            return f"optimiser state {prefix}.{index} for a parameter the model does not have"
        if set(entries) != set(reference):
            return (
                f"optimiser state {prefix}.{index} holds {', '.join(sorted(entries)) or 'nothing'}"
                f", not {', '.join(sorted(reference))}"
            )
        for name, value in entries.items():
            ref, where = reference[name], f"{prefix}.{index}.{name}"
            if not isinstance(ref, torch.Tensor):
                if type(value) is not type(ref):
                    return f"{where} is {type(value).__name__}, not {type(ref).__name__}"
                continue
            if not isinstance(value, torch.Tensor):
                return f"{where} is not a tensor"
            problem = _mismatch(where, value, params[index] if ref.dim() else ref)
            if problem is not None:
                return problem
    return None


def optimizer_state(
    tensors: Mapping[str, torch.Tensor], prefix: str
) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Per-parameter optimiser state from ``PREFIX.INDEX.NAME`` tensors, and the malformed names."""
    state: dict[int, dict[str, Any]] = {}
    malformed = []
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            parts = key.split(".", 2)
            if len(parts) != 3 or not parts[1].isdecimal() or not parts[2]:
                malformed.append(key)
                continue
            state.setdefault(int(parts[1]), {})[parts[2]] = value
    return state, malformed


def rng_problem(name: str, value: torch.Tensor | None, device: str = "cpu") -> str | None:
    """Why ``value`` is not a generator state for ``device``, or None if it is one."""
    if value is None:
        return f"missing tensor {name}"
    scratch = torch.Generator(device=device)
    if value.dtype != torch.uint8 or value.shape != scratch.get_state().shape:
        return f"{name} is {_dtype(value)} of shape {list(value.shape)}, not a generator state"
    try:
        scratch.set_state(value)
    except RuntimeError as error:
        return f"{name}: {_one_line(error)}"
    return None


def count_problem(name: str, value: torch.Tensor | None, *, integer: bool) -> str | None:
    """Why ``value`` is not one non-negative finite number (an integer if ``integer``), or None."""
    if value is None:
        return f"missing tensor {name}"
    kind = "an integer" if integer else "a floating-point number"
    is_integer = not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    right_type = is_integer if integer else value.is_floating_point()
    if value.numel() != 1 or not right_type:
        return f"{name} is {_dtype(value)} of shape {list(value.shape)}, not {kind}"
    number = value.item()
    if not math.isfinite(number) or number < 0:
        return f"{name} is {number}, not {kind} >= 0"
    return None


@dataclass
class _Run:
    method: AdversarialTraining
    model: nn.Module
    config: TrainConfig
    params: list[nn.Parameter]
    x: torch.Tensor
    y: torch.Tensor
    held: tuple[torch.Tensor, torch.Tensor] | None
    folder: Path | None
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    collapsed: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    optimizer: torch.optim.Optimizer = field(init=False)
    shuffle: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                self.params,
                lr=config.lr,
                momentum=config.momentum,
                weight_decay=config.weight_decay,
            )
        else:
            self.optimizer = torch.optim.Adam(
                self.params, lr=config.lr, weight_decay=config.weight_decay
            )
        self.shuffle = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.batches = -(-self.x.shape[0] // config.batch_size)
        self.lr_at = parse_schedule(config.schedule, config.epochs)

    # -- settings that a checkpoint must match

    def settings(self) -> dict[str, Any]:
        return {
            "method": self.method.name,
            "params": _jsonable(self.method.params()),
            "config": _jsonable(dataclasses.asdict(self.config)),
            "samples": int(self.x.shape[0]),
            "held_out": None if self.held is None else int(self.held[0].shape[0]),
            "data": self.fingerprints,
        }

    @cached_property
    def fingerprints(self) -> dict[str, str]:
        # Once per run: hashing the data costs about a second per 500 MB.
        data = {"training data": fingerprint_tensors(self.x, self.y)}
        if self.held is not None:
            data["held-out data"] = fingerprint_tensors(*self.held)
        return data

    def prepare_folder(self, resume: bool) -> None:
        assert isinstance(self.folder, Path)
        check_folder(self.folder, resume=resume)
        self.folder.mkdir(parents=True, exist_ok=True)
        checkpoint = self.folder / CHECKPOINT
        if not resume:
            (self.folder / LOG).unlink(missing_ok=True)
            return
        self.restore(checkpoint)
        # The log may have run ahead of the checkpoint when the run was killed: rewrite it.
        write_atomic(self.folder / LOG, "".join(json.dumps(r) + "\n" for r in self.history))

    # -- checkpoints

    def save(self) -> None:
        assert isinstance(self.folder, Path)
        tensors = {f"model.{k}": v for k, v in _state(self.model).items()}
        state = self.optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entries in state["state"].items():
            for name, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous().clone()
                else:
                    scalars.setdefault(str(index), {})[name] = value
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.shuffle"] = self.shuffle.get_state()
        if torch.cuda.is_available():
            for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = cuda_state
        meta = {
            "format": TRAIN_FORMAT,
            "settings": self.settings(),
            "epoch": self.epoch,
            "step": self.step,
            "best_epoch": self.best_epoch,
            "collapsed": self.collapsed,
            "history": self.history,
            "optimizer_scalars": scalars,
        }
        blob = save_safetensors(
            {k: v.cpu() for k, v in tensors.items()}, metadata={META_KEY: json.dumps(meta)}
        )
        write_atomic(self.folder / CHECKPOINT, blob)

    def restore(self, path: Path) -> None:
        # Everything is checked before anything is set: a refused resume changes nothing.
        tensors, meta = read_checkpoint(path, TRAIN_FORMAT)
        check_same_run(path, meta.get("settings"), self.settings())
        progress = self._progress(path, meta)
        cuda = [k for k in sorted(tensors) if k.startswith("rng.cuda.") and k[9:].isdecimal()]
        own = {"rng.torch", "rng.shuffle", *cuda}
        stray = sorted(
            k for k in tensors if k not in own and not k.startswith(("model.", "optimizer."))
        )
        if stray:
            raise damaged(path, f"unexpected tensor {stray[0]}")
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        problem = state_problem(self.model.state_dict(), weights, "model.")
        if problem is not None:
            raise InputError(
                f"--resume: {path} does not fit this model ({problem}); resume with the model the "
                "run started with, or start a new run in another folder"
            )
        state, malformed = optimizer_state(tensors, "optimizer")
        scalars = meta.get("optimizer_scalars", {})
        if malformed:
            raise damaged(path, f"unexpected tensor {malformed[0]}")
        if not isinstance(scalars, dict) or not all(
            k.isdecimal() and isinstance(v, dict) for k, v in scalars.items()
        ):
            raise damaged(path, "optimizer_scalars is not an object of objects")
        for index, entries in scalars.items():
            state.setdefault(int(index), {}).update(entries)
        restore_cuda = bool(cuda) and torch.cuda.is_available()
        restore_cuda = restore_cuda and len(cuda) == torch.cuda.device_count()
        problems = [
            optimizer_problem(self.optimizer, state, "optimizer"),
            rng_problem("rng.torch", tensors.get("rng.torch")),
            rng_problem("rng.shuffle", tensors.get("rng.shuffle")),
            *[rng_problem(k, tensors[k], "cuda") for k in cuda if restore_cuda],
        ]
        problem = next((p for p in problems if p is not None), None)
        if problem is not None:
            raise damaged(path, problem)
        self.model.load_state_dict(weights)
        # The param groups stay as built: the settings match, and the schedule sets lr each step.
        self.optimizer.load_state_dict(
            {"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]}
        )
        torch.set_rng_state(tensors["rng.torch"])
        self.shuffle.set_state(tensors["rng.shuffle"])
        if restore_cuda:
            torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
        self.epoch, self.step, self.best_epoch, self.collapsed, self.history = progress

    def _progress(
        self, path: Path, meta: dict[str, Any]
    ) -> tuple[int, int, int | None, int | None, list[dict[str, Any]]]:
        """The checkpoint's epoch, step, best epoch, collapse epoch and history, checked."""
        epoch, step, best, collapsed, history = (
            meta.get(k) for k in ("epoch", "step", "best_epoch", "collapsed", "history")
        )
        if not _is_int(epoch) or not 0 <= epoch <= self.config.epochs:
            raise damaged(path, f"epoch {epoch!r} is not an integer in [0, {self.config.epochs}]")
        if not _is_int(step) or step != epoch * self.batches:
            raise damaged(path, f"step {step!r}, not {epoch * self.batches} after epoch {epoch}")
        if not isinstance(history, list) or len(history) != epoch:
            raise damaged(path, f"the history is not a list of {epoch} epoch records")
        for number, record in enumerate(history, 1):
            problem = self._record_problem(record, number)
            if problem is not None:
                raise damaged(path, f"history record {number}: {problem}")
        for name, value in (("best_epoch", best), ("collapsed", collapsed)):
            if value is not None and (not _is_int(value) or not 1 <= value <= epoch):
                raise damaged(path, f"{name} {value!r} is not an epoch in [1, {epoch}]")
        if (best is None) != (self.held is None or epoch == 0) or (
            collapsed is not None and best is None
        ):
            raise damaged(path, f"best_epoch {best!r} does not fit its history")
        return epoch, step, best, collapsed, history

    def _record_problem(self, record: object, number: int) -> str | None:
        if not isinstance(record, dict):
            return "not an object"
        if record.get("epoch") != number:
            return f"epoch {record.get('epoch')!r}, not {number}"
        # The loss alone may be NaN or infinite: a diverged run's checkpoint is still its own.
        loss = record.get("loss")
        if not isinstance(loss, int | float) or isinstance(loss, bool):
            return f"loss {loss!r} is not a number"
        for key in ("train_accuracy", "eps", "lr", "seconds"):
            if not _is_number(record.get(key)):
                return f"{key} {record.get(key)!r} is not a number"
        for key in ("clean_accuracy", "robust_accuracy"):
            value = record.get(key)
            if self.held is None and value is not None:
                return f"{key} {value!r} without held-out data"
            if self.held is not None and not (_is_number(value) and 0 <= value <= 1):
                return f"{key} {value!r} is not a fraction"
        return None

    # -- training

    def eps_at(self, step: int) -> float:
        ramp = self.config.eps_ramp * self.batches
        if ramp == 0:
            return float(self.method.eps)
        return float(self.method.eps) * min(1.0, (step + 1) / ramp)

    def train_epoch(self, advance: Callable[[], None]) -> dict[str, Any]:
        config, method = self.config, self.method
        total_steps = config.epochs * self.batches
        order = torch.randperm(self.x.shape[0], generator=self.shuffle).to(self.x.device)
        loss_sum = torch.zeros((), device=self.x.device)
        correct = torch.zeros((), device=self.x.device, dtype=torch.long)
        eps = 0.0
        lr = config.lr
        self.model.train()
        for batch in order.split(config.batch_size):
            lr = config.lr * self.lr_at(self.step / total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            eps = self.eps_at(self.step)
            xb, yb = self.x[batch], self.y[batch]
            seed = (config.seed * 1_000_003 + self.step) % (MAX_SEED + 1)
            loss, logits = method.training_loss(self.model, xb, yb, eps=eps, seed=seed)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * yb.shape[0]
            correct += (logits.detach().argmax(1) == yb).sum()
            self.step += 1
            advance()
        n = self.x.shape[0]
        return {
            "loss": float(loss_sum) / n,
            "train_accuracy": int(correct) / n,
            "eps": eps,
            "lr": lr,
        }

    def evaluate(self) -> tuple[float | None, float | None]:
        if self.held is None:
            return None, None
        hx, hy = self.held
        monitor = PGD(
            eps=self.method.eps,
            norm=self.method.norm,
            bounds=self.method.bounds,
            steps=self.config.eval_steps,
            seed=self.config.seed,
        )
        self.model.eval()
        clean = robust = 0
        for xb, yb in zip(hx.split(500), hy.split(500), strict=True):
            result = monitor.run(self.model, xb, yb)
            with torch.no_grad():
                clean += int((self.model(xb).argmax(1) == yb).sum())
            robust += int((~result.success).sum())
        return clean / hx.shape[0], robust / hx.shape[0]

    def train(
        self,
        *,
        progress: bool,
        console: Console | None,
        on_epoch: Callable[[dict[str, Any]], None] | None,
    ) -> TrainingResult:
        console = console or Console(stderr=True)
        config = self.config
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} batches"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not progress,
        )
        with bar:
            task = bar.add_task("", total=self.batches)
            while self.epoch < config.epochs and self.collapsed is None:
                bar.reset(task, description=f"epoch {self.epoch + 1}/{config.epochs}")
                start = time.perf_counter()
                record = self.train_epoch(lambda: bar.advance(task))
                clean, robust = self.evaluate()
                self.epoch += 1
                record = {
                    "epoch": self.epoch,
                    **record,
                    "clean_accuracy": clean,
                    "robust_accuracy": robust,
                    "seconds": time.perf_counter() - start,
                }
                self.history.append(record)
                if robust is not None and (
                    self.best_epoch is None
                    or robust > self.history[self.best_epoch - 1]["robust_accuracy"]
                ):
                    self.best_epoch = self.epoch
                    if self.folder is not None:
                        save_weights(self.model, self.folder / BEST, {"epoch": str(self.epoch)})
                    else:
                        self.best_state = _state(self.model)
                drop = getattr(self.method, "collapse_drop", None)
                if drop is not None and detect_collapse(self.history, drop=drop):
                    self.collapsed = self.epoch
                if self.folder is not None:
                    self.save()
                    with (self.folder / LOG).open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
                if progress:
                    console.print(_epoch_line(record, config.epochs), highlight=False)
                if on_epoch is not None:
                    on_epoch(record)
        collapsed = self.collapsed
        kept = self.epoch
        if collapsed is not None or (config.keep == "best" and self.best_epoch is not None):
            kept = self._restore_best()
        if collapsed is not None:
            message = (
                f"catastrophic overfitting at epoch {collapsed}: held-out PGD accuracy fell to "
                f"{self.history[-1]['robust_accuracy']:.1%} while clean accuracy held; "
                f"stopped and kept epoch {kept} (robust "
                f"{self.history[kept - 1]['robust_accuracy']:.1%}); a smaller alpha or eps ramp "
                "may avoid it"
            )
            warnings.warn(message, CatastrophicOverfittingWarning, stacklevel=3)
            if progress:
                console.print(f"[bold yellow]warning:[/] {message}", highlight=False)
        self.model.eval()
        return TrainingResult(
            history=list(self.history),
            best_epoch=self.best_epoch,
            collapsed_at=collapsed,
            kept=kept,
        )

    def _restore_best(self) -> int:
        assert self.best_epoch is not None
        if self.folder is not None:
            path = self.folder / BEST
            advice = "the best epoch's weights are lost: train again in another folder"
            weights, metadata = read_safetensors(path, "cannot read", advice)
            problem = state_problem(self.model.state_dict(), weights)
            if metadata.get("epoch") != str(self.best_epoch):
                problem = f"it holds epoch {metadata.get('epoch')}, not the best epoch"
            if problem is not None:
                raise InputError(
                    f"cannot restore the best epoch ({self.best_epoch}) from {path} ({problem}); "
                    + advice
                )
            self.model.load_state_dict(weights)
        else:
            assert self.best_state is not None
            self.model.load_state_dict(self.best_state)
        return self.best_epoch


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    held = ""
    if record["clean_accuracy"] is not None:
        held = (
            f"  held-out clean {record['clean_accuracy']:.1%}  PGD {record['robust_accuracy']:.1%}"
        )
    return (
        f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  loss {record['loss']:.4f}  "
        f"train acc {record['train_accuracy']:.1%}  eps {record['eps']:.3g}  "
        f"lr {record['lr']:.2e}{held}  {record['seconds']:.1f} s"
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
