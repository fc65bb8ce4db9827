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

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from mlsec.attacks.base import Attack, Perturbation, Problem
from mlsec.attacks.registry import register_attack
from mlsec.core.validation import check_count
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
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise InputError(f"{name} must be a number in [0, 1] (got {value!r})")

    def _perturb(self, problem: Problem) -> Perturbation:
        batch = problem.x.shape[0]
        labels = problem.y
        aims: torch.Tensor | None = problem.target
        folds = self.restarts
        if self.targets and aims is None:
            with torch.no_grad():
                clean = problem.forward(problem.x)
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
        x = problem.x.repeat(folds, *([1] * (problem.x.dim() - 1)))
        y = labels.repeat(folds)
        best_x, best_logits, found, best_loss = self._ascend(problem, x, y, aims)
        # Per sample: the first fold that succeeded, else the one with the highest loss.
        score = torch.where(found, torch.full_like(best_loss, float("inf")), best_loss)
        pick = score.view(folds, batch).argmax(dim=0)
        chosen = pick * batch + torch.arange(batch, device=x.device)
        return Perturbation(
            x_adv=best_x[chosen],
            logits=best_logits[chosen],
            queries=folds * (self.steps + 1)
            + (1 if self.targets and problem.target is None else 0),
        )

    def _ascend(
        self, problem: Problem, x: torch.Tensor, y: torch.Tensor, aims: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """APGD on the folded batch; returns kept examples, their logits, success, best loss."""
        geometry = problem.geometry
        user_targeted = problem.target is not None
        per = (-1, *([1] * (x.dim() - 1)))

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
            predicted = logits.argmax(dim=1)
            if user_targeted:
                assert aims is not None
                return predicted == aims
            return predicted != y

        def evaluate(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            point, logits = problem.forward_for_gradient(point)
            loss = loss_of(logits)
            (grad,) = torch.autograd.grad(loss.sum(), point)
            return loss.detach(), logits.detach(), grad.detach()

        eps = problem.eps
        x_adv = problem.clip(x, x + geometry.random_start(x, eps, problem.generator))
        loss, logits, grad = evaluate(x_adv)
        found = succeeded(logits)
        kept_x, kept_logits = x_adv.clone(), logits.clone()
        best_loss, best_x, best_grad = loss.clone(), x_adv.clone(), grad.clone()
        best_logits = logits.clone()
        step = torch.full((x.shape[0],), 2.0, dtype=x.dtype, device=x.device) * eps
        previous = x_adv
        last_loss = loss
        rises = torch.zeros_like(loss)
        best_at_check = best_loss.clone()
        halved_at_check = torch.ones_like(found)
        marks = set(checkpoints(self.steps))
        since = 0
        for i in range(self.steps):
            with torch.no_grad():
                move = x_adv - previous
                z = problem.clip(x, x_adv + step.view(per) * geometry.ascent(grad))
                a = self.momentum if i > 0 else 1.0
                candidate = problem.clip(x, x_adv + a * (z - x_adv) + (1 - a) * move)
                previous, x_adv = x_adv, candidate
            loss, logits, grad = evaluate(x_adv)
            hit = succeeded(logits)
            new = hit & ~found
            kept_x = torch.where(new.view(per), x_adv, kept_x)
            kept_logits = torch.where(new[:, None], logits, kept_logits)
            found = found | hit
            rises = rises + (loss > last_loss).to(rises.dtype)
            last_loss = loss
            better = loss > best_loss
            best_x = torch.where(better.view(per), x_adv, best_x)
            best_grad = torch.where(better.view(per), grad, best_grad)
            best_logits = torch.where(better[:, None], logits, best_logits)
            best_loss = torch.where(better, loss, best_loss)
            since += 1
            if i + 1 in marks:
                stalled = rises < self.rho * since
                no_progress = ~halved_at_check & (best_at_check >= best_loss)
                halve = stalled | no_progress
                step = torch.where(halve, step / 2, step)
                x_adv = torch.where(halve.view(per), best_x, x_adv)
                grad = torch.where(halve.view(per), best_grad, grad)
                halved_at_check = halve
                best_at_check = best_loss.clone()
                rises = torch.zeros_like(rises)
                since = 0
        # A sample that never succeeded keeps its highest-loss point.
        kept_x = torch.where(found.view(per), kept_x, best_x)
        kept_logits = torch.where(found[:, None], kept_logits, best_logits)
        return kept_x, kept_logits, found, best_loss


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
