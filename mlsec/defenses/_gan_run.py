"""What the GAN defenses' training loops share: a run folder, checkpoints, sample grids, progress.

A run folder holds ``checkpoint.safetensors`` (networks, optimisers, RNG state and progress,
written through a temporary file and a rename, so a kill leaves the old or the new one),
``log.jsonl`` (one line per checkpoint) and PNG grids of samples, to see whether a GAN converges
or collapses. ``resume=True`` continues from the checkpoint; without it a folder that holds one is
refused, as in ``mlsec train``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from mlsec._files import write_atomic
from mlsec.defenses.training import CHECKPOINT, check_folder
from mlsec.errors import InputError


def image_grid(images: torch.Tensor, columns: int = 8) -> Image.Image:
    """A ``columns``-wide grid of ``[N, 1, H, W]`` images in [0, 1], 1-pixel white borders."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.ones(rows * (h + 2), columns * (w + 2))
    for i, image in enumerate(images[:, 0].detach().float().cpu().clamp(0, 1)):
        r, c = divmod(i, columns)
        canvas[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = image
    return Image.fromarray((canvas.numpy() * 255).round().astype(np.uint8))  # uint8 2-D: grey


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimiser's per-parameter state as flat ``PREFIX.INDEX.NAME`` tensors (safetensors)."""
    tensors = {}
    for index, entries in optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            tensors[f"{prefix}.{index}.{name}"] = torch.as_tensor(value).detach().clone()
    return tensors


def load_optimizer(
    prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    """Restore the state :func:`optimizer_tensors` wrote (the param groups stay as built)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous tensors: copy what it would refuse.
    state = module.state_dict()
    return {f"{prefix}.{k}": v.detach().contiguous().clone() for k, v in state.items()}


def load_module(prefix: str, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    cut = len(prefix) + 1
    module.load_state_dict({k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})


class RunFolder:
    """A training run's folder: checkpoint, log lines and images."""

    def __init__(self, folder: str | Path | None, *, resume: bool) -> None:
        self.folder = None if folder is None else Path(folder)
        if self.folder is None:
            if resume:
                raise InputError("resume needs the run folder to resume from")
            return
        check_folder(self.folder, resume=resume)
        self.folder.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, torch.Tensor] | None:
        """The checkpoint's tensors, or None without a folder or a checkpoint."""
        if self.folder is None or not (self.folder / CHECKPOINT).exists():
            return None
        try:
            return load_file(str(self.folder / CHECKPOINT))
        except (OSError, SafetensorError) as error:
            raise InputError(f"cannot read {self.folder / CHECKPOINT}: {error}") from None

    def save(self, tensors: dict[str, torch.Tensor], log: dict[str, Any]) -> None:
        if self.folder is None:
            return
        write_atomic(self.folder / CHECKPOINT, save(tensors))
        with (self.folder / "log.jsonl").open("a") as handle:
            handle.write(json.dumps(log) + "\n")

    def image(self, name: str, images: torch.Tensor, columns: int = 8) -> None:
        if self.folder is not None:
            image_grid(images, columns).save(self.folder / name)


@contextmanager
def progress_bar(
    total: int, done: int, what: str, *, enabled: bool, console: Console | None
) -> Iterator[Any]:
    """A rich bar over ``total`` units starting at ``done``; yields ``advance(losses: str)``."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=not enabled,
    )
    with bar:
        task = bar.add_task(what, total=total, completed=done, losses="")

        def advance(losses: str = "") -> None:
            bar.update(task, advance=1, losses=losses)

        yield advance


class Clock:
    """Seconds of training, carried across resumes."""

    def __init__(self, before: float = 0.0) -> None:
        self.before = before
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(self.before + time.perf_counter() - self.start, 1)
