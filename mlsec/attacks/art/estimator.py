"""What ART's classifier wraps: the model behind a counting module, seeded, on the right device."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from mlsec.attacks.base import Problem

__all__ = [
    "UNSEEDED_START",
    "CountingModel",
    "art_classifier",
    "cuda_device",
    "seeded",
    "seeded_start",
]

# ART attacks that draw their starting point from an unseeded np.random.RandomState(), so that
# mlsec gives them seeded starting points (``x_adv_init``) instead.
UNSEEDED_START = {"HopSkipJump", "BoundaryAttack"}
# Uniform-noise draws per sample when looking for such a starting point.
_START_DRAWS = 10


class CountingModel(nn.Module):
    """What ART's classifier wraps: the model's float32 logits, counting the samples it sees.

    The model is reached through ``forward`` (the problem's, which casts to the model's dtype), not
    held as a submodule, so ART's ``.to(device)`` and ``.train()`` calls never touch it.
    """

    def __init__(
        self, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device
    ) -> None:
        super().__init__()
        self.model_forward = forward
        self.model_device = device
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's float32 logits for ``x``, on ``x``'s device; counts the samples."""
        self.samples += x.shape[0]
        return self.model_forward(x.to(self.model_device)).float().to(x.device)


def art_classifier(
    counting: CountingModel, x: torch.Tensor, classes: int, bounds: tuple[float, float]
) -> Any:
    """ART's ``PyTorchClassifier`` around ``counting`` for inputs like ``x``, cross-entropy loss."""
    from art.estimators.classification import PyTorchClassifier  # optional: ART, on first use

    with cuda_device(x.device):
        return PyTorchClassifier(
            model=counting,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=classes,
            clip_values=bounds,
            # ART computes on the CPU unless told "gpu"; the wrapper reaches other devices.
            device_type="gpu" if x.device.type == "cuda" else "cpu",
        )


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed numpy's and torch's global generators (ART draws from both); restore them after."""
    state = np.random.get_state()
    cuda = device.type == "cuda"
    try:
        with torch.random.fork_rng(devices=[device] if cuda else []):
            np.random.seed(seed % 2**32)
            # Only the generators fork_rng restores (torch.manual_seed would seed every GPU).
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            yield
    finally:
        np.random.set_state(state)


@contextmanager
def cuda_device(device: torch.device) -> Iterator[None]:
    """ART places tensors on the current CUDA device: make it ``device`` for the duration."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


def seeded_start(problem: Problem, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Seeded starting points for the decision-based attacks that would draw unseeded ones.

    Per sample, the first of a few uniform-noise images (drawn from the sample's own key) that
    the model does not classify as it classifies ``x`` (targeted: classifies as the target); where
    none is, an input of the batch that qualifies; where none is either, ``x`` (ART then draws its
    own).
    """
    x = problem.x
    shape = (-1, *([1] * (x.dim() - 1)))
    with torch.no_grad():
        own = forward(x).argmax(1)
        start = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

        def qualifies(predicted: torch.Tensor) -> torch.Tensor:
            return predicted == problem.target if problem.target is not None else predicted != own

        for draw in range(_START_DRAWS):
            noise = problem.keys.uniform(tuple(x.shape[1:]), stream="art/start", step=draw)
            noise = (problem.low + (problem.high - problem.low) * noise).to(x.dtype)
            new = qualifies(forward(noise).argmax(1)) & ~found
            start = torch.where(new.view(shape), noise, start)
            found |= new
            if bool(found.all()):
                return start
        # Another input of the batch: the first that qualifies for each sample still without one.
        fits = (
            own[None, :] == problem.target[:, None]
            if problem.target is not None
            else own[None, :] != own[:, None]
        )
        donor = fits.float().argmax(1)
        use = ~found & fits.any(1)
        return torch.where(use.view(shape), x[donor], start)
