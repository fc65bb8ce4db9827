"""Square attack (Andriushchenko et al. 2020), linf and l2: score-based random search, no gradients.

Each iteration proposes, for every sample still standing, a change confined to a square window
(its side shrinking on a fixed schedule) and keeps the proposal when it lowers the margin loss.

- linf: starts from vertical stripes of +-eps; a proposal sets one window (per sample) to a
  random +-eps per channel.
- l2: starts from a grid of square "bumps" (two half-squares of opposite sign whose weights fall
  off with the distance from their centre), scaled to norm eps; a proposal moves the mass of a
  second window into the first window, on top of a fresh bump, and rescales to norm eps again.

It reads only the model's scores, so it is blind to gradient masking: a black-box check on the
white-box attacks. Samples that succeed leave the batch (checked every ``_COMPACT`` iterations).

Every draw is a sample's own (:mod:`mlsec.core.keyed`: seed, index, restart, iteration), so a
sample's search does not depend on its batch. The reference implementation shares the l2
proposal's two windows and the bump's orientation across the batch; here each sample draws its
own.

References:
    M. Andriushchenko, F. Croce, N. Flammarion, M. Hein. Square Attack: a query-efficient
    black-box adversarial attack via random search. ECCV 2020. arXiv:1912.00049.

"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mlsec.attacks.base import Attack, Perturbation, Problem
from mlsec.attacks.registry import register_attack
from mlsec.core.keyed import SampleKeys
from mlsec.core.threat import Norm
from mlsec.core.validation import check_count, check_fraction
from mlsec.errors import InputError

__all__ = ["Square", "square_bump", "square_fraction"]

# Fractions of the iterations (in ten-thousandths) after which the window's area halves.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Samples that have succeeded leave the batch every this many iterations (each check waits on
# the device once).
_COMPACT = 10

_Start = Callable[[Problem, SampleKeys], torch.Tensor]
_Proposal = Callable[[Problem, SampleKeys, torch.Tensor, torch.Tensor, int], torch.Tensor]


def square_fraction(p_init: float, iteration: int, total: int) -> float:
    """The fraction of pixels the window covers at ``iteration`` of ``total`` (the paper's rule).

    Example:
        >>> [square_fraction(0.8, i, 1000) for i in (0, 5, 100, 900)]
        [0.8, 0.4, 0.05, 0.0015625]

    """
    at = int(iteration / total * 10000)
    return p_init / 2 ** sum(at > h for h in _HALVINGS)


def _half_bump(rows: int, cols: int) -> torch.Tensor:
    """A ``rows x cols`` block, heaviest in the middle, of unit l2 norm.

    A cell at Chebyshev distance ``d`` from the centre weighs ``sum_{k >= d} 1 / (k + 1)^2``.
    """
    reach = max(rows // 2, cols // 2) + 1
    weights = 1.0 / torch.arange(1, reach + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum of weights[d:]
    d_row = (torch.arange(rows) - rows // 2).abs()
    d_col = (torch.arange(cols) - cols // 2).abs()
    block = tail[torch.maximum(d_row[:, None], d_col[None, :])]
    return block / block.norm()


def square_bump(side: int, transpose: bool = False) -> torch.Tensor:
    """The l2 attack's ``side x side`` pattern: a positive half-square over a negative one.

    Unit l2 norm, zero sum for even halves; ``transpose`` turns it on its side.

    Example:
        >>> bump = square_bump(5)
        >>> round(float(bump.norm()), 6), bool(bump[:2].min() > 0), bool(bump[2:].max() < 0)
        (1.0, True, True)

    """
    top = side // 2
    pattern = (
        torch.cat([_half_bump(top, side), -_half_bump(side - top, side)])
        if top
        else (_half_bump(side, side))
    )
    pattern = pattern / pattern.norm()
    return pattern.T if transpose else pattern


@register_attack("square")
@dataclass(frozen=True, kw_only=True)
class Square(Attack):
    """Square attack on the margin loss, linf or l2.

    Args:
        queries: forward passes per sample at most (the initialisation counts as one).
        p_init: initial fraction of pixels in a window (0.8 in AutoAttack).
        restarts: searches from new random starts for the samples still standing; the lowest
            margin is kept.

    Example:
        >>> import mlsec
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> model = mlsec.zoo.load("mnist-cnn")
        >>> result = Square(eps=0.3, queries=300).run(model, x[:16], y[:16])
        >>> bool((result.x_adv - x[:16]).abs().max() <= 0.3 + 1e-6)
        True

    """

    gradient_free = True

    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("queries", self.queries)
        check_fraction("p_init", self.p_init, open_low=True)
        check_count("restarts", self.restarts)

    def _perturb(self, problem: Problem) -> Perturbation:
        x = problem.x
        if x.dim() != 4:
            raise InputError(
                f"Square needs images [batch, channels, height, width] (got {tuple(x.shape)})"
            )
        if min(x.shape[2:]) < 2:
            raise InputError(f"Square needs images at least 2x2 (got {tuple(x.shape[2:])})")
        first_call = problem.calls[0]
        with torch.no_grad():
            x_adv, logits, loss = self._search(problem)
            for restart in range(1, self.restarts):
                # A new search from a new random start, for the samples still standing: each
                # draws from its own restart's keys, and the model's calls are numbered from a
                # point that does not depend on when the previous search ran out of samples.
                idx = (loss >= 0).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                sub = dataclasses.replace(
                    problem,
                    x=x[idx],
                    y=problem.y[idx],
                    target=None if problem.target is None else problem.target[idx],
                    keys=problem.keys.restart(restart).select(idx),
                    calls=[first_call + restart * self.queries],
                )
                x_new, logits_new, loss_new = self._search(sub)
                better = loss_new < loss[idx]
                x_adv[idx] = torch.where(better.view(-1, 1, 1, 1), x_new, x_adv[idx])
                logits[idx] = torch.where(better[:, None], logits_new, logits[idx])
                loss[idx] = torch.where(better, loss_new, loss[idx])
        return Perturbation(x_adv=x_adv, logits=logits, queries=self.queries * self.restarts)

    def _search(self, problem: Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One run of the random search: examples, their logits and their margins.

        Every draw of a sample comes from its key (``problem.keys``) at the iteration's step, so
        a sample's search does not depend on the others in the working set.
        """
        x, keys = problem.x, problem.keys
        start, propose = self._moves(problem)
        x_best = problem.clip(x, x + start(problem, keys))
        logits = problem.forward(x_best, keys)
        loss = _margin(problem, logits, problem.labels)
        # The working set: the samples still standing at the last check, and their state.
        idx = torch.arange(len(x), device=x.device)
        xs, xs_best, zs, ls, labels, ks = x, x_best, logits, loss, problem.labels, keys
        for i in range(self.queries - 1):
            if i % _COMPACT == 0:
                if i:  # write the working set back before choosing a new one
                    x_best[idx], logits[idx], loss[idx] = xs_best, zs, ls
                idx = (loss >= 0).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                xs, xs_best, zs, ls = x[idx], x_best[idx], logits[idx], loss[idx]
                labels, ks = problem.labels[idx], keys.select(idx)
            candidate = propose(problem, ks, xs, xs_best, i)
            new_logits = problem.forward(candidate, ks)
            new_loss = _margin(problem, new_logits, labels)
            # Only samples still standing move, and only to a lower margin.
            accept = (new_loss < ls) & (ls >= 0)
            xs_best = torch.where(accept.view(-1, 1, 1, 1), candidate, xs_best)
            zs = torch.where(accept[:, None], new_logits, zs)
            ls = torch.where(accept, new_loss, ls)
        else:  # the budget ran out: write the working set back
            x_best[idx], logits[idx], loss[idx] = xs_best, zs, ls
        return x_best, logits, loss

    def _moves(self, problem: Problem) -> tuple[_Start, _Proposal]:
        """The start and the proposals of the problem's norm (one pair per norm of ``norms``)."""
        moves: dict[Norm, tuple[_Start, _Proposal]] = {
            "linf": (self._linf_start, self._linf_proposal),
            "l2": (self._l2_start, self._l2_proposal),
        }
        return moves[problem.geometry.norm]

    def _side(self, problem: Problem, iteration: int, *, smallest: int) -> int:
        height, width = problem.x.shape[2:]
        area = square_fraction(self.p_init, iteration, self.queries) * height * width
        return min(max(round(math.sqrt(area)), smallest), min(height, width) - 1)

    # linf ------------------------------------------------------------------------------------

    def _linf_start(self, problem: Problem, keys: SampleKeys) -> torch.Tensor:
        _, channels, _, width = problem.x.shape
        signs = _signs(keys, (channels, 1, width), "square/start/sign", 0, problem.x.dtype)
        return signs * problem.eps

    def _linf_proposal(
        self,
        problem: Problem,
        keys: SampleKeys,
        x: torch.Tensor,
        x_best: torch.Tensor,
        iteration: int,
    ) -> torch.Tensor:
        channels, height, width = x.shape[1:]
        side = self._side(problem, iteration, smallest=1)
        window, _, _ = _window(keys, (height, width), side, "square/window", iteration)
        corner = _signs(keys, (channels, 1, 1), "square/sign", iteration, x.dtype) * problem.eps
        return problem.clip(x, torch.where(window, x + corner, x_best))

    # l2 --------------------------------------------------------------------------------------

    def _l2_start(self, problem: Problem, keys: SampleKeys) -> torch.Tensor:
        batch, channels, height, width = problem.x.shape
        side = max(min(height, width) // 5, 1)
        delta = torch.zeros_like(problem.x)
        top0, left0 = (height - 5 * side) // 2, (width - 5 * side) // 2
        tiles = [
            (top, left)
            for top in range(max(top0, 0), height - side + 1, side)
            for left in range(max(left0, 0), width - side + 1, side)
        ]
        dtype = problem.x.dtype
        signs = _signs(keys, (len(tiles), channels), "square/start/sign", 0, dtype)
        flips = keys.integers(2, (len(tiles),), stream="square/start/transpose").bool()
        bump = square_bump(side).to(device=problem.x.device, dtype=dtype)
        for tile, (top, left) in enumerate(tiles):
            # Each sample's bump, on its side where its own draw says so.
            pattern = torch.where(flips[:, tile].view(-1, 1, 1, 1), bump.T, bump)
            delta[:, :, top : top + side, left : left + side] = (
                signs[:, tile].view(batch, channels, 1, 1) * pattern
            )
        return _to_l2(delta, problem.eps)

    def _l2_proposal(
        self,
        problem: Problem,
        keys: SampleKeys,
        x: torch.Tensor,
        x_best: torch.Tensor,
        iteration: int,
    ) -> torch.Tensor:
        channels, height, width = x.shape[1:]
        side = self._side(problem, iteration, smallest=3)
        side -= 1 - side % 2  # odd, so the bump has a centre row
        # Per sample, two windows: the first takes the mass of both (the reference
        # implementation draws one pair for the whole batch; here each sample draws its own).
        first, row, col = _window(keys, (height, width), side, "square/window", iteration)
        second, _, _ = _window(keys, (height, width), side, "square/window2", iteration)
        delta = x_best - x
        norm_image = _norms(delta)
        norm_windows = _norms(delta * (first | second))
        inside = delta * first
        old = inside / (1e-12 + inside.pow(2).sum(dim=(2, 3), keepdim=True).sqrt())
        flips = keys.integers(2, (1, 1, 1), stream="square/transpose", step=iteration).bool()
        bump = square_bump(side).to(device=x.device, dtype=x.dtype)
        # The bump laid over each sample's first window: its cell (row, col) of the window.
        placed = torch.where(flips, bump.T[row, col], bump[row, col]) * first
        signs = _signs(keys, (channels, 1, 1), "square/sign", iteration, x.dtype)
        new = signs * placed + old
        # The window takes the mass of both windows plus its share of what the image has left.
        mass = ((problem.eps**2 - norm_image**2).clamp(min=0) / channels + norm_windows**2).sqrt()
        new = new / (1e-12 + new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()) * mass
        delta = torch.where(first, new, torch.where(second, torch.zeros_like(delta), delta))
        return problem.clip(x, x + _to_l2(delta, problem.eps))


def _signs(
    keys: SampleKeys, shape: tuple[int, ...], stream: str, step: int, dtype: torch.dtype
) -> torch.Tensor:
    """Random +-1 per row of ``keys``, ``[B, *shape]``."""
    return (2 * keys.integers(2, shape, stream=stream, step=step) - 1).to(dtype)


def _window(
    keys: SampleKeys, size: tuple[int, int], side: int, stream: str, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random ``side x side`` window per row of ``keys`` in an image of ``size``.

    Returns its mask ``[B, 1, H, W]`` and, for every pixel, its row and column within the
    window (clamped into ``[0, side)`` outside it), ``[B, 1, H, 1]`` and ``[B, 1, 1, W]``.
    """
    height, width = size
    top = keys.integers(height - side + 1, (1, 1, 1), stream=stream + "/top", step=step)
    left = keys.integers(width - side + 1, (1, 1, 1), stream=stream + "/left", step=step)
    rows = torch.arange(height, device=keys.device).view(1, 1, height, 1) - top
    cols = torch.arange(width, device=keys.device).view(1, 1, 1, width) - left
    window = (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)
    return window, rows.clamp(0, side - 1), cols.clamp(0, side - 1)


def _margin(problem: Problem, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample: below zero means success (the target on top, or the true class overtaken)."""
    z = logits.float()
    own = z.gather(1, labels[:, None]).squeeze(1)
    other = z.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return other - own if problem.target is not None else own - other


def _norms(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _to_l2(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``delta`` rescaled to l2 norm ``eps`` per sample."""
    return delta / (_norms(delta) + 1e-12) * eps
