"""The fast gradient sign method (Goodfellow et al. 2015): one projected gradient step of size eps.

With ``norm="l2"`` it is the fast gradient method (FGM): one step of size eps along the
l2-normalised gradient.

References:
    I. Goodfellow, J. Shlens, C. Szegedy. Explaining and Harnessing Adversarial Examples. ICLR 2015.
    arXiv:1412.6572.

"""

from __future__ import annotations

from dataclasses import dataclass

from mlsec.attacks.base import Attack, Perturbation, Problem
from mlsec.attacks.pgd import projected_gradient_ascent
from mlsec.attacks.registry import register_attack

__all__ = ["FGSM"]


@register_attack("fgsm")
@dataclass(frozen=True, kw_only=True)
class FGSM(Attack):
    """One gradient step of size eps from the clean input, no random start.

    Example:
        >>> import mlsec
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> result = FGSM(eps=0.3).run(mlsec.zoo.load("mnist-cnn"), x[:100], y[:100])
        >>> result.queries, result.x_adv.shape
        (2, torch.Size([100, 1, 28, 28]))

    References:
        Goodfellow et al., Explaining and Harnessing Adversarial Examples, ICLR 2015.

    """

    def _perturb(self, problem: Problem) -> Perturbation:
        return projected_gradient_ascent(
            problem, steps=1, step_size=self.eps, random_start=False, restarts=1
        )
