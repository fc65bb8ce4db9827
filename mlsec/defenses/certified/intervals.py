"""Interval bound propagation (IBP) for linf balls: sound bounds on a network's logits.

A box ``lower <= x <= upper`` is pushed through the network layer by layer (Gowal et al. 2018):
an affine layer maps its centre ``mu`` and radius ``r`` to ``W mu + b`` and ``|W| r``; a monotone
layer (ReLU, max or average pooling, the model's own normalisation) maps the lower and the upper
end separately. The result contains the network's output for every input in the box, so a sample
whose worst-case margin is positive is *verified*: no perturbation within eps changes its class.
An attack can only show that a sample is not robust; a verified sample is a lower bound on the
robust accuracy that no attack may break.

The network must be an ``nn.Sequential`` (nested, possibly inside :class:`mlsec.Normalized`) of
Linear, Conv2d, ReLU, Flatten, BatchNorm (eval mode), AvgPool2d, MaxPool2d and Identity layers;
:func:`check_bounded` names the first layer it cannot bound.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> x = torch.rand(5, 1, 2, 2)
    >>> lower, upper = linf_bounds(model, x, 0.1)
    >>> bool((lower <= model(x)).all() and (model(x) <= upper).all())
    True

References:
    S. Gowal, K. Dvijotham, R. Stanforth, R. Bunel, C. Qin, J. Uesato, R. Arandjelovic, T. Mann,
    P. Kohli. On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust
    Models. arXiv:1810.12715, 2018.

"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mlsec.core.normalize import Normalized
from mlsec.core.validation import check_bounds, check_eps
from mlsec.errors import InputError

__all__ = ["check_bounded", "interval_bounds", "linf_bounds", "margin_bounds", "verified"]

SUPPORTED = (
    "Linear, Conv2d, ReLU, Flatten, BatchNorm (eval mode), AvgPool, MaxPool, mlsec.Normalized, "
    "nn.Sequential"
)

# Layers whose bounds are the layer applied to each end of the box (monotone non-decreasing).
_MONOTONE = (nn.ReLU, nn.Flatten, nn.Identity, nn.AvgPool2d, nn.MaxPool2d)
_AFFINE = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
_CONTAINERS = (nn.Sequential, Normalized)

Box = tuple[torch.Tensor, torch.Tensor]


def _own_forward(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    """Whether ``module`` is one of ``kinds`` and computes what that kind computes."""
    return any(isinstance(module, kind) and type(module).forward is kind.forward for kind in kinds)


def _problem(module: nn.Module) -> str | None:
    """Why IBP cannot bound ``module`` (a supported kind), or ``None``."""
    if isinstance(module, nn.MaxPool2d) and module.return_indices:
        return "MaxPool2d with return_indices=True returns indices, not a tensor"
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        if module.training:
            return "BatchNorm in train mode normalises with batch statistics; call model.eval()"
        if module.running_mean is None or module.running_var is None:
            return "BatchNorm without running statistics normalises with batch statistics"
    return None


def _steps(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The model's layers in the order its forward applies them, with their dotted names.

    A :class:`Normalized` yields itself (its normalisation), then its inner model's layers.
    """
    if _own_forward(model, (nn.Sequential,)):
        for name, child in model.named_children():
            yield from _steps(child, f"{prefix}{name}.")
        return
    yield prefix.rstrip("."), model
    if _own_forward(model, (Normalized,)):
        assert isinstance(model, Normalized)
        yield from _steps(model.model, f"{prefix}model.")


def _checked_steps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    steps = list(_steps(model))
    for position, layer in steps:
        kind = type(layer).__name__
        name = f"layer {position}" if position else "the model"
        if _own_forward(layer, _MONOTONE + _AFFINE + (Normalized,)):
            problem = _problem(layer)
            if problem is not None:
                raise InputError(f"interval bounds cannot pass through {name} ({kind}): {problem}")
        elif any(True for _ in layer.children()):
            raise InputError(
                f"interval bounds cannot pass through {name} ({kind}, a module with its own "
                f"forward); IBP needs the model as nn.Sequential of {SUPPORTED}"
            )
        else:
            raise InputError(
                f"interval bounds cannot pass through {name} ({kind}) of the model; "
                f"supported: {SUPPORTED}"
            )
    return steps


def check_bounded(model: nn.Module) -> None:
    """Raise :class:`InputError` naming the first layer interval bounds cannot pass through.

    Example:
        >>> check_bounded(nn.Sequential(nn.Linear(2, 2), nn.Dropout()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mlsec.errors.InputError: interval bounds cannot pass through layer 1 (Dropout) ...

    """
    _checked_steps(model)


def _affine(layer: nn.Module, lower: torch.Tensor, upper: torch.Tensor) -> Box:
    """Centre/radius form: ``mu' = layer(mu)``, ``r' = |W| r``."""
    mu = (upper + lower) / 2
    r = (upper - lower) / 2
    if isinstance(layer, nn.Linear):
        r = F.linear(r, layer.weight.abs())
    elif isinstance(layer, nn.Conv2d):
        # The module's own padding (mode, "same"), stride, dilation and groups, without the bias.
        r = layer._conv_forward(r, layer.weight.abs(), None)
    else:
        assert isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d)
        assert layer.running_var is not None
        scale = torch.rsqrt(layer.running_var + layer.eps)
        if layer.weight is not None:
            scale = scale * layer.weight.abs()
        r = r * scale.view((1, -1) + (1,) * (r.dim() - 2))
    mu = layer(mu)
    return mu - r, mu + r


def _propagate(steps: list[tuple[str, nn.Module]], lower: torch.Tensor, upper: torch.Tensor) -> Box:
    for _, layer in steps:
        if isinstance(layer, Normalized):
            shape = (1, -1) + (1,) * (lower.dim() - 2)
            mean = layer.mean.view(shape).to(lower.dtype)
            std = layer.std.view(shape).to(lower.dtype)
            lower, upper = (lower - mean) / std, (upper - mean) / std
        elif isinstance(layer, _AFFINE):
            lower, upper = _affine(layer, lower, upper)
        else:
            lower, upper = layer(lower), layer(upper)
    return lower, upper


def interval_bounds(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor) -> Box:
    """Elementwise bounds of ``model(x)`` for every ``x`` with ``lower <= x <= upper``.

    Differentiable in the model's parameters (IBP training backpropagates through it).

    Args:
        model: an ``nn.Sequential`` of supported layers (:func:`check_bounded`).
        lower: the box's lower ends, ``[B, ...]``, on the model's device.
        upper: the box's upper ends, the same shape, ``>= lower``.

    Returns:
        ``(lower, upper)`` of the model's outputs, each shaped like ``model(x)``.

    """
    steps = _checked_steps(model)
    if not isinstance(lower, torch.Tensor) or not isinstance(upper, torch.Tensor):
        raise InputError("lower and upper must be tensors")
    if lower.shape != upper.shape:
        raise InputError(
            f"lower and upper must have the same shape (got {tuple(lower.shape)} and "
            f"{tuple(upper.shape)})"
        )
    if bool((lower > upper).any()):
        raise InputError("the box is empty: lower exceeds upper somewhere; give lower <= upper")
    return _propagate(steps, lower, upper)


def _ball(x: torch.Tensor, eps: float, bounds: tuple[float, float]) -> Box:
    check_eps(eps)
    check_bounds(bounds)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError("x must be a floating-point tensor of inputs")
    low, high = bounds
    return (x - eps).clamp(low, high), (x + eps).clamp(low, high)


def linf_bounds(
    model: nn.Module, x: torch.Tensor, eps: float, *, bounds: tuple[float, float] = (0.0, 1.0)
) -> Box:
    """:func:`interval_bounds` over the linf ball of radius ``eps`` around ``x``, within ``bounds``.

    Args:
        model: an ``nn.Sequential`` of supported layers.
        x: inputs ``[B, ...]``.
        eps: the ball's radius, in input units (``>= 0``).
        bounds: ``(low, high)`` every input value lies in.

    Returns:
        ``(lower, upper)`` of the model's outputs over the ball.

    """
    lower, upper = _ball(x, eps, bounds)
    return interval_bounds(model, lower, upper)


def _split_last(
    steps: list[tuple[str, nn.Module]],
) -> tuple[list[tuple[str, nn.Module]], nn.Module]:
    body = list(steps)
    while body and isinstance(body[-1][1], nn.Identity):
        body.pop()
    return body[:-1], body[-1][1] if body else nn.Identity()


def margin_bounds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Lower bounds of ``logit[y] - logit[j]`` over the linf ball, for every class ``j``.

    The last Linear layer is folded into the margin (elision, Gowal et al. 2018 sec. 3): the bound
    of ``(W[y] - W[j]) h + b[y] - b[j]`` over the box of ``h`` is tighter than the difference of
    the logits' intervals. A model that does not end in a Linear layer gets the latter.

    Args:
        model: an ``nn.Sequential`` of supported layers.
        x: inputs ``[B, ...]``.
        y: their labels, int64 ``[B]``.
        eps: the ball's radius, in input units.
        bounds: ``(low, high)`` every input value lies in.

    Returns:
        ``[B, C]``; column ``y`` is 0.

    """
    steps = _checked_steps(model)
    lower, upper = _ball(x, eps, bounds)
    body, last = _split_last(steps)
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point():
        raise InputError(f"y must be integer labels of shape ({x.shape[0]},)")
    if not isinstance(last, nn.Linear):
        low, high = _propagate(steps, lower, upper)
        _check_labels(y, low.shape[-1])
        margin = low.gather(1, y[:, None]) - high
    else:
        low, high = _propagate(body, lower, upper)
        _check_labels(y, last.out_features)
        mu, r = (high + low) / 2, (high - low) / 2
        w_diff = last.weight[y][:, None, :] - last.weight[None]  # [B, C, H]
        margin = torch.einsum("bch,bh->bc", w_diff, mu) - torch.einsum(
            "bch,bh->bc", w_diff.abs(), r
        )
        if last.bias is not None:
            margin = margin + last.bias[y][:, None] - last.bias[None]
    return margin.scatter(1, y[:, None], 0.0)


def _check_labels(y: torch.Tensor, classes: int) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise InputError(
            f"labels must lie in [0, {classes - 1}] for a model with {classes} outputs"
        )


def verified(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Which samples IBP verifies: ``model(x') == y`` for every ``x'`` in the linf ball.

    Args:
        model: an ``nn.Sequential`` of supported layers, in eval mode.
        x: inputs ``[B, ...]``.
        y: their labels, int64 ``[B]``.
        eps: the ball's radius, in input units.
        bounds: ``(low, high)`` every input value lies in.

    Returns:
        bool ``[B]``: every margin bound ``logit[y] - logit[j]``, ``j != y``, is positive.

    """
    with torch.no_grad():
        margin = margin_bounds(model, x, y, eps, bounds=bounds)
        margin = margin.scatter(1, y[:, None], torch.inf)
        return (margin > 0).all(dim=1)
