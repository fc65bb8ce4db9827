"""Data as tensors: a Dataset, a DataLoader or an ``(x, y)`` pair, checked once at the boundary."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mlsec.core.text import raised_by
from mlsec.errors import InputError

__all__ = ["as_tensors"]


def _pairs(items: Iterable[Any], option: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs, ys = [], []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise InputError(f"{option}: each item must be an (input, label) pair")
        xs.append(torch.as_tensor(item[0]))
        ys.append(torch.as_tensor(item[1]))
    if not xs:
        raise InputError(f"{option}: the data set is empty")
    return xs, ys


def _collect(data: Any, option: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, DataLoader):
        xs, ys = _pairs(data, option)
        return torch.cat(xs), torch.cat(ys)
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__"):
            raise InputError(f"{option}: a Dataset must define __len__")
        xs, ys = _pairs((data[i] for i in range(len(data))), option)
        return torch.stack(xs), torch.stack(ys)
    if isinstance(data, tuple | list) and len(data) == 2:
        return torch.as_tensor(data[0]), torch.as_tensor(data[1])
    raise InputError(
        f"{option} must give a Dataset, a DataLoader or an (x, y) pair (got {type(data).__name__})"
    )


def as_tensors(data: Any, option: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a Dataset, a DataLoader or an ``(x, y)`` pair into ``(x, y)`` tensors, checked.

    The inputs must be floating point and finite, the labels integers, both with the same number
    of samples, at least one. Failures raise :class:`InputError` naming ``option``.
    """
    try:
        x, y = _collect(data, option)
    except (TypeError, ValueError, RuntimeError) as error:
        if isinstance(error, InputError):
            raise
        # Items torch cannot turn into tensors: PIL images, ragged shapes, strings, ...
        raise InputError(
            f"{option}: cannot turn the data into tensors ({type(error).__name__}: {error}); "
            "give tensors of equal shape, e.g. images after ToTensor()"
        ) from None
    except (Exception, SystemExit) as error:  # a Dataset's own code may fail in any way
        raise InputError(f"{option}: reading the data raised {raised_by(error)}") from None
    if not x.is_floating_point():
        raise InputError(
            f"{option}: inputs must be floating point within the bounds (got {x.dtype}); "
            "for uint8 images divide by 255"
        )
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise InputError(f"{option}: labels must be integers (got {y.dtype})")
    if y.dim() != 1 or x.dim() < 2:
        raise InputError(
            f"{option}: need inputs [n, ...] and labels [n] "
            f"(got {tuple(x.shape)} and {tuple(y.shape)})"
        )
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"{option}: need inputs [n, ...] and labels [n] "
            f"(got {tuple(x.shape)} and {tuple(y.shape)}): "
            f"{x.shape[0]} inputs but {y.shape[0]} labels"
        )
    if x.shape[0] == 0:
        raise InputError(f"{option}: the data set is empty")
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise InputError(
            f"{option}: inputs contain NaN or infinite values (first at sample {first})"
        )
    return x, y.long()
