"""Turning what a user names on the command line into a model and data tensors."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mlsec import datasets, zoo
from mlsec.errors import InputError

__all__ = ["as_tensors", "load_data", "load_entry_point", "load_model"]

BUNDLED_DATA = {"mnist-sample": datasets.mnist_sample}


def load_entry_point(spec: str, option: str) -> Any:
    """Import ``module:attribute`` and return the attribute, called if it is a function.

    The current directory is importable, as for ``python -m``. Failures raise :class:`InputError`
    naming ``option``.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise InputError(f"{option} must look like module:function (got {spec!r})")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may fail in any way while importing
        raise InputError(
            f"{option}: cannot import module {module_name!r} ({type(error).__name__}: {error})"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise InputError(f"{option}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if isinstance(target, nn.Module) or not callable(target):
        return target
    try:
        return target()
    except Exception as error:  # user code: report it in one line
        raise InputError(f"{option}: {spec}() raised {type(error).__name__}: {error}") from None


def load_model(spec: str) -> tuple[nn.Module, str]:
    """A bundled model name or ``module:function`` returning an ``nn.Module``; and its name."""
    if ":" not in spec:
        return zoo.load(spec), spec
    model = load_entry_point(spec, "--model")
    if not isinstance(model, nn.Module):
        raise InputError(
            f"--model: {spec} must return a torch.nn.Module (got {type(model).__name__})"
        )
    return model, spec


def load_data(spec: str) -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
    """``mnist-sample`` or ``module:function`` returning a Dataset, a DataLoader or ``(x, y)``."""
    if ":" not in spec:
        if spec not in BUNDLED_DATA:
            raise InputError(
                f"--data: unknown data set {spec!r}; "
                f"use {', '.join(BUNDLED_DATA)} or module:function"
            )
        return BUNDLED_DATA[spec](), spec
    return as_tensors(load_entry_point(spec, "--data"), "--data"), spec


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
    """Turn a Dataset, a DataLoader or an ``(x, y)`` pair into ``(x, y)`` tensors, checked."""
    try:
        x, y = _collect(data, option)
    except (TypeError, ValueError, RuntimeError) as error:
        # Items torch cannot turn into tensors: PIL images, ragged shapes, strings, ...
        raise InputError(
            f"{option}: cannot turn the data into tensors ({type(error).__name__}: {error}); "
            "give tensors of equal shape, e.g. images after ToTensor()"
        ) from None
    if not x.is_floating_point():
        raise InputError(
            f"{option}: inputs must be floating point within the bounds (got {x.dtype}); "
            "for uint8 images divide by 255"
        )
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"{option}: labels must be integers (got {y.dtype})")
    if y.dim() != 1 or x.dim() < 2 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"{option}: need inputs [n, ...] and labels [n] "
            f"(got {tuple(x.shape)} and {tuple(y.shape)})"
        )
    if x.shape[0] == 0:
        raise InputError(f"{option}: the data set is empty")
    return x, y.long()
