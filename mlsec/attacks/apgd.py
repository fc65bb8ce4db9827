"""Auto-PGD (Croce & Hein 2020): PGD with momentum and a step size that adapts itself.

APGD needs no step size: it starts at ``2 * eps`` and halves a sample's step at checkpoints
(after 22% of the iterations, then at intervals shrinking by 3% to at least 6%) when the loss rose
in fewer than ``rho`` of the steps since the last checkpoint, or when neither the step nor the best
loss changed since then; a halving sends the sample back to its best point. Its losses:
cross-entropy (APGD-CE), the difference of logits ratio (APGD-DLR, invariant to the logits'
scale, so softmax saturation cannot mask the gradient) and the targeted DLR loss against each of
the top ``targets`` other classes (APGD-T). Restarts and target classes are folded into the batch.

References:
    F. Croce, M. Hein. Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks. ICML 2020. arXiv:2003.01690.

"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from mlsec.attacks.base import Attack, Perturbation, Problem
from mlsec.attacks.registry import register_attack
from mlsec.attacks.steps import best_of_folds, first_success_first, fold, per_sample, success_mask
from mlsec.core.keyed import SampleKeys
from mlsec.core.threat import Geometry, Region
from mlsec.core.validation import check_count, check_fraction
from mlsec.errors import InputError

__all__ = ["APGD", "APGDDLR", "APGDT", "checkpoints", "dlr_loss"]


def checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD may halve a step: 22% of ``steps``, then shrinking gaps.

    Example:
        >>> checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]

    """
    first, least, shrink = (
        max(int(0.22 * steps), 1),
        max(int(0.06 * steps), 1),
        max(int(0.03 * steps), 1),
    )
    points, at, gap = [], first, first
    while at < steps:
        points.append(at)
        gap = max(gap - shrink, least)
        at += gap
    return points


def dlr_loss(
    logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample difference-of-logits-ratio loss (to maximise); targeted when ``target`` given.

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_(1) - z_(3))``; targeted:
    ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)``, with ``z_(k)`` the k-th largest logit.
    """
    z = logits.float()
    ordered, _ = z.sort(dim=1, descending=True)
    true = z.gather(1, labels[:, None]).squeeze(1)
    if target is None:
        others = z.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
        return -(true - others) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
    aimed = z.gather(1, target[:, None]).squeeze(1)
    return -(true - aimed) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


def _check_classes(classes: int, needed: int) -> None:
    if classes < needed:
        raise InputError(
            f"this APGD loss needs a model with at least {needed} classes (got {classes}); "
            "use loss='ce' and targets=0"
        )


@register_attack("apgd")
@dataclass(frozen=True, kw_only=True)
class APGD(Attack):
    """Auto-PGD with the cross-entropy (default) or the DLR loss; APGD-T with ``targets > 0``.

    Args:
        steps: iterations per restart (each one forward and one input-gradient backward).
        restarts: independent random starts, folded into one batch.
        loss: ``"ce"`` or ``"dlr"``.
        targets: 0 for the untargeted attack; k > 0 attacks, for each sample, the k classes the
            model ranks highest after the true one, with the targeted DLR loss, and succeeds
            when the prediction leaves the true class (APGD-T of AutoAttack). A ``target`` passed
            to :meth:`run` replaces them: the attack then aims at that class alone.
        rho: the fraction of steps since the last checkpoint in which the loss must have risen
            for the step size to stay.
        momentum: weight of the new step against the previous move (0.75 in the paper).

    Example:
        >>> import mlsec
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> model = mlsec.zoo.load("mnist-cnn")
        >>> result = APGD(eps=0.3, steps=20).run(model, x[:32], y[:32])
        >>> bool(result.success.all())
        True

    """

    steps: int = 100
    restarts: int = 1
    loss: Literal["ce", "dlr"] = "ce"
    targets: int = 0
    rho: float = 0.75
    momentum: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low in (("steps", 1), ("restarts", 1), ("targets", 0)):
            check_count(name, getattr(self, name), low)
        if self.loss not in ("ce", "dlr"):
            raise InputError(f"loss must be 'ce' or 'dlr' (got {self.loss!r})")
        for name in ("rho", "momentum"):
            check_fraction(name, getattr(self, name))

    def _perturb(self, problem: Problem) -> Perturbation:
        batch = problem.x.shape[0]
        labels = problem.y
        aims: torch.Tensor | None = problem.target
        folds = self.restarts
        if self.targets and aims is None:
            with torch.no_grad():
                clean = problem.forward(problem.x, problem.keys)
            _check_classes(clean.shape[1], 4)
            k = min(self.targets, clean.shape[1] - 1)
            ranked = (
                clean.float()
                .scatter(1, labels[:, None], float("-inf"))
                .argsort(dim=1, descending=True)
            )
            # Row block j attacks each sample's (j+1)-th most likely other class.
            aims = ranked[:, :k].t().reshape(-1).repeat(self.restarts)
            folds = self.restarts * k
        elif aims is not None:
            aims = aims.repeat(folds)
        x, y = fold(problem.x, folds), fold(labels, folds)
        # Row f * B + i is fold f (a restart, or a target of a restart) of sample i: its random
        # start and the model's draws for it come from its own key.
        keys = problem.keys.fold(folds)
        best_x, best_logits, found, best_loss = self._ascend(problem, x, y, aims, keys)
        # Per sample: the first fold that succeeded, else the one with the highest loss.
        chosen = best_of_folds(first_success_first(found, best_loss), folds, batch)
        return Perturbation(
            x_adv=best_x[chosen],
            logits=best_logits[chosen],
            queries=folds * (self.steps + 1)
            + (1 if self.targets and problem.target is None else 0),
        )

    def _objective(
        self, problem: Problem, y: torch.Tensor, aims: torch.Tensor | None
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
        """The per-row loss to maximise and the success test, on the folded batch."""
        user_targeted = problem.target is not None

        def loss_of(logits: torch.Tensor) -> torch.Tensor:
            if self.loss == "dlr":
                _check_classes(logits.shape[1], 4 if aims is not None else 3)
                if user_targeted:
                    # To land on the target, the target must beat every other class, not only
                    # the true one: the DLR margin to the strongest rival.
                    assert aims is not None
                    rival = logits.detach().scatter(1, aims[:, None], float("-inf")).argmax(1)
                    return dlr_loss(logits, rival, aims)
                return dlr_loss(logits, y, aims)
            if aims is None:
                return F.cross_entropy(logits.float(), y, reduction="none")
            return -F.cross_entropy(logits.float(), aims, reduction="none")

        def succeeded(logits: torch.Tensor) -> torch.Tensor:
            if user_targeted:
                assert aims is not None
                return success_mask(logits, aims, targeted=True)
            return success_mask(logits, y, targeted=False)

        return loss_of, succeeded

    def _ascend(
        self,
        problem: Problem,
        x: torch.Tensor,
        y: torch.Tensor,
        aims: torch.Tensor | None,
        keys: SampleKeys,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """APGD on the folded batch; returns kept examples, their logits, success, best loss."""
        geometry = problem.geometry
        region = problem.region(x)
        loss_of, succeeded = self._objective(problem, y, aims)

        def evaluate(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            point, logits = problem.forward_for_gradient(point, keys)
            loss = loss_of(logits)
            (grad,) = torch.autograd.grad(loss.sum(), point)
            return loss.detach(), logits.detach(), grad.detach()

        x_adv = region.project(x + geometry.random_start(x, problem.eps, keys))
        loss, logits, grad = evaluate(x_adv)
        state = _State.start(x_adv, loss, logits, grad, succeeded(logits), problem.eps)
        marks = set(checkpoints(self.steps))
        since = 0
        for i in range(self.steps):
            with torch.no_grad():
                x_adv = state.move(region, geometry, self.momentum if i > 0 else 1.0)
            loss, logits, grad = evaluate(x_adv)
            state.observe(x_adv, loss, logits, grad, succeeded(logits))
            since += 1
            if i + 1 in marks:
                state.checkpoint(self.rho, since)
                since = 0
        return state.result()


@dataclass
class _State:
    """APGD's per-row state on the folded batch (every field ``[rows, ...]``)."""

    x_adv: torch.Tensor
    previous: torch.Tensor
    grad: torch.Tensor
    last_loss: torch.Tensor
    step: torch.Tensor
    found: torch.Tensor
    kept_x: torch.Tensor
    kept_logits: torch.Tensor
    best_loss: torch.Tensor
    best_x: torch.Tensor
    best_grad: torch.Tensor
    best_logits: torch.Tensor
    rises: torch.Tensor
    best_at_check: torch.Tensor
    halved_at_check: torch.Tensor

    @classmethod
    def start(
        cls,
        x_adv: torch.Tensor,
        loss: torch.Tensor,
        logits: torch.Tensor,
        grad: torch.Tensor,
        found: torch.Tensor,
        eps: torch.Tensor,
    ) -> _State:
        """The state at the random start, with a step of ``2 * eps``."""
        return cls(
            x_adv=x_adv,
            previous=x_adv,
            grad=grad,
            last_loss=loss,
            step=torch.full((x_adv.shape[0],), 2.0, dtype=x_adv.dtype, device=x_adv.device) * eps,
            found=found,
            kept_x=x_adv.clone(),
            kept_logits=logits.clone(),
            best_loss=loss.clone(),
            best_x=x_adv.clone(),
            best_grad=grad.clone(),
            best_logits=logits.clone(),
            rises=torch.zeros_like(loss),
            best_at_check=loss.clone(),
            halved_at_check=torch.ones_like(found),
        )

    def move(self, region: Region, geometry: Geometry, momentum: float) -> torch.Tensor:
        """The next iterate: a projected step, blended with the previous move by ``momentum``."""
        move = self.x_adv - self.previous
        z = region.project(
            self.x_adv + per_sample(self.step, self.x_adv) * geometry.ascent(self.grad)
        )
        candidate = region.project(self.x_adv + momentum * (z - self.x_adv) + (1 - momentum) * move)
        self.previous, self.x_adv = self.x_adv, candidate
        return candidate

    def observe(
        self,
        x_adv: torch.Tensor,
        loss: torch.Tensor,
        logits: torch.Tensor,
        grad: torch.Tensor,
        hit: torch.Tensor,
    ) -> None:
        """Record an iterate: first successes, loss rises and the best point so far."""
        self.grad = grad
        new = hit & ~self.found
        self.kept_x = torch.where(per_sample(new, x_adv), x_adv, self.kept_x)
        self.kept_logits = torch.where(new[:, None], logits, self.kept_logits)
        self.found = self.found | hit
        self.rises = self.rises + (loss > self.last_loss).to(self.rises.dtype)
        self.last_loss = loss
        better = loss > self.best_loss
        self.best_x = torch.where(per_sample(better, x_adv), x_adv, self.best_x)
        self.best_grad = torch.where(per_sample(better, x_adv), grad, self.best_grad)
        self.best_logits = torch.where(better[:, None], logits, self.best_logits)
        self.best_loss = torch.where(better, loss, self.best_loss)

    def checkpoint(self, rho: float, since: int) -> None:
        """Halve the step of stalled rows and send them back to their best point."""
        stalled = self.rises < rho * since
        no_progress = ~self.halved_at_check & (self.best_at_check >= self.best_loss)
        halve = stalled | no_progress
        self.step = torch.where(halve, self.step / 2, self.step)
        self.x_adv = torch.where(per_sample(halve, self.x_adv), self.best_x, self.x_adv)
        self.grad = torch.where(per_sample(halve, self.grad), self.best_grad, self.grad)
        self.halved_at_check = halve
        self.best_at_check = self.best_loss.clone()
        self.rises = torch.zeros_like(self.rises)

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kept examples (a row that never succeeded: its best point), logits, success, loss."""
        kept_x = torch.where(per_sample(self.found, self.kept_x), self.kept_x, self.best_x)
        kept_logits = torch.where(self.found[:, None], self.kept_logits, self.best_logits)
        return kept_x, kept_logits, self.found, self.best_loss


@register_attack("apgd-dlr")
@dataclass(frozen=True, kw_only=True)
class APGDDLR(APGD):
    """APGD with the DLR loss (APGD-DLR of AutoAttack)."""

    loss: Literal["ce", "dlr"] = "dlr"


@register_attack("apgd-t")
@dataclass(frozen=True, kw_only=True)
class APGDT(APGD):
    """Targeted APGD-DLR against the 9 classes ranked highest after the true one (APGD-T)."""

    loss: Literal["ce", "dlr"] = "dlr"
    targets: int = 9
