"""A patch trigger: the small stamp a BadNets-style backdoor responds to (Gu et al. 2017)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mlsec.errors import InputError

__all__ = ["BADNETS_TRIGGER", "PatchTrigger"]


@dataclass(frozen=True, kw_only=True)
class PatchTrigger:
    """A fixed patch stamped at one place of every image, and the class it sends inputs to.

    Args:
        target: the class a backdoored model predicts for stamped inputs.
        top: the patch's first row.
        left: the patch's first column.
        pattern: the patch's pixel values, rows of equal length, each in [0, 1]; the same values
            are written to every channel.

    Example:
        >>> trigger = PatchTrigger(target=7, top=1, left=2, pattern=((1.0, 0.0),))
        >>> trigger.apply(torch.zeros(1, 1, 3, 4))[0, 0]
        tensor([[0., 0., 0., 0.],
                [0., 0., 1., 0.],
                [0., 0., 0., 0.]])
        >>> trigger.mask(3, 4).sum().item()
        2

    """

    target: int
    top: int
    left: int
    pattern: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        for name in ("target", "top", "left"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"trigger {name} must be an integer >= 0 (got {value!r})")
        rows = self.pattern
        if not isinstance(rows, tuple) or not rows or not all(isinstance(r, tuple) for r in rows):
            raise InputError("trigger pattern must be a non-empty tuple of tuples of pixel values")
        if not rows[0] or any(len(row) != len(rows[0]) for row in rows):
            raise InputError("trigger pattern rows must be non-empty and of equal length")
        for value in (v for row in rows for v in row):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise InputError(
                    f"trigger pattern values must be numbers in [0, 1] (got {value!r})"
                )

    @property
    def height(self) -> int:
        """Rows of the patch."""
        return len(self.pattern)

    @property
    def width(self) -> int:
        """Columns of the patch."""
        return len(self.pattern[0])

    def _check_fits(self, height: int, width: int) -> None:
        if self.top + self.height > height or self.left + self.width > width:
            raise InputError(
                f"the {self.height}x{self.width} trigger at row {self.top}, column {self.left} "
                f"does not fit in {height}x{width} images; move it or use larger images"
            )

    def mask(self, height: int, width: int) -> torch.Tensor:
        """A bool ``[height, width]`` map, True on the patch."""
        self._check_fits(height, width)
        out = torch.zeros(height, width, dtype=torch.bool)
        out[self.top : self.top + self.height, self.left : self.left + self.width] = True
        return out

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of the ``[B, C, H, W]`` batch ``x`` with the patch stamped on every image."""
        if x.dim() != 4:
            raise InputError(f"the trigger needs images [B, C, H, W] (got shape {tuple(x.shape)})")
        self._check_fits(x.shape[-2], x.shape[-1])
        out = x.clone()
        patch = torch.tensor(self.pattern, dtype=x.dtype, device=x.device)
        rows = slice(self.top, self.top + self.height)
        cols = slice(self.left, self.left + self.width)
        out[:, :, rows, cols] = patch
        return out


# The trigger of the bundled ``mnist-cnn-badnets``: a white 3x3 square in the bottom-right
# corner (rows and columns 25-27), where MNIST digits never reach; target class 7. Every pixel of
# it differs from MNIST's black background, so the whole patch is needed to stamp it (a
# checkerboard's black half would already be there on most images).
BADNETS_TRIGGER = PatchTrigger(target=7, top=25, left=25, pattern=((1.0, 1.0, 1.0),) * 3)
