"""IBP training (Gowal et al. 2018): fit the clean logits and the interval-bound worst case.

The loss mixes the clean cross-entropy with the cross-entropy of the worst-case logits that
interval bound propagation gives over the linf ball (:func:`~mlsec.defenses.certified.intervals.
margin_bounds`, with the last layer elided): a network trained on it is verifiable by the same
bounds. Both eps and the weight ``kappa`` of the clean loss ramp: eps from 0 to its final value
over ``TrainConfig.eps_ramp`` epochs (per step, linearly; the loop's schedule), and ``kappa`` from
1 to its final value alongside it, as in the paper.

References:
    S. Gowal, K. Dvijotham, R. Stanforth, R. Bunel, C. Qin, J. Uesato, R. Arandjelovic, T. Mann,
    P. Kohli. On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust
    Models. arXiv:1810.12715, 2018.

"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mlsec.core.threat import geometry
from mlsec.core.validation import check_fraction, check_number
from mlsec.defenses.certified.intervals import margin_bounds
from mlsec.defenses.training.methods import METHODS, AdversarialTraining
from mlsec.errors import InputError

__all__ = ["IBPTraining"]


@METHODS.register("ibp")
@dataclass(frozen=True, kw_only=True)
class IBPTraining(AdversarialTraining):
    """IBP training: ``kappa_t * CE(clean) + (1 - kappa_t) * CE(worst-case logits)``.

    The worst-case logits are ``-margin_bounds(model, x, y, train_eps)``: class ``y`` at 0, every
    other class at minus the lower bound of its margin. ``kappa_t = 1 - (1 - kappa) * eps_t / eps``
    follows whatever eps ramp the training config sets (1 at the start, ``kappa`` at full eps).
    The model must be one :func:`~mlsec.defenses.certified.intervals.check_bounded` accepts; the
    held-out check of each epoch is the loop's PGD at ``eps`` (an upper bound), not IBP.

    Args:
        kappa: the final weight of the clean loss, in [0, 1] (Gowal et al. use 0.5).
        train_eps_factor: the bounds are trained at ``train_eps_factor * eps_t`` (``>= 1``):
            Gowal et al. train with 1.1-2x the evaluation eps, which buys verified accuracy at
            ``eps`` for some clean accuracy. ``eps`` itself (what the held-out PGD and the
            verification use) is unchanged.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        >>> x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
        >>> loss, logits = IBPTraining(eps=0.1).training_loss(model, x, y, eps=0.1, seed=0)
        >>> loss.requires_grad, tuple(logits.shape)
        (True, (4, 10))

    """

    name: ClassVar[str] = "ibp"

    kappa: float = 0.5
    train_eps_factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if geometry(self.norm).art_norm != math.inf:
            raise InputError(
                f"IBP training bounds linf balls only (got norm {self.norm!r}); use norm='linf'"
            )
        check_fraction("kappa", self.kappa)
        check_number("train_eps_factor", self.train_eps_factor)
        if self.train_eps_factor < 1:
            raise InputError(
                f"train_eps_factor must be >= 1 (got {self.train_eps_factor!r}); "
                "the bounds are trained at least at eps"
            )

    def kappa_at(self, eps: float) -> float:
        """The clean loss's weight at training eps ``eps`` (1 at 0, ``kappa`` at full eps)."""
        progress = min(1.0, eps / self.eps) if self.eps > 0 else 1.0
        return 1.0 - (1.0 - self.kappa) * progress

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
        """The mixed loss and the clean logits; ``seed``, ``index`` and ``attacked`` are unused.

        (Nothing is random: there is no attack.)
        """
        kappa = self.kappa_at(eps)
        logits = model(x)
        bounded = model if attacked is None else attacked
        worst = -margin_bounds(bounded, x, y, eps * self.train_eps_factor, bounds=self.bounds)
        loss = kappa * F.cross_entropy(logits, y) + (1.0 - kappa) * F.cross_entropy(worst, y)
        return loss, logits
