"""What the GAN defenses' training loops share: a run folder, checkpoints, sample grids, a clock.

A run folder holds ``checkpoint.safetensors`` (networks, optimisers, RNG state and progress,
written through a temporary file and a rename, so a kill leaves the old or the new one),
``log.jsonl`` (one line per checkpoint) and PNG grids of samples, to see whether a GAN converges
or collapses. ``resume=True`` continues from the checkpoint; without it a folder that holds one is
refused, as in ``mlsec train``. The checkpoint's metadata records the defense and the settings that
decide the run (hyperparameters, batch size, a SHA-256 of the data, ...): a checkpoint of another
defense, of other settings or data, or a damaged one is refused in one line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save
from torch import nn

from mlsec.core.files import write_atomic
from mlsec.defenses.checkpoints import (
    CHECKPOINT,
    GAN_FORMAT,
    LOG,
    check_folder,
    check_same_run,
    count_problem,
    damaged,
    optimizer_problem,
    optimizer_state,
    read_checkpoint,
    rng_problem,
)
from mlsec.defenses.weights import META_KEY, state_problem
from mlsec.errors import InputError

__all__ = ["Clock", "RunFolder", "SavedRun", "image_grid", "load_networks"]


def image_grid(images: torch.Tensor, columns: int = 8) -> Image.Image:
    """A ``columns``-wide grid of ``[N, 1, H, W]`` images in [0, 1], 1-pixel white borders."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.ones(rows * (h + 2), columns * (w + 2))
    for i, image in enumerate(images[:, 0].detach().float().cpu().clamp(0, 1)):
        r, c = divmod(i, columns)
        canvas[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = image
    return Image.fromarray((canvas.numpy() * 255).round().astype(np.uint8))  # uint8 2-D: grey


def _under(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _network_problems(
    networks: Mapping[str, nn.Module], tensors: Mapping[str, torch.Tensor]
) -> list[str | None]:
    return [
        state_problem(network.state_dict(), _under(name, tensors), f"{name}.")
        for name, network in networks.items()
    ]


def load_networks(
    networks: Mapping[str, nn.Module], tensors: Mapping[str, torch.Tensor], where: str
) -> None:
    """Load ``NAME.KEY`` tensors into each named network; every tensor must belong to one.

    Names, shapes and dtypes are checked first, so a file that does not fit changes nothing.

    Raises:
        InputError: ``"WHERE (what does not fit)"``.

    """
    stray = sorted(k for k in tensors if k.split(".", 1)[0] not in networks)
    problems: list[str | None] = [f"unexpected tensor {stray[0]}"] if stray else []
    problems += _network_problems(networks, tensors)
    problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        raise InputError(f"{where} ({problem})")
    for name, network in networks.items():
        network.load_state_dict(_under(name, tensors))


class SavedRun:
    """A GAN run's checkpoint whose defense and settings match the run's."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        self.path = path
        self.tensors = tensors

    def restore(
        self,
        *,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        counter: str,
        total: int,
        limit: str,
    ) -> tuple[int, float]:
        """Load the networks, the optimisers' state and the global RNG; checked, then set.

        Args:
            networks: the freshly built networks by prefix (``g.KEY`` tensors for ``"g"``).
            optimizers: their optimisers by prefix (``g_opt.INDEX.NAME`` tensors).
            counter: the name of the progress tensor (``"step"``, ``"epoch"``).
            total: the run's total of ``counter``; a checkpoint past it is refused.
            limit: the setting that sets ``total``, e.g. ``"epochs"``.

        Returns:
            The progress count and the seconds of training so far.

        Raises:
            InputError: one line naming the file, if anything is missing or does not fit.

        """
        tensors, path = self.tensors, self.path
        scalars = ("rng", counter, "seconds")
        known = {*networks, *optimizers}
        stray = sorted(k for k in tensors if k not in scalars and k.split(".", 1)[0] not in known)
        problems: list[str | None] = [f"unexpected tensor {stray[0]}"] if stray else []
        problems += _network_problems(networks, tensors)
        states = {}
        for name, optimizer in optimizers.items():
            states[name], malformed = optimizer_state(tensors, name)
            problems += [f"unexpected tensor {k}" for k in malformed]
            problems.append(optimizer_problem(optimizer, states[name], name))
        problems += [
            rng_problem("rng", tensors.get("rng")),
            count_problem(counter, tensors.get(counter), integer=True),
            count_problem("seconds", tensors.get("seconds"), integer=False),
        ]
        problem = next((p for p in problems if p is not None), None)
        if problem is not None:
            raise damaged(path, problem)
        for name, network in networks.items():
            network.load_state_dict(_under(name, tensors))
        for name, optimizer in optimizers.items():
            # The param groups stay as built: the settings that make them are checked equal.
            groups = optimizer.state_dict()["param_groups"]
            optimizer.load_state_dict({"state": states[name], "param_groups": groups})
        done = int(tensors[counter].item())
        if done > total:
            raise InputError(
                f"the checkpoint in {path.parent} is at {counter} {done}, past {limit} {total}; "
                f"give {limit} {done} or more, or start a new run in another folder",
                subject="resume",
            )
        torch.set_rng_state(tensors["rng"])
        return done, float(tensors["seconds"].item())


class RunFolder:
    """A training run's folder: checkpoint, log lines and images.

    Args:
        folder: the folder, or None for a run without one.
        resume: continue from the folder's checkpoint.
        defense: the defense's name, recorded in the checkpoint.
        settings: what decides the run and must not change on resume (JSON values); its
            ``"data"`` maps names of the data to their hashes
            (:func:`~mlsec.core.fingerprint.fingerprint_tensors`).

    """

    def __init__(
        self,
        folder: str | Path | None,
        *,
        resume: bool,
        defense: str,
        settings: dict[str, Any],
    ) -> None:
        self.folder = None if folder is None else Path(folder)
        self.defense = defense
        self.settings = json.loads(json.dumps(settings))  # as a reloaded checkpoint will hold them
        if self.folder is None:
            if resume:
                raise InputError("resume needs the run folder to resume from", subject="resume")
            return
        check_folder(self.folder, resume=resume, files=(CHECKPOINT, LOG))
        self.folder.mkdir(parents=True, exist_ok=True)

    def load(self) -> SavedRun | None:
        """The checkpoint, or None without a folder or a checkpoint.

        Raises:
            InputError: the checkpoint is damaged, or of another defense, settings or data.

        """
        if self.folder is None or not (self.folder / CHECKPOINT).exists():
            return None
        path = self.folder / CHECKPOINT
        tensors, meta = read_checkpoint(path, GAN_FORMAT)
        found = meta.get("defense")
        if not isinstance(found, str):
            raise damaged(path, "it names no defense")
        if found != self.defense:
            raise InputError(
                f"the checkpoint in {self.folder} was made by {found}, not {self.defense}; "
                f"resume it with mlsec defend train {found}, or start a new run in another folder",
                subject="resume",
            )
        check_same_run(path, meta.get("settings"), self.settings)
        return SavedRun(path, tensors)

    def save(self, tensors: dict[str, torch.Tensor], log: dict[str, Any]) -> None:
        """Write the checkpoint (with the defense and settings) and append ``log`` to the log."""
        if self.folder is None:
            return
        meta = {"format": GAN_FORMAT, "defense": self.defense, "settings": self.settings}
        write_atomic(self.folder / CHECKPOINT, save(tensors, metadata={META_KEY: json.dumps(meta)}))
        with (self.folder / LOG).open("a") as handle:
            handle.write(json.dumps(log) + "\n")

    def image(self, name: str, images: torch.Tensor, columns: int = 8) -> None:
        """Save ``images`` as a PNG grid in the folder."""
        if self.folder is not None:
            image_grid(images, columns).save(self.folder / name)


class Clock:
    """Seconds of training, carried across resumes."""

    def __init__(self, before: float = 0.0) -> None:
        self.before = before
        self.start = time.perf_counter()

    def __call__(self) -> float:
        """Seconds so far, to a tenth."""
        return round(self.before + time.perf_counter() - self.start, 1)
