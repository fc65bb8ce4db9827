"""The Attack interface: a frozen dataclass of hyperparameters whose base class owns the guarantees.

A subclass implements only :meth:`Attack._perturb`. :meth:`Attack.run` validates the inputs, freezes
the model (eval mode, parameters' ``requires_grad`` off, both restored in ``finally``), seeds the
randomness, and afterwards projects the subclass's answer onto the eps ball and the bounds, so no
attack can return an inadmissible example. :meth:`Attack.run_unchecked` skips only the per-batch
input checks, for callers that validated the data set once (the audit's hot loop).
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch
import torch.nn.functional as F
from torch import nn

from mlsec.attacks.steps import success_mask
from mlsec.core import model as _model
from mlsec.core.keyed import SampleKeys, drawing_for
from mlsec.core.threat import Geometry, Norm, Region, ThreatModel, geometry
from mlsec.core.validation import check_batch, check_index, check_labels, check_seed
from mlsec.errors import InputError

__all__ = ["Attack", "AttackResult", "Perturbation", "Problem", "examples_for_checked_data"]


@dataclass(frozen=True, kw_only=True)
class AttackResult:
    """What an attack returns.

    Attributes:
        x_adv: adversarial examples, same shape, dtype and device as the input.
        success: bool ``[B]``: the model misclassifies ``x_adv`` (untargeted) or predicts the
            target (targeted).
        logits: the model's output on ``x_adv``.
        queries: forward passes of the model spent per sample.

    """

    x_adv: torch.Tensor
    success: torch.Tensor
    logits: torch.Tensor
    queries: int


@dataclass(frozen=True, kw_only=True)
class Perturbation:
    """A subclass's answer: candidate examples and, if it has them, the logits of exactly those."""

    x_adv: torch.Tensor
    logits: torch.Tensor | None
    queries: int


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One attack problem, on the input's device.

    The attack's arithmetic (inputs, eps, bounds, perturbations) runs in at least float32 even for
    a bfloat16 model, so eps is not rounded; :meth:`forward` hands the model its own dtype.
    """

    model: nn.Module
    model_dtype: torch.dtype
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    geometry: Geometry
    eps: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    keys: SampleKeys
    calls: list[int] = field(default_factory=lambda: [0])

    def forward(self, x: torch.Tensor, keys: SampleKeys | None = None) -> torch.Tensor:
        """The model's logits for ``x``, cast to the model's dtype if needed.

        ``keys``, the sample keys of ``x``'s rows, are what a randomised model draws from
        (:func:`mlsec.core.keyed.current_draw`), at the step that counts this problem's calls.
        """
        x = x if x.dtype == self.model_dtype else x.to(self.model_dtype)
        call = self.calls[0]
        self.calls[0] += 1
        if keys is None:
            out: torch.Tensor = self.model(x)
            return out
        with drawing_for(keys, call):
            out = self.model(x)
        return out

    def forward_for_gradient(
        self, x: torch.Tensor, keys: SampleKeys | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` as a fresh leaf that requires grad, and the model's logits for it.

        Raises :class:`InputError` when the logits carry no gradient to the input.
        """
        leaf = x.detach().requires_grad_(True)
        logits = self.forward(leaf, keys)
        if not logits.requires_grad:
            raise InputError(
                "the model's output has no gradient with respect to its input (detached, or "
                "computed under torch.no_grad); gradient attacks need a differentiable model"
            )
        return leaf, logits

    @property
    def labels(self) -> torch.Tensor:
        """The labels the loss is computed against: the target when targeted, else the truth."""
        return self.y if self.target is None else self.target

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample loss to maximise: cross-entropy to ``labels``, negated when targeted."""
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        return ce if self.target is None else -ce

    def total_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The batch's summed :meth:`loss`, in one reduction (what a gradient step needs)."""
        ce = F.cross_entropy(logits.float(), labels, reduction="sum")
        return ce if self.target is None else -ce

    def succeeded(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Bool per sample: misclassified (untargeted) or classified as the target (targeted)."""
        return success_mask(logits, labels, targeted=self.target is not None)

    def region(self, x: torch.Tensor) -> Region:
        """The admissible set around ``x``: its eps ball in the attack's norm, and the bounds."""
        return self.geometry.region(x, self.eps, self.low, self.high)

    def clip(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """``x_adv`` moved into the eps ball around ``x`` and into the bounds."""
        return self.region(x).project(x_adv)


@dataclass(frozen=True, kw_only=True)
class Attack(abc.ABC):
    """Base class of every attack.

    Args:
        eps: the perturbation budget, in input units (pixels for images in ``[0, 1]``).
        norm: ``"linf"`` or ``"l2"``.
        bounds: ``(low, high)`` that every input value lies in.
        seed: seed of the attack's randomness; the same seed gives the same result.

    """

    name: ClassVar[str] = ""
    # The norms this attack implements; a subclass that lacks one says so here.
    norms: ClassVar[tuple[Norm, ...]] = ("linf", "l2")
    # Reads only the model's outputs (a black-box check on the gradient attacks).
    gradient_free: ClassVar[bool] = False
    # Takes parameters beyond its dataclass fields and validates them itself (the ART attacks).
    open_params: ClassVar[bool] = False
    # Every random draw is keyed by (seed, sample index, restart) (mlsec.core.keyed), so a
    # sample's result does not depend on its batch; False where a peer draws for the batch (ART).
    sample_keyed: ClassVar[bool] = True

    eps: float
    norm: Norm = "linf"
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        ThreatModel(norm=self.norm, eps=self.eps, bounds=self.bounds)
        if self.norm not in self.norms:
            raise InputError(
                f"{type(self).__name__} supports norm {' and '.join(map(repr, self.norms))} "
                f"(got {self.norm!r})"
            )
        check_seed(self.seed)

    def _check_representable(self, dtype: torch.dtype) -> None:
        """Raise :class:`InputError` if eps or the bounds overflow ``dtype`` (they would be inf)."""
        largest = torch.finfo(dtype).max
        for what, value in (
            ("eps", self.eps),
            ("bounds", self.bounds[0]),
            ("bounds", self.bounds[1]),
        ):
            if abs(value) > largest:
                raise InputError(
                    f"{what} {value:g} overflows the model's {str(dtype).removeprefix('torch.')} "
                    f"(largest {largest:g}); give a smaller value"
                )

    @property
    def threat_model(self) -> ThreatModel:
        """The threat model this attack's results lie in."""
        return ThreatModel(norm=self.norm, eps=self.eps, bounds=self.bounds)

    def params(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict (for reports and JSON)."""
        return dataclasses.asdict(self)

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Adversarial examples for ``(x, y)``; see :meth:`run`.

        The same examples as ``run(...).x_adv``, without the final forward pass that ``run``
        spends on logits and success when the attack has not already computed them.
        """
        return self._execute(model, x, y, target, index, want_result=False).x_adv

    @final
    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack ``model`` on the batch ``(x, y)``.

        Args:
            model: a classifier returning logits ``[B, classes]``.
            x: inputs ``[B, ...]`` within ``bounds``; float32, float64 or bfloat16.
            y: true labels, integer ``[B]``.
            target: optional target labels ``[B]``; the attack then tries to make the model
                predict them.
            index: each sample's position in its data set, integer ``[B]`` (default
                ``0 .. B-1``). A sample's random draws are keyed by ``(seed, index, restart)``
                (:mod:`mlsec.core.keyed`), so its result does not depend on the rest of the batch.

        Returns:
            An :class:`AttackResult`; ``x``, ``y`` and ``model`` are left unchanged.

        """
        return self._execute(model, x, y, target, index, want_result=True)

    @final
    def run_unchecked(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> AttackResult:
        """:meth:`run` for a caller that has validated the whole data set once already.

        For loops that attack many batches of one checked data set (the audit's survivors chain,
        the adversarial trainers). It skips only the per-batch input checks of :meth:`run`: that
        ``model`` is a module on ``x``'s device, ``x`` a finite floating batch within ``bounds``,
        ``y`` and ``target`` integer labels of the right shape within the model's outputs (one
        extra forward pass and several waits of the device for the host). Every guarantee on the
        result still holds: ``x_adv`` lies within eps of ``x`` and within ``bounds``, ``x``, ``y``
        and the model are left unchanged, the model's modes are restored, the same seed gives the
        same result, and NaN logits still raise. On unchecked bad data the attack may fail with a
        torch error instead of a one-line :class:`~mlsec.errors.InputError`.

        Args:
            model: a classifier returning logits ``[B, classes]``.
            x: inputs ``[B, ...]`` within ``bounds``, already checked.
            y: true labels, integer ``[B]``, already checked.
            target: optional target labels ``[B]``, already checked.
            index: each sample's position in its data set (see :meth:`run`), already checked.

        Returns:
            The same :class:`AttackResult` as :meth:`run` on the same arguments.

        """
        return self._execute(model, x, y, target, index, want_result=True, checked=True)

    def _execute(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        index: torch.Tensor | None,
        *,
        want_result: bool,
        checked: bool = False,
    ) -> AttackResult:
        if not checked:
            check_batch(model, x, y, target, self.bounds)
            check_index(index, x.shape[0])
        if index is None:
            index = torch.arange(x.shape[0], device=x.device)
        model_dtype = _model.compute_dtype(model, x)
        dtype = torch.promote_types(model_dtype, torch.float32)
        self._check_representable(dtype)
        with _model.frozen(model), torch.enable_grad():
            xc = x.detach().to(dtype)
            problem = Problem(
                model=model,
                model_dtype=model_dtype,
                x=xc,
                y=y.detach(),
                target=None if target is None else target.detach(),
                geometry=geometry(self.norm),
                eps=torch.full((), self.eps, dtype=dtype, device=x.device),
                low=torch.full((), self.bounds[0], dtype=dtype, device=x.device),
                high=torch.full((), self.bounds[1], dtype=dtype, device=x.device),
                keys=SampleKeys.of(self.seed, index.to(x.device)),
            )
            if not checked:
                # Keyed like the rows it sees, and not counted: checked or not, an attack's
                # forward passes draw the same randomness.
                check_labels(
                    lambda v: problem.forward(v, problem.keys.select(torch.arange(len(v)))),
                    xc,
                    y,
                    target,
                )
                problem.calls[0] = 0
            if x.shape[0] == 0:
                answer = Perturbation(x_adv=xc, logits=None, queries=0)
            else:
                answer = self._perturb(problem)
            x_adv = problem.clip(xc, answer.x_adv.detach())
            logits, queries = answer.logits, answer.queries
            x_out = x_adv
            if x.dtype != dtype:
                # Fit the ball in the caller's dtype; the model sees what the caller gets back.
                x_out = _fit_dtype(x, x_adv, problem)
                x_adv, logits = x_out.to(dtype), None
            if logits is not None and not torch.equal(x_adv, answer.x_adv):
                logits = None
            if logits is None and not want_result:
                return AttackResult(
                    x_adv=x_out,
                    success=torch.zeros(0, dtype=torch.bool, device=x.device),
                    logits=torch.zeros(0, device=x.device),
                    queries=queries,
                )
            if logits is None:
                with torch.no_grad():
                    logits = problem.forward(x_adv, problem.keys)
                queries += 1
            if not bool(torch.isfinite(logits).all()):
                raise InputError(
                    "the model returned NaN or infinite logits; check its weights and inputs"
                )
            success = problem.succeeded(logits, problem.labels)
        return AttackResult(x_adv=x_out, success=success, logits=logits.detach(), queries=queries)

    @abc.abstractmethod
    def _perturb(self, problem: Problem) -> Perturbation:
        """Find adversarial examples for ``problem``; the base class projects the result."""


def examples_for_checked_data(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``attack(model, x, y)`` for a caller that has checked the whole data set once already.

    The examples of :meth:`Attack.run_unchecked` without its final forward pass for logits and
    success (the adversarial trainers want only the examples).
    """
    return attack._execute(model, x, y, None, index, want_result=False, checked=True).x_adv


def _fit_dtype(x: torch.Tensor, x_adv: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Cast ``x_adv`` to ``x.dtype`` without rounding it out of the eps ball or the bounds.

    Rounding to a coarse dtype (bfloat16) can push a value just past ``x + eps``. Where the
    region says a value (linf: one element; l2: a whole sample) left it, that part is pulled
    towards ``x``; the rest of the perturbation is kept. Falling back to ``x`` itself always fits.
    """
    x64 = x.double()
    delta64 = x_adv.double() - x64
    region = problem.geometry.region(
        x64, float(problem.eps), float(problem.low), float(problem.high)
    )
    out = x_adv.to(x.dtype)
    for shrink in (0.999, 0.99, 0.9, 0.0):
        fits = region.contains(out.double())
        if bool(fits.all()):
            break
        out = torch.where(fits, out, (x64 + delta64 * shrink).to(x.dtype))
    return out
