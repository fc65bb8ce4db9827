"""Helpers that touch the user's model: freezing it for an attack, finding its dtype and device."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mlsec.errors import InputError


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with parameters' ``requires_grad`` off; restore both on exit.

    Every submodule's own training flag is restored, so a model with mixed modes comes back as it
    was; restoring happens in ``finally``, also when the body raises.
    """
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in grads:
            param.requires_grad_(False)
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
        for param, flag in grads:
            param.requires_grad_(flag)


def compute_dtype(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype ``model`` computes in: its first floating parameter's, else a float of ``x``."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer; the CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_materialized(model: nn.Module) -> None:
    """Raise :class:`InputError` if the model's weights are on the meta device (no values)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_meta:
            raise InputError(
                "the model's weights are on the meta device (shapes without values); load real "
                "weights into it first, e.g. model.load_state_dict(state, assign=True)"
            )


def check_device(model: nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`InputError` if the model's weights are not on ``x``'s device."""
    check_materialized(model)
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.device != x.device:
            raise InputError(
                f"the model is on {tensor.device} but the inputs are on {x.device}; "
                "move both to the same device"
            )
        return
