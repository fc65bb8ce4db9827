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
from mlsec.core.threat import LINF
from mlsec.core.validation import check_count
from mlsec.errors import InputError

__all__ = ["PGD", "projected_gradient_ascent"]

# On the CPU, samples leave the batch once they succeed (see projected_gradient_ascent). The
# benchmarks turn this off to time the accelerator's code path on the CPU.
SHRINK_ON_CPU = True


def projected_gradient_ascent(
    problem: Problem,
    *,
    steps: int,
    step_size: float,
    random_start: bool,
    restarts: int,
    last_iterate: bool = False,
    objective: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
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
    x, labels = problem.x, problem.labels
    if restarts > 1:
        x = x.repeat(restarts, *([1] * (x.dim() - 1)))
        labels = labels.repeat(restarts)
    geometry = problem.geometry
    # torch.full, not torch.tensor: a host-to-device copy would wait for the device.
    step = torch.full((), step_size, dtype=x.dtype, device=x.device)
    shrink = SHRINK_ON_CPU and x.device.type == "cpu" and not last_iterate
    x0, target = x, labels
    total = x.shape[0]
    rows = torch.arange(total, device=x.device)  # the rows still being attacked
    # In linf the admissible set is a box: one clamp to precomputed bounds per step, the same
    # set as problem.clip's projection and then the bounds, in a sixth of the kernel launches.
    box = geometry is LINF
    if box:
        lo = torch.maximum(x - problem.eps, problem.low)
        hi = torch.minimum(x + problem.eps, problem.high)

    def project(x_new: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x_new, lo, hi) if box else problem.clip(x0, x_new)

    def step_loss(logits: torch.Tensor) -> torch.Tensor:
        if objective is None:
            return problem.total_loss(logits, target)
        return objective(logits, rows, target).sum()

    x_adv = x
    if random_start:
        x_adv = project(x + geometry.random_start(x, problem.eps, problem.generator))

    # Which iterate each sample keeps; not needed when the last iterate of one start is the answer.
    tracking = not (last_iterate and restarts == 1)
    if tracking:
        found = torch.zeros(total, dtype=torch.bool, device=x.device)
        best_x = x_adv.clone()
        final_loss = torch.full((total,), float("-inf"), device=x.device)
    best_logits: torch.Tensor | None = None
    loss_of = objective or (lambda logits, _rows, labels: problem.loss(logits, labels))

    def merge(buffer: torch.Tensor, mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``buffer`` with the rows being attacked replaced by ``value`` where ``mask``.

        While no sample has left the batch (always, off the CPU) the rows are all of them: a
        plain ``where`` then, as index_put over every row costs a sort on the accelerator.
        """
        mask = mask.view(-1, *([1] * (value.dim() - 1)))
        if not shrink:
            return torch.where(mask, value, buffer)
        buffer[rows] = torch.where(mask, value, buffer[rows])
        return buffer

    def record(x_now: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        nonlocal best_logits, best_x, found
        if best_logits is None:
            best_logits = logits.new_zeros((total, logits.shape[1]))
        hit = problem.succeeded(logits, target)
        new = hit & ~(found if not shrink else found[rows])
        best_x = merge(best_x, new, x_now)
        best_logits = merge(best_logits, new, logits)
        found = merge(found, hit, torch.ones_like(hit))
        return hit

    for _ in range(steps):
        x_adv, logits = problem.forward_for_gradient(x_adv)
        (grad,) = torch.autograd.grad(step_loss(logits), x_adv)
        if not last_iterate:  # the last iterate needs no record of the ones before it
            hit = record(x_adv.detach(), logits.detach())
        x_adv = project(x_adv.detach() + step * geometry.ascent(grad))
        if shrink:
            keep = ~hit
            rows, x0, target, x_adv = rows[keep], x0[keep], target[keep], x_adv[keep]
            if box:
                lo, hi = lo[keep], hi[keep]
            if rows.numel() == 0:
                break

    if last_iterate and restarts == 1:
        # Nothing to choose between: the last iterate is the answer, and the caller's final
        # forward (if it wants logits) is the only one.
        return Perturbation(x_adv=x_adv.detach(), logits=None, queries=steps)
    if rows.numel() > 0:
        with torch.no_grad():
            logits = problem.forward(x_adv)
            loss_now = loss_of(logits, rows, target).float()
        if shrink:
            final_loss[rows] = loss_now
        else:
            final_loss = loss_now
        record(x_adv, logits)
        assert best_logits is not None
        # Samples that never succeeded keep their last iterate (all of them, with last_iterate).
        found_now = found if not shrink else found[rows]
        missed = torch.ones_like(found_now) if last_iterate else ~found_now
        best_x = merge(best_x, missed, x_adv)
        best_logits = merge(best_logits, missed, logits)
    assert best_logits is not None

    # Per sample, the first restart that succeeded, else the one with the highest final loss.
    score = final_loss
    if not last_iterate:
        score = torch.where(found, torch.full_like(final_loss, float("inf")), final_loss)
    pick = score.view(restarts, batch).argmax(dim=0)
    chosen = pick * batch + torch.arange(batch, device=x.device)
    return Perturbation(
        x_adv=best_x[chosen], logits=best_logits[chosen], queries=restarts * (steps + 1)
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
        if self.step_size is not None and not (
            isinstance(self.step_size, int | float) and self.step_size > 0
        ):
            raise InputError(f"step_size must be a number > 0 (got {self.step_size!r})")

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


def _kl_objective(
    problem: Problem, restarts: int
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-sample KL(p(x) || p(x_adv)), p the model's softmax, with p(x) computed once."""
    with torch.no_grad():
        clean = F.log_softmax(problem.forward(problem.x).float(), dim=1)
    reference = clean.repeat(restarts, 1)

    def objective(logits: torch.Tensor, rows: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
        log_p = reference[rows]
        log_q = F.log_softmax(logits.float(), dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)

    return objective
