"""Command-line options that need more than argparse: ``--normalize``, and the flags io names.

:data:`FLAGS` tells the loaders of :mod:`mlsec.io` how the command line spells the inputs their
messages point to, so a refusal reads ``pass --trust-pickle`` here and ``pass trust_pickle=True``
to a Python caller.
"""

from __future__ import annotations

import math

from torch import nn

from mlsec.core.normalize import Normalized
from mlsec.errors import InputError
from mlsec.io import Terms

__all__ = ["FLAGS", "apply_normalize", "parse_normalize"]

FLAGS = Terms(arch="--arch", trust_pickle="--trust-pickle", defense="--defense")

_USAGE = "give MEAN,STD or the means then the stds per channel, e.g. 0.5,0.5,0.5,0.2,0.2,0.2"


def parse_normalize(text: str) -> tuple[list[float], list[float]]:
    """Parse ``--normalize``: ``MEAN,STD`` for one channel or ``M1,...,Mc,S1,...,Sc`` for c.

    Raises:
        InputError: the text is not an even count of finite numbers, or a std is not > 0.

    Example:
        >>> parse_normalize("0.5,0.5,0.5,0.25,0.25,0.25")
        ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])

    """
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise InputError(
            f"--normalize: expected comma-separated numbers (got {text!r}); {_USAGE}"
        ) from None
    if len(values) % 2:
        raise InputError(f"--normalize: got {len(values)} numbers, an odd count; {_USAGE}")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"--normalize: values must be finite (got {text!r})")
    half = len(values) // 2
    mean, std = values[:half], values[half:]
    if any(s <= 0 for s in std):
        raise InputError(f"--normalize: std values must be > 0 (got {','.join(map(str, std))})")
    return mean, std


def apply_normalize(
    model: nn.Module, mean: list[float], std: list[float], *, channels: int | None = None
) -> nn.Module:
    """Wrap ``model`` so it takes pixels and normalizes them itself: ``model((x - mean) / std)``.

    Args:
        model: the model that expects normalized inputs.
        mean: per-channel means (or one value for every channel).
        std: per-channel standard deviations, each > 0.
        channels: the data's channel count, if known; ``mean`` must have 1 or that many values.

    Raises:
        InputError: ``mean`` has neither 1 nor ``channels`` values.

    Example:
        >>> import torch
        >>> wrapped = apply_normalize(nn.Identity(), [0.5], [0.25], channels=1)
        >>> wrapped(torch.full((1, 1, 1, 1), 0.75)).item()
        1.0

    """
    if channels is not None and len(mean) not in (1, channels):
        raise InputError(
            f"--normalize gives {len(mean)} channels but the inputs have {channels}; "
            "give one mean and std, or one per channel"
        )
    return Normalized(model, mean, std).eval()
