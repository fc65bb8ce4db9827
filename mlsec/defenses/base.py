"""The Defense interface shared by purifiers (Defense-GAN, APE-GAN) and adversarial training.

A defense is configured by hyperparameters and learns in :meth:`Defense.fit`. What it learns lives
in one of two places: in a purifier's own networks (it then implements :meth:`Defense.purify`, and
:meth:`Defense.wrap` puts the purifier in front of a classifier), or in the classifier's weights
(adversarial training: :meth:`Defense.fit` trains the model itself, and :meth:`Defense.wrap`
returns it unchanged).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from mlsec.errors import InputError

__all__ = ["Defense"]


class Defense(abc.ABC):
    """Base class of every defense."""

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def fit(self, data: Any, **options: Any) -> Any:
        """Learn from ``data`` (an ``(x, y)`` pair, a Dataset or a DataLoader)."""

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs to purified inputs; only purifiers do this."""
        raise InputError(
            f"{type(self).__name__} does not purify inputs: its defense is in the model's weights"
        )

    @abc.abstractmethod
    def wrap(self, model: nn.Module) -> nn.Module:
        """The defended model: a plain ``nn.Module`` that attacks and the audit accept."""

    def params(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict (for logs, checkpoints and reports)."""
        if dataclasses.is_dataclass(self):
            return dataclasses.asdict(self)
        return {}
