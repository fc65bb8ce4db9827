"""Gaussian data augmentation (Cohen et al. 2019): the training that makes smoothing certify.

A randomized-smoothing certificate (:class:`mlsec.defenses.certified.smoothing.Smoothing`) is
only as large as the base model's accuracy under the noise it is smoothed with; training on
``x + sigma * N(0, I)`` at the same ``sigma`` is what Cohen et al. do. The noise is not clipped
to the input bounds (nor is it in the paper), and it is keyed by sample
(:class:`mlsec.core.keyed.SampleKeys`): a sample's noise at a training step does not depend on
the batch it is in.

Reference:
    J. Cohen, E. Rosenfeld, J. Z. Kolter. Certified Adversarial Robustness via Randomized
    Smoothing. ICML 2019. arXiv:1902.02918.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mlsec.core.keyed import SampleKeys
from mlsec.core.threat import Norm
from mlsec.core.validation import check_number
from mlsec.defenses.training.methods import METHODS, AdversarialTraining

__all__ = ["GaussianTraining"]


@METHODS.register("gaussian")
@dataclass(frozen=True, kw_only=True)
class GaussianTraining(AdversarialTraining):
    """Training on Gaussian-noised inputs ``x + sigma * N(0, I)`` (Cohen et al. 2019).

    ``eps`` and ``norm`` (``"l2"`` by default: smoothing certifies l2 radii) set only the
    held-out PGD evaluation of each epoch; the training itself sees noise, not attacks.

    Args:
        sigma: the noise's standard deviation; smooth with the same ``sigma``.

    Example:
        >>> import mlsec
        >>> from mlsec.defenses import TrainConfig
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> model = mlsec.zoo.architectures.mnist_cnn()
        >>> result = GaussianTraining(sigma=0.25, eps=0.5).fit(
        ...     (x[:64], y[:64]), model=model, config=TrainConfig(epochs=1, batch_size=32))
        >>> len(result.history)
        1

    """

    name: ClassVar[str] = "gaussian"

    norm: Norm = "l2"
    sigma: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("sigma", self.sigma)

    def noise(
        self, x: torch.Tensor, *, seed: int, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The batch's noise ``sigma * N(0, I)``, shaped like ``x``, keyed by (seed, index).

        Args:
            x: the batch.
            seed: the step's seed.
            index: the samples' positions in the training set (default ``0 .. B-1``).

        Returns:
            A tensor like ``x`` (its dtype and device).

        """
        if index is None:
            index = torch.arange(x.shape[0], device=x.device)
        keys = SampleKeys.of(seed, index.to(x.device))
        draws = keys.normal(tuple(x.shape[1:]), stream="training/gaussian", dtype=x.dtype)
        return self.sigma * draws

    def training_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        seed: int,
        index: torch.Tensor | None = None,
        attacked: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on ``x`` plus keyed Gaussian noise (not clipped to the bounds)."""
        logits = model(x + self.noise(x, seed=seed, index=index))
        return F.cross_entropy(logits, y), logits
