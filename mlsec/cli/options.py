"""Command-line options that need more than argparse, and the flags io names.

``--normalize``, and the data options ``--workers``, ``--resize`` and ``--center-crop``.

:data:`FLAGS` tells the loaders of :mod:`mlsec.io` how the command line spells the inputs their
messages point to, so a refusal reads ``pass --trust-pickle`` here and ``pass trust_pickle=True``
to a Python caller.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from torch import nn

from mlsec.core.normalize import Normalized
from mlsec.errors import InputError
from mlsec.io import Terms

__all__ = [
    "FLAGS",
    "add_data_options",
    "add_model_source_options",
    "apply_normalize",
    "parse_normalize",
    "parse_size",
    "workers",
]

FLAGS = Terms(arch="--arch", trust_pickle="--trust-pickle", defense="--defense")

_SIZE = re.compile(r"([0-9]+)(?:x([0-9]+))?")
_MAX_SIDE = 1 << 16  # larger than any image Pillow opens without a decompression-bomb error

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


def parse_size(text: str) -> int | tuple[int, int]:
    """Parse the ``SIZE`` of ``--resize`` or ``--center-crop``: ``224``, or ``HxW``: ``224x200``.

    Raises:
        argparse.ArgumentTypeError: not one or two whole numbers from 1 to 65536; argparse
            prints it as a one-line usage error (exit 2).

    Example:
        >>> parse_size("224"), parse_size("224x200")
        (224, (224, 200))

    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 224 or 224x224 (height x width), got {text!r}"
        )
    sides = [int(part) for part in match.groups() if part is not None]
    if not all(1 <= side <= _MAX_SIDE for side in sides):
        raise argparse.ArgumentTypeError(f"sides must lie in 1..{_MAX_SIDE}, got {text!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def workers(text: str) -> int:
    """A number of ``DataLoader`` worker processes, ``>= 0``.

    Example:
        >>> workers("4")
        4

    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_data_options(group: Any) -> None:
    """Add how the data is read to ``group`` (an argparse parser or argument group).

    Their values land in ``args.workers`` (int, default 0), ``args.resize`` and
    ``args.center_crop`` (``None``, an int or ``(H, W)``), which ``load_data`` and
    ``batches`` take as they are.
    """
    group.add_argument(
        "--workers",
        type=workers,
        default=0,
        metavar="N",
        help="processes reading and decoding the data (DataLoader workers; default 0: none)",
    )
    group.add_argument(
        "--resize",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="resize each image of an image folder: 224 sets the shorter side, 224x200 is HxW",
    )
    group.add_argument(
        "--center-crop",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="then crop each image's centre to SIZE (224 or HxW)",
    )


def add_model_source_options(group: Any, default: str) -> None:
    """``--model`` (``default`` says what runs without it), ``--arch`` and ``--trust-pickle``."""
    group.add_argument(
        "--model",
        default=None,
        help="a bundled model name, a TorchScript (.pt), torch.export (.pt2) or weights file "
        "(.safetensors, or a state dict .pt with --arch), or module:function (default: "
        f"{default})",
    )
    group.add_argument(
        "--arch", default=None, help="module:factory building the model for a weights file"
    )
    group.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickled whole model (runs code from the file: only for files you "
        "trust)",
    )
