"""Projected gradient descent (Madry et al. 2018), linf and l2, with restarts folded into the batch.

References:
    A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu. Towards Deep Learning Models Resistant
    to Adversarial Attacks. ICLR 2018. arXiv:1706.06083.

"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from mlsec.attacks.base import Attack, Perturbation, Problem
from mlsec.attacks.registry import register_attack
from mlsec.attacks.steps import best_of_folds, first_success_first, fold, per_sample
from mlsec.core.keyed import SampleKeys
from mlsec.core.validation import check_count, check_number
from mlsec.errors import InputError

__all__ = ["PGD", "projected_gradient_ascent"]

# On the CPU, samples leave the batch once they succeed (see projected_gradient_ascent). The
# benchmarks turn this off to time the accelerator's code path on the CPU.
SHRINK_ON_CPU = True


Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class _Rows:
    """The rows of the folded batch still being attacked: indices, labels, sample keys, region."""

    def __init__(
        self,
        problem: Problem,
        x: torch.Tensor,
        labels: torch.Tensor,
        keys: SampleKeys,
        objective: Objective | None,
    ) -> None:
        self.problem, self.objective = problem, objective
        self.rows = torch.arange(x.shape[0], device=x.device)
        self.target = labels
        # The keys of the rows attacked, what a randomised model draws from for them.
        self.keys = keys
        # In linf the region is a box: one clamp to precomputed bounds per step.
        self.region = problem.region(x)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-row loss to maximise."""
        if self.objective is None:
            return self.problem.loss(logits, self.target)
        return self.objective(logits, self.rows, self.target)

    def step_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """The summed loss a gradient step differentiates."""
        if self.objective is None:
            return self.problem.total_loss(logits, self.target)
        return self.objective(logits, self.rows, self.target).sum()

    def keep(self, keep: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Drop the rows where ``keep`` is false; returns ``x_adv`` of the rows kept."""
        self.rows, self.target = self.rows[keep], self.target[keep]
        self.keys = self.keys.select(keep)
        self.region = self.region.select(keep)
        return x_adv[keep]


class _Kept:
    """Per row of the folded batch: the iterate it keeps, its logits, success and final loss."""

    def __init__(self, x_start: torch.Tensor, *, shrink: bool) -> None:
        total = x_start.shape[0]
        self.shrink = shrink
        self.found = torch.zeros(total, dtype=torch.bool, device=x_start.device)
        self.x = x_start.clone()
        self.logits: torch.Tensor | None = None
        self.final_loss = torch.full((total,), float("-inf"), device=x_start.device)

    def merge(
        self, buffer: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, value: torch.Tensor
    ) -> torch.Tensor:
        """``buffer`` with the rows being attacked replaced by ``value`` where ``mask``.

        While no sample has left the batch (always, off the CPU) the rows are all of them: a
        plain ``where`` then, as index_put over every row costs a sort on the accelerator.
        """
        mask = per_sample(mask, value)
        if not self.shrink:
            return torch.where(mask, value, buffer)
        buffer[rows] = torch.where(mask, value, buffer[rows])
        return buffer

    def found_at(self, rows: torch.Tensor) -> torch.Tensor:
        """Whether the rows being attacked have succeeded before."""
        return self.found[rows] if self.shrink else self.found

    def record(
        self, rows: torch.Tensor, x_now: torch.Tensor, logits: torch.Tensor, hit: torch.Tensor
    ) -> None:
        """Keep ``x_now`` for the rows that succeed (``hit``) for the first time."""
        if self.logits is None:
            self.logits = logits.new_zeros((self.found.shape[0], logits.shape[1]))
        new = hit & ~self.found_at(rows)
        self.x = self.merge(self.x, rows, new, x_now)
        self.logits = self.merge(self.logits, rows, new, logits)
        self.found = self.merge(self.found, rows, hit, torch.ones_like(hit))

    def finish(
        self, problem: Problem, active: _Rows, x_adv: torch.Tensor, *, last_iterate: bool
    ) -> None:
        """Score the last iterate; rows that never succeeded (all, with last_iterate) keep it."""
        with torch.no_grad():
            logits = problem.forward(x_adv, active.keys)
            loss_now = active.loss(logits).float()
        if self.shrink:
            self.final_loss[active.rows] = loss_now
        else:
            self.final_loss = loss_now
        self.record(active.rows, x_adv, logits, problem.succeeded(logits, active.target))
        assert self.logits is not None
        found_now = self.found_at(active.rows)
        missed = torch.ones_like(found_now) if last_iterate else ~found_now
        self.x = self.merge(self.x, active.rows, missed, x_adv)
        self.logits = self.merge(self.logits, active.rows, missed, logits)


def projected_gradient_ascent(
    problem: Problem,
    *,
    steps: int,
    step_size: float,
    random_start: bool,
    restarts: int,
    last_iterate: bool = False,
    objective: Objective | None = None,
) -> Perturbation:
    """Run ``steps`` projected steepest-ascent steps from ``restarts`` starts at once.

    Each sample keeps its first successful iterate (so the result is never weaker than the last
    iterate); a sample that never succeeds keeps the last iterate of the restart with the highest
    loss. With ``last_iterate`` every sample runs every step and keeps the last iterate of its
    highest-loss restart, as adversarial training wants (the highest loss, not the first fool).
    Each step is one forward and one input-gradient backward; success is read from the
    logits the step already computed. ``objective(logits, rows, labels)`` replaces the problem's
    loss; ``rows`` index the restart-folded batch, so per-sample references can follow samples
    that leave it.

    On an accelerator the batch keeps its shape and the loop never waits on the host. On the CPU,
    where there is no device queue to stall, a sample leaves the batch once it has succeeded: its
    result is fixed, so attacking it further is wasted work.
    """
    batch = problem.x.shape[0]
    x = fold(problem.x, restarts)
    geometry = problem.geometry
    # torch.full, not torch.tensor: a host-to-device copy would wait for the device.
    step = torch.full((), step_size, dtype=x.dtype, device=x.device)
    shrink = SHRINK_ON_CPU and x.device.type == "cpu" and not last_iterate
    # Row f * B + i is restart f of sample i: its draws, and the model's, come from its keys.
    keys = problem.keys.fold(restarts)
    active = _Rows(problem, x, fold(problem.labels, restarts), keys, objective)
    x_adv = x
    if random_start:
        x_adv = active.region.project(x + geometry.random_start(x, problem.eps, keys))
    # Which iterate each sample keeps; not needed when the last iterate of one start is the answer.
    kept = None if last_iterate and restarts == 1 else _Kept(x_adv, shrink=shrink)

    for _ in range(steps):
        x_adv, logits = problem.forward_for_gradient(x_adv, active.keys)
        (grad,) = torch.autograd.grad(active.step_loss(logits), x_adv)
        if not last_iterate:  # the last iterate needs no record of the ones before it
            assert kept is not None
            hit = problem.succeeded(logits.detach(), active.target)
            kept.record(active.rows, x_adv.detach(), logits.detach(), hit)
        x_adv = active.region.project(x_adv.detach() + step * geometry.ascent(grad))
        if shrink:
            x_adv = active.keep(~hit, x_adv)
            if active.rows.numel() == 0:
                break

    if kept is None:
        # Nothing to choose between: the last iterate is the answer, and the caller's final
        # forward (if it wants logits) is the only one.
        return Perturbation(x_adv=x_adv.detach(), logits=None, queries=steps)
    if active.rows.numel() > 0:
        kept.finish(problem, active, x_adv, last_iterate=last_iterate)
    assert kept.logits is not None
    # Per sample, the first restart that succeeded, else the one with the highest final loss.
    score = kept.final_loss if last_iterate else first_success_first(kept.found, kept.final_loss)
    chosen = best_of_folds(score, restarts, batch)
    return Perturbation(
        x_adv=kept.x[chosen], logits=kept.logits[chosen], queries=restarts * (steps + 1)
    )


@register_attack("pgd")
@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected gradient descent on the cross-entropy loss.

    Args:
        steps: gradient steps per restart.
        step_size: size of each step in the attack's norm; default ``2.5 * eps / steps``.
        random_start: start from a uniformly random point of the eps ball.
        restarts: independent starts, folded into one batch; each sample keeps its best.
        last_iterate: return each sample's last iterate (of its highest-loss restart) instead
            of its first successful one; every sample runs every step. Weaker as an evaluation,
            right for adversarial training (Madry et al.), which trains on the highest loss.
        loss: ``"ce"``, the cross-entropy to the label (to the target when targeted), or
            ``"kl"``, the KL divergence of the prediction at ``x_adv`` from the clean one, which
            TRADES (Zhang et al. 2019) maximises; ``"kl"`` needs no labels' help to move.

    Example:
        >>> import torch, mlsec
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> model = mlsec.zoo.load("mnist-cnn")
        >>> x_adv = PGD(eps=0.3, steps=10)(model, x[:8], y[:8])
        >>> bool((x_adv - x[:8]).abs().max() <= 0.3 + 1e-6)
        True

    References:
        Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018.

    """

    steps: int = 40
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    last_iterate: bool = False
    loss: Literal["ce", "kl"] = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("ce", "kl"):
            raise InputError(f"loss must be 'ce' or 'kl' (got {self.loss!r})")
        check_count("steps", self.steps)
        check_count("restarts", self.restarts)
        if self.step_size is not None:
            check_number("step_size", self.step_size)

    def _perturb(self, problem: Problem) -> Perturbation:
        step_size = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        objective = None
        if self.loss == "kl":
            if problem.target is not None:
                raise InputError("loss='kl' is untargeted; drop the target or use loss='ce'")
            objective = _kl_objective(problem, self.restarts)
        return projected_gradient_ascent(
            problem,
            steps=self.steps,
            step_size=step_size,
            random_start=self.random_start,
            restarts=self.restarts,
            last_iterate=self.last_iterate,
            objective=objective,
        )


def _kl_objective(problem: Problem, restarts: int) -> Objective:
    """Per-sample KL(p(x) || p(x_adv)), p the model's softmax, with p(x) computed once."""
    with torch.no_grad():
        clean = F.log_softmax(problem.forward(problem.x, problem.keys).float(), dim=1)
    reference = clean.repeat(restarts, 1)

    def objective(logits: torch.Tensor, rows: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
        log_p = reference[rows]
        log_q = F.log_softmax(logits.float(), dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)

    return objective
