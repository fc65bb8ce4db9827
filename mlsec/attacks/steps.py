"""Step helpers shared by the gradient attacks: folding, success, per-sample state, best fold.

Restarts and target classes are folded into the batch (row ``f * batch + i`` is sample ``i`` in
fold ``f``); these helpers fold, test success on logits the step already computed, and choose
each sample's best fold at the end.
"""

from __future__ import annotations

import torch

__all__ = ["best_of_folds", "first_success_first", "fold", "per_sample", "success_mask"]


def fold(t: torch.Tensor, folds: int) -> torch.Tensor:
    """``t`` repeated ``folds`` times along the batch dimension (``t`` itself for one fold).

    Example:
        >>> fold(torch.tensor([1, 2]), 3).tolist()
        [1, 2, 1, 2, 1, 2]

    """
    return t if folds == 1 else t.repeat(folds, *([1] * (t.dim() - 1)))


def per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample ``[B]`` tensor viewed to broadcast against ``like`` ``[B, ...]``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def success_mask(logits: torch.Tensor, labels: torch.Tensor, *, targeted: bool) -> torch.Tensor:
    """Bool per sample: predicted ``labels`` (targeted), or anything but ``labels`` (untargeted).

    Example:
        >>> logits = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
        >>> success_mask(logits, torch.tensor([0, 0]), targeted=False).tolist()
        [False, True]

    """
    predicted = logits.argmax(dim=1)
    return predicted == labels if targeted else predicted != labels


def first_success_first(found: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """A score per row that ranks every successful row first, the others by their loss."""
    return torch.where(found, torch.full_like(loss, float("inf")), loss)


def best_of_folds(score: torch.Tensor, folds: int, batch: int) -> torch.Tensor:
    """Row indices, one per sample: the fold with the highest ``score`` (the first on ties).

    Example:
        >>> best_of_folds(torch.tensor([0.0, 5.0, 1.0, 2.0]), folds=2, batch=2).tolist()
        [2, 1]

    """
    pick = score.view(folds, batch).argmax(dim=0)
    return pick * batch + torch.arange(batch, device=score.device)
