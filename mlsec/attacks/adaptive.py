"""Adaptive attacks for defenses that hide the gradient (Athalye, Carlini & Wagner 2018).

- :class:`BPDA` wraps a non-differentiable step (a purifier, quantisation, JPEG) as a module whose
  forward pass is the step itself and whose backward pass is a surrogate's (the identity by
  default): put it in front of a classifier and any gradient attack goes through.
- :class:`EOT` wraps any gradient attack so that it attacks the expectation of a randomised model
  (or defense) over ``samples`` draws, folded into the batch, instead of one draw.

References:
    A. Athalye, N. Carlini, D. Wagner. Obfuscated Gradients Give a False Sense of Security:
    Circumventing Defenses to Adversarial Examples. ICML 2018. arXiv:1802.00420.

"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mlsec.attacks.base import Attack, Perturbation, Problem
from mlsec.attacks.registry import create, register_attack
from mlsec.core.keyed import SampleKeys, current_draw, drawing_for
from mlsec.core.validation import check_count
from mlsec.errors import InputError

__all__ = ["BPDA", "EOT"]


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation of ``step``.

    The forward pass returns ``step(x)``; the backward pass is that of ``surrogate(x)``, by default
    the identity (``step(x) ≈ x``, true of purifiers and quantisers).

    Example:
        >>> import torch
        >>> quantise = BPDA(lambda x: torch.round(x * 4) / 4)
        >>> x = torch.tensor([0.1, 0.4], requires_grad=True)
        >>> y = quantise(x)
        >>> y.sum().backward()
        >>> y.tolist(), x.grad.tolist()
        ([0.0, 0.5], [1.0, 1.0])

    """

    def __init__(
        self,
        step: Callable[[torch.Tensor], torch.Tensor],
        surrogate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not callable(step):
            raise InputError(f"BPDA needs a callable step (got {type(step).__name__})")
        self.step = step
        self.surrogate = surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``step(x)`` in value, ``surrogate(x)`` in gradient."""
        with torch.no_grad():
            exact = self.step(x)
        smooth = x if self.surrogate is None else self.surrogate(x)
        if exact.shape != smooth.shape:
            raise InputError(
                f"BPDA: the step returns shape {tuple(exact.shape)} but the surrogate "
                f"{tuple(smooth.shape)}; they must agree"
            )
        # Value of the step, gradient of the surrogate.
        return smooth + (exact - smooth).detach()


class _Expectation(nn.Module):
    """The randomised ``model`` averaged over ``samples`` draws: log of the mean softmax.

    The batch is repeated ``samples`` times (row ``f * B + i`` is draw ``f`` of row ``i``). When
    the attack keys its rows (:func:`mlsec.core.keyed.current_draw`), each repetition of a row is
    keyed by (the row's key, the repetition), so the model draws independently per repetition
    and a sample's draws do not depend on the rest of the batch.
    """

    def __init__(self, model: nn.Module, samples: int) -> None:
        super().__init__()
        self.model = model
        self.samples = samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        draws = x.repeat(self.samples, *([1] * (x.dim() - 1)))
        draw = current_draw()
        if draw is None:
            out = self.model(draws)
        else:
            with drawing_for(repetitions(draw.keys, self.samples), draw.call):
                out = self.model(draws)
        log_p = torch.log_softmax(out.float(), dim=1)
        log_p = log_p.view(self.samples, batch, -1)
        return torch.logsumexp(log_p, dim=0) - math.log(self.samples)


def repetitions(keys: SampleKeys, samples: int) -> SampleKeys:
    """Keys of ``samples`` repetitions of each row, folded: row ``f * B + i`` is repetition ``f``.

    Repetition 0 keeps the row's own key (EOT over one sample draws what the model alone would);
    repetition ``f`` is the row's key hashed with ``f`` in a stream of EOT's own. Unlike
    :meth:`SampleKeys.fold`, it gives keys distinct from an inner attack's restarts (already
    folded with ``fold``): restart 0's repetition ``f`` does not draw what restart ``f`` does.
    """
    if samples == 1:
        return keys
    words = keys.words((samples,), stream="eot/repetition")
    words[:, 0] = keys.keys
    return SampleKeys(words.t().reshape(-1))


# EOT's eps until it is given: the threat model then comes from the inner attack.
_FROM_ATTACK = -1.0
_THREAT_FIELDS = ("eps", "norm", "bounds", "seed")


@register_attack("eot")
@dataclass(frozen=True, kw_only=True)
class EOT(Attack):
    """Expectation over Transformation: ``attack`` against the mean prediction of ``samples`` draws.

    Each forward pass of the wrapped attack evaluates the model on ``samples`` copies of the batch
    at once and uses the log of the mean softmax, so its gradient is the gradient of the expected
    loss's proxy rather than of one random draw. Success, too, is judged on the mean prediction.

    The threat model (``eps``, ``norm``, ``bounds``, ``seed``) is the inner attack's when ``eps``
    is left out; when ``eps`` is given, EOT's four fields are set on the inner attack, so that
    ``create("eot", eps=0.3)`` and ``dataclasses.replace(eot, eps=0.1)`` do what they say.

    Args:
        attack: the inner gradient attack: an instance, a registered name, or a mapping with a
            ``"name"`` and that attack's other parameters (what :meth:`params` gives); default
            PGD with its default settings.
        samples: draws of the randomness per forward pass, folded into the batch.

    Example:
        >>> from mlsec.attacks import PGD, create
        >>> eot = EOT(attack=PGD(eps=0.3, steps=20), samples=8)
        >>> eot.eps, eot.norm
        (0.3, 'linf')
        >>> inner = create("eot", eps=0.1, samples=4).attack
        >>> type(inner).__name__, inner.eps, inner.steps
        ('PGD', 0.1, 40)

    """

    eps: float = _FROM_ATTACK
    attack: Attack | str | Mapping[str, Any] | None = None
    samples: int = 10

    def __post_init__(self) -> None:
        inner = self._inner()
        if isinstance(inner, EOT):
            raise InputError("EOT of EOT: raise samples instead")
        if self.eps == _FROM_ATTACK:
            for name in _THREAT_FIELDS:
                object.__setattr__(self, name, getattr(inner, name))
        else:
            changes = {
                n: getattr(self, n) for n in _THREAT_FIELDS if getattr(self, n) != getattr(inner, n)
            }
            if changes:
                inner = dataclasses.replace(inner, **changes)
        object.__setattr__(self, "attack", inner)
        check_count("samples", self.samples)
        super().__post_init__()

    def _inner(self) -> Attack:
        """The inner attack as an instance."""
        given = self.attack
        threat = {} if self.eps == _FROM_ATTACK else {n: getattr(self, n) for n in _THREAT_FIELDS}
        if given is None or isinstance(given, str | Mapping):
            if not threat:
                raise InputError(
                    "EOT needs eps, or an attack instance to take the threat model from"
                )
            params = dict(given) if isinstance(given, Mapping) else {}
            name = params.pop("name", given if isinstance(given, str) else "pgd")
            return create(str(name), **{**params, **threat})
        if not isinstance(given, Attack):
            raise InputError(f"EOT needs an attack instance (got {type(given).__name__})")
        return given

    def params(self) -> dict[str, Any]:
        """The hyperparameters as plain data; the inner attack as its name and its parameters."""
        inner = self.attack
        assert isinstance(inner, Attack)
        own = {n: v for n, v in inner.params().items() if n not in _THREAT_FIELDS}
        common = {n: getattr(self, n) for n in _THREAT_FIELDS}
        return {**common, "attack": {"name": inner.name, **own}, "samples": self.samples}

    def _perturb(self, problem: Problem) -> Perturbation:
        inner = self.attack
        assert isinstance(inner, Attack)
        averaged = _Expectation(problem.model, self.samples)
        answer = inner._perturb(dataclasses.replace(problem, model=averaged))
        return Perturbation(
            x_adv=answer.x_adv, logits=answer.logits, queries=answer.queries * self.samples
        )
