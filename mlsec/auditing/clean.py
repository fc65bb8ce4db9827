"""The boundary and the clean pass: data checked once, then the model's logits on the clean set.

The whole data set is checked here, on the device it came on (no copy to the model's device just
to check it): types, shapes, finite values, the bounds, and the model and device on one sample.
After that the survivors chain hands the attacks batches it knows to be well formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlsec.core import model as _model
from mlsec.core.data import as_tensors
from mlsec.core.progress import Tracker
from mlsec.core.validation import check_batch, run_model
from mlsec.errors import InputError

__all__ = ["CleanPass", "check_data", "clean_pass"]


def check_data(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], bounds: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` checked once for ``model`` within ``bounds``; raises :class:`InputError`."""
    x, y = as_tensors(data)
    low, high = float(x.min()), float(x.max())
    if low < bounds[0] - 1e-6 or high > bounds[1] + 1e-6:
        raise InputError(
            f"inputs range over [{low:.4g}, {high:.4g}], outside the bounds {bounds}; scale them "
            "into the bounds, or set bounds (and wrap a normalizing model with mlsec.Normalized)"
        )
    device = _model.device_of(model)
    check_batch(model, x[:1].to(device), y[:1].to(device), None, bounds)
    return x, y


@dataclass(frozen=True)
class CleanPass:
    """The model on the clean data: logits ``[n, classes]`` (float32, CPU) and the correct mask."""

    logits: torch.Tensor
    correct: torch.Tensor

    @property
    def accuracy(self) -> float:
        """Clean accuracy."""
        return int(self.correct.sum()) / len(self.correct)


def clean_pass(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    tracker: Tracker,
    name: str = "model",
    description: str = "clean",
) -> CleanPass:
    """Logits of ``model`` on ``x`` in batches; checks them and the labels against them."""
    device = _model.device_of(model)
    dtype = _model.compute_dtype(model, x)
    stage = tracker.stage(description, total=len(x))
    outputs = []
    with _model.frozen(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            out = run_model(model, x[start : start + batch_size].to(device, dtype), name)
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise InputError("the model must return logits [batch, classes]")
            outputs.append(out.float().cpu())
            stage.advance(len(out))
    stage.finish()
    logits = torch.cat(outputs)
    if not bool(torch.isfinite(logits).all()):
        raise InputError("the model returned NaN or infinite logits on the clean data")
    classes = logits.shape[1]
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise InputError(
            f"labels lie in [{low}, {high}] but the model has {classes} outputs; "
            f"labels must lie in [0, {classes - 1}]"
        )
    return CleanPass(logits=logits, correct=logits.argmax(dim=1) == y.cpu())
