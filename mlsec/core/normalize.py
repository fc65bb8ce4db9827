"""An adapter so a model that expects normalized input is attacked in pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlsec.errors import InputError

__all__ = ["Normalized"]


class Normalized(nn.Module):
    """Wrap ``model`` so that it takes inputs in pixel space and normalizes them itself.

    ``Normalized(model, mean, std)(x) == model((x - mean) / std)``, with ``mean`` and ``std`` per
    channel (dimension 1). Attacks on the wrapper measure eps in pixels.

    Example:
        >>> import torch
        >>> wrapped = Normalized(torch.nn.Identity(), mean=[0.5], std=[0.25])
        >>> wrapped(torch.tensor([[[[1.0]]]])).item()
        2.0

    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise InputError(
                f"mean and std need one value per channel (got {len(mean)} and {len(std)})"
            )
        if any(s <= 0 for s in std):
            raise InputError(f"std values must be > 0 (got {list(std)})")
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` per channel and run the wrapped model."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = self.mean.view(shape).to(x.dtype)
        std = self.std.view(shape).to(x.dtype)
        out: torch.Tensor = self.model((x - mean) / std)
        return out
