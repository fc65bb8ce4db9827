"""Safetensors I/O that training runs, GAN runs and saved purifiers share (never unpickles).

Module and optimiser state become flat, named tensors (``PREFIX.KEY``); a file is read with its
metadata; a state dict that does not fit a module is described in one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from mlsec.core.files import write_atomic
from mlsec.errors import InputError

__all__ = [
    "META_KEY",
    "dtype_name",
    "mismatch",
    "module_tensors",
    "one_line",
    "optimizer_tensors",
    "read_safetensors",
    "save_weights",
    "state_problem",
    "state_tensors",
]

# A run checkpoint's safetensors metadata key (its value is a JSON object).
META_KEY = "mlsec"


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state dict that safetensors accepts.

    safetensors refuses shared storage and non-contiguous tensors: each tensor is copied.
    """
    return {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}


def module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as ``PREFIX.KEY`` tensors (safetensors)."""
    return {f"{prefix}.{k}": v for k, v in state_tensors(module).items()}


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimiser's per-parameter state as flat ``PREFIX.INDEX.NAME`` tensors (safetensors)."""
    tensors = {}
    for index, entries in optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            tensors[f"{prefix}.{index}.{name}"] = torch.as_tensor(value).detach().clone()
    return tensors


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``model``'s state dict to ``path`` as safetensors, atomically."""
    write_atomic(Path(path), save_safetensors(state_tensors(model), metadata=metadata))


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its type name if it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def read_safetensors(
    path: Path, label: str, advice: str, *, subject: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file; never unpickles.

    Args:
        path: the file.
        label: what the file is, for the message, e.g. ``"cannot read"``.
        advice: what to do instead, for the message.
        subject: the argument at fault, for the error (e.g. ``"resume"``).

    Raises:
        InputError: one line naming ``path`` for a folder, a missing, truncated or corrupt file.

    """
    try:
        blob = path.read_bytes()
        tensors = load_safetensors(blob)
    except (OSError, SafetensorError, ValueError, RuntimeError) as error:
        raise InputError(
            f"{label} {path} ({one_line(error)}): it is truncated or not a safetensors file; "
            + advice,
            subject=subject,
        ) from None
    # load() has checked the header: a JSON object whose "__metadata__" maps strings to strings.
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    return tensors, dict(header.get("__metadata__") or {})


def dtype_name(tensor: torch.Tensor) -> str:
    """``float32`` for a ``torch.float32`` tensor."""
    return str(tensor.dtype).removeprefix("torch.")


def mismatch(where: str, value: torch.Tensor, like: torch.Tensor) -> str | None:
    """Why ``value`` cannot stand in for ``like`` (shape, then dtype), or None."""
    if value.shape != like.shape:
        return f"{where} has shape {list(value.shape)}, not {list(like.shape)}"
    if value.dtype != like.dtype:
        return f"{where} is {dtype_name(value)}, not {dtype_name(like)}"
    return None


def state_problem(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], prefix: str = ""
) -> str | None:
    """Why ``got`` does not load into a state dict like ``expected``, or None if it fits.

    The first missing, unexpected, misshapen or mistyped tensor, named with ``prefix``.

    Example:
        >>> state_problem({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, "model.")
        'model.w has shape [3], not [2]'

    """
    for problem, keys in (
        ("missing tensor", [k for k in expected if k not in got]),
        ("unexpected tensor", sorted(k for k in got if k not in expected)),
    ):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            return f"{problem} {prefix}{keys[0]}{more}"
    for key, reference in expected.items():
        wrong = mismatch(f"{prefix}{key}", got[key], reference)
        if wrong is not None:
            return wrong
    return None
