"""Square attack (Andriushchenko et al. 2020), linf: score-based random search, no gradients.

Starting from vertical stripes of +-eps, each iteration proposes, for every sample still
standing, a square window (its side shrinking on a fixed schedule) set to a random +-eps per
channel, and keeps the proposal when it lowers the margin loss. It reads only the model's scores,
so it is blind to gradient masking: a black-box check on the white-box attacks.

References:
    M. Andriushchenko, F. Croce, N. Flammarion, M. Hein. Square Attack: a query-efficient
    black-box adversarial attack via random search. ECCV 2020. arXiv:1912.00049.

"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from mlsec.attacks.base import Attack, Perturbation, Problem
from mlsec.attacks.registry import register_attack
from mlsec.errors import InputError
from mlsec.threat import Norm

__all__ = ["Square", "square_fraction"]

# Fractions of the iterations (in ten-thousandths) after which the window's area halves.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, total: int) -> float:
    """The fraction of pixels the window covers at ``iteration`` of ``total`` (the paper's rule).

    Example:
        >>> [square_fraction(0.8, i, 1000) for i in (0, 5, 100, 900)]
        [0.8, 0.4, 0.05, 0.0015625]

    """
    at = int(iteration / total * 10000)
    return p_init / 2 ** sum(at > h for h in _HALVINGS)


@register_attack("square")
@dataclass(frozen=True, kw_only=True)
class Square(Attack):
    """Square attack, linf, on the margin loss.

    Args:
        queries: forward passes per sample at most (the initialisation counts as one).
        p_init: initial fraction of pixels in a window (0.8 in AutoAttack).

    Example:
        >>> import mlsec
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> model = mlsec.zoo.load("mnist-cnn")
        >>> result = Square(eps=0.3, queries=300).run(model, x[:16], y[:16])
        >>> bool((result.x_adv - x[:16]).abs().max() <= 0.3 + 1e-6)
        True

    """

    norms: ClassVar[tuple[Norm, ...]] = ("linf",)  # the l2 version is not implemented yet
    gradient_free: ClassVar[bool] = True

    queries: int = 5000
    p_init: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.queries, int) or isinstance(self.queries, bool) or self.queries < 1:
            raise InputError(f"queries must be an integer >= 1 (got {self.queries!r})")
        if not isinstance(self.p_init, int | float) or not 0 < self.p_init <= 1:
            raise InputError(f"p_init must lie in (0, 1] (got {self.p_init!r})")

    def _perturb(self, problem: Problem) -> Perturbation:
        x = problem.x
        if x.dim() != 4:
            raise InputError(
                f"Square needs images [batch, channels, height, width] (got {tuple(x.shape)})"
            )
        batch, channels, height, width = x.shape
        gen, eps = problem.generator, problem.eps
        labels = problem.labels
        targeted = problem.target is not None

        def margin(logits: torch.Tensor) -> torch.Tensor:
            z = logits.float()
            own = z.gather(1, labels[:, None]).squeeze(1)
            other = z.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
            # Below zero means success: the target on top, or the true class overtaken.
            return other - own if targeted else own - other

        with torch.no_grad():
            signs = torch.randint(0, 2, (batch, channels, 1, width), generator=gen, device=x.device)
            delta = (2 * signs - 1).to(x.dtype) * eps
            x_adv = problem.clip(x, x + delta)
            logits = problem.forward(x_adv)
            loss = margin(logits)
            rows = torch.arange(height, device=x.device).view(1, 1, height, 1)
            cols = torch.arange(width, device=x.device).view(1, 1, 1, width)
            for i in range(self.queries - 1):
                if i % 50 == 49 and not bool((loss >= 0).any()):
                    break  # every sample succeeded (checked now and then: it waits on the device)
                area = square_fraction(self.p_init, i, self.queries) * height * width
                side = min(max(round(math.sqrt(area)), 1), height - 1)
                top = torch.randint(
                    0, height - side + 1, (batch, 1, 1, 1), generator=gen, device=x.device
                )
                left = torch.randint(
                    0, width - side + 1, (batch, 1, 1, 1), generator=gen, device=x.device
                )
                window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
                flip = torch.randint(0, 2, (batch, channels, 1, 1), generator=gen, device=x.device)
                proposal = torch.where(window, (2 * flip - 1).to(x.dtype) * eps, delta)
                candidate = problem.clip(x, x + proposal)
                new_logits = problem.forward(candidate)
                new_loss = margin(new_logits)
                # Only samples still standing move, and only to a lower margin.
                accept = (new_loss < loss) & (loss >= 0)
                delta = torch.where(accept.view(-1, 1, 1, 1), proposal, delta)
                x_adv = torch.where(accept.view(-1, 1, 1, 1), candidate, x_adv)
                logits = torch.where(accept[:, None], new_logits, logits)
                loss = torch.where(accept, new_loss, loss)
        return Perturbation(x_adv=x_adv, logits=logits, queries=self.queries)
