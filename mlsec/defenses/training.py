"""Adversarial training: PGD-AT (Madry et al.), Fast-AT (Wong et al.) and TRADES (Zhang et al.).

Every method is a frozen dataclass of its hyperparameters behind the :class:`Defense` interface;
:class:`TrainConfig` holds what all of them share (epochs, optimiser, schedule, seed). One loop,
:meth:`AdversarialTraining.fit`, trains any of them: the inner maximisation is an
:class:`mlsec.attacks.PGD` (there is no second PGD), each epoch ends with clean and PGD accuracy on
held-out data, and with a folder it appends one JSON line per epoch to ``log.jsonl`` and writes a
checkpoint (weights, optimiser and RNG state, all safetensors, through a temporary file and a
rename) from which ``resume=True`` continues exactly.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from mlsec import _model
from mlsec._checks import check_batch, check_labels
from mlsec._files import write_atomic
from mlsec.attacks.base import examples_for_checked_data
from mlsec.attacks.pgd import PGD
from mlsec.defenses.base import Defense
from mlsec.errors import InputError
from mlsec.loading import as_tensors
from mlsec.threat import Norm, ThreatModel

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
_FORMAT = "mlsec-train-checkpoint/1"


class CatastrophicOverfittingWarning(UserWarning):
    """Held-out robust accuracy collapsed while clean accuracy held (Wong et al. 2020)."""


# --- configuration -------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
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
        if not _is_int(self.seed):
            raise InputError(f"seed must be an integer (got {self.seed!r})")
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
                config and model; the result equals an uninterrupted run's.
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
    if not _is_int(steps) or steps < 1:  # type: ignore[operator]
        raise InputError(f"steps must be an integer >= 1 (got {steps!r})")
    if step_size is not None and (not _is_number(step_size) or step_size <= 0):  # type: ignore[operator]
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


def check_folder(folder: Path, *, resume: bool) -> None:
    """Raise :class:`InputError` unless ``folder`` can hold a new run, or a run to resume."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder")
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
        }

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
            "format": _FORMAT,
            "settings": self.settings(),
            "epoch": self.epoch,
            "step": self.step,
            "best_epoch": self.best_epoch,
            "collapsed": self.collapsed,
            "history": self.history,
            "param_groups": state["param_groups"],
            "optimizer_scalars": scalars,
        }
        blob = save_safetensors(
            {k: v.cpu() for k, v in tensors.items()}, metadata={"mlsec": json.dumps(meta)}
        )
        write_atomic(self.folder / CHECKPOINT, blob)

    def restore(self, path: Path) -> None:
        try:
            blob = path.read_bytes()
            tensors = load_safetensors(blob)
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {})["mlsec"])
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise InputError(f"--resume: cannot read {path}: {error}") from None
        if meta.get("format") != _FORMAT:
            raise InputError(f"--resume: {path} is not an mlsec training checkpoint")
        ours, theirs = self.settings(), meta["settings"]
        if ours != theirs:
            differ = [k for k in ours if ours[k] != theirs.get(k)]
            detail = "; ".join(
                f"{k}: {theirs.get(k)} in the checkpoint, {ours[k]} now" for k in differ
            )
            raise InputError(
                f"--resume: the checkpoint in {path.parent} was made with other settings "
                f"({detail}); resume with the same settings, or start a new run in another folder"
            )
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise InputError(
                f"--resume: the checkpoint does not fit this model ({first})"
            ) from None
        optimizer_state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                optimizer_state.setdefault(int(index), {})[name] = value
        for index, entries in meta["optimizer_scalars"].items():
            optimizer_state.setdefault(int(index), {}).update(entries)
        self.optimizer.load_state_dict(
            {"state": optimizer_state, "param_groups": meta["param_groups"]}
        )
        torch.set_rng_state(tensors["rng.torch"])
        self.shuffle.set_state(tensors["rng.shuffle"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.best_epoch = meta["best_epoch"]
        self.collapsed = meta["collapsed"]
        self.history = list(meta["history"])

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
            seed = config.seed * 1_000_003 + self.step
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
            self.model.load_state_dict(load_safetensors((self.folder / BEST).read_bytes()))
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
