"""A training run's state and its checkpoint (format ``mlsec-train-checkpoint/2``).

The checkpoint holds the model's weights (``model.KEY``), the optimiser's per-parameter state
(``optimizer.INDEX.NAME``), the global, shuffle and CUDA RNG states and, as JSON metadata, the
settings the run must be resumed with (a SHA-256 of the data included), its progress and its
history. Restoring checks everything before setting anything: a refused resume changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, TypeGuard

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from mlsec.core import distributed
from mlsec.core.files import write_atomic
from mlsec.core.fingerprint import fingerprint_tensors
from mlsec.core.threat import Norm
from mlsec.defenses.checkpoints import (
    CHECKPOINT,
    LOG,
    TRAIN_FORMAT,
    check_folder,
    check_same_run,
    damaged,
    optimizer_problem,
    optimizer_state,
    read_checkpoint,
    rng_problem,
)
from mlsec.defenses.training.config import TrainConfig, parse_schedule
from mlsec.defenses.training.ranks import Ranks
from mlsec.defenses.weights import META_KEY, state_problem, state_tensors
from mlsec.errors import InputError

__all__ = ["RunState", "TrainingMethod"]


class TrainingMethod(Protocol):
    """What a run needs of its method (:class:`~mlsec.defenses.training.AdversarialTraining`)."""

    @property
    def name(self) -> str:
        """The method's registered name, recorded in the checkpoint."""

    @property
    def eps(self) -> float:
        """The budget trained against."""

    @property
    def norm(self) -> Norm:
        """The norm of the budget."""

    @property
    def bounds(self) -> tuple[float, float]:
        """The input bounds."""

    def params(self) -> dict[str, Any]:
        """The hyperparameters, recorded in the checkpoint."""

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
        """The batch's mean loss and the logits whose accuracy the log reports."""


Progress = tuple[int, int, int | None, int | None, list[dict[str, Any]]]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _build_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


@dataclass
class RunState:
    """What a training run holds between steps, and its checkpoint."""

    method: TrainingMethod
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
    ranks: Ranks = field(default_factory=Ranks)
    optimizer: torch.optim.Optimizer = field(init=False)
    shuffle: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        self.optimizer = _build_optimizer(self.params, config)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.batches = -(-self.x.shape[0] // config.batch_size)
        self.lr_at = parse_schedule(config.schedule, config.epochs)

    # -- settings that a checkpoint must match

    def settings(self) -> dict[str, Any]:
        """What decides the run, as JSON values: a resumed run must have the same."""
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
        """SHA-256 of the training and held-out data."""
        # Once per run: hashing the data costs about a second per 500 MB.
        data = {"training data": fingerprint_tensors(self.x, self.y)}
        if self.held is not None:
            data["held-out data"] = fingerprint_tensors(*self.held)
        return data

    def agree(self) -> None:
        """Refuse, on every rank, a run whose ranks hold different settings, data or models."""
        shapes = [[name, list(p.shape)] for name, p in self.model.named_parameters()]
        distributed.agree(
            self.ranks.group, "training settings, data or models", [self.settings(), shapes]
        )

    def prepare_folder(self, resume: bool) -> None:
        """Check the folder; restore its checkpoint if ``resume``, else start a fresh log.

        Rank 0 alone writes; every rank restores the checkpoint (the folder must be one that
        every rank sees). An error on any rank stops all of them.
        """
        folder = self.folder
        assert isinstance(folder, Path)
        self.ranks.on_main(lambda: self._create_folder(folder, resume))
        if not resume:
            return
        self.ranks.together(lambda: self.restore(folder / CHECKPOINT))
        # The log may have run ahead of the checkpoint when the run was killed: rewrite it.
        log = "".join(json.dumps(r) + "\n" for r in self.history)
        self.ranks.on_main(lambda: write_atomic(folder / LOG, log))

    @staticmethod
    def _create_folder(folder: Path, resume: bool) -> None:
        check_folder(folder, resume=resume)
        folder.mkdir(parents=True, exist_ok=True)
        if not resume:
            (folder / LOG).unlink(missing_ok=True)

    # -- checkpoints

    def save(self) -> None:
        """Write the checkpoint after the current epoch."""
        assert isinstance(self.folder, Path)
        tensors = {f"model.{k}": v for k, v in state_tensors(self.model).items()}
        scalars: dict[str, dict[str, Any]] = {}
        for index, entries in self.optimizer.state_dict()["state"].items():
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
        """Continue from the checkpoint at ``path``; all is checked before anything is set."""
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
                f"{path} does not fit this model ({problem}); resume with the model the run "
                "started with, or start a new run in another folder",
                subject="resume",
            )
        state = self._optimizer_state(path, tensors, meta)
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

    @staticmethod
    def _optimizer_state(
        path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> dict[int, dict[str, Any]]:
        """The optimiser's per-parameter state: its tensors and its JSON scalars, merged."""
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
        return state

    def _progress(self, path: Path, meta: dict[str, Any]) -> Progress:
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
