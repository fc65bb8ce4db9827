"""The :class:`ARTAttack` class and the ART attacks registered under their own names."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from mlsec.attacks.art.catalog import art_class_named, gradient_free, init_parameters
from mlsec.attacks.art.estimator import (
    UNSEEDED_START,
    CountingModel,
    art_classifier,
    cuda_device,
    seeded,
    seeded_start,
)
from mlsec.attacks.art.options import (
    MLSEC_FIELDS,
    SET_BY_MLSEC,
    Options,
    check_with_art,
    frozen_value,
    mlsec_settings,
    thawed,
)
from mlsec.attacks.base import Attack, Perturbation, Problem
from mlsec.attacks.registry import register_attack
from mlsec.core.threat import Norm
from mlsec.errors import InputError

__all__ = ["ARTAttack", "ARTDeepFool", "ARTElasticNet"]


@register_attack("art")
@dataclass(frozen=True, kw_only=True, init=False)
class ARTAttack(Attack):
    """An evasion attack of the Adversarial Robustness Toolbox, run through a PyTorchClassifier.

    mlsec builds ART's ``PyTorchClassifier`` around the model at call time (cross-entropy loss,
    ``clip_values=bounds``, the number of classes from the model's output) and sets, where the ART
    attack's constructor takes them: ``eps`` and ``norm`` (``np.inf`` or ``2``) from this
    attack's, ``targeted`` from the call's ``target=``, ``verbose=False`` and ``batch_size`` (the
    whole batch, unless given as an option). Every other ART parameter (``max_iter``,
    ``eps_step``, ``confidence``, ...) is the user's, given as a keyword and checked by ART when
    the attack is built. The answer is projected onto the eps ball and the bounds by the base
    class, which makes the answers of minimum-norm attacks admissible.

    Args:
        attack: the ART class name, e.g. ``"CarliniL2Method"`` (first, positionally).
        options: ART options as a mapping or ``(key, value)`` pairs; the same as keywords.
        **art_params: the ART attack's own constructor parameters.

    Attributes:
        gradient_free: whether ART's attack reads only the model's outputs (from its estimator
            requirements); set per instance.

    Example:
        >>> import dataclasses, mlsec
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> model = mlsec.zoo.load("mnist-cnn")
        >>> attack = ARTAttack("DeepFool", eps=3.0, norm="l2", max_iter=20, epsilon=0.02)
        >>> attack.params()["attack"], attack.params()["max_iter"], attack.options
        ('DeepFool', 20, (('epsilon', 0.02), ('max_iter', 20)))
        >>> dataclasses.replace(attack, eps=1.0).eps
        1.0
        >>> result = attack.run(model, x[:32], y[:32])
        >>> bool(result.success.float().mean() > 0.8)
        True

    """

    # Parameters beyond the dataclass fields are the ART attack's; it validates them itself.
    open_params: ClassVar[bool] = True
    # The ART class of a registered subclass ("" for the generic attack).
    art_class: ClassVar[str] = ""
    # ART's attacks draw from numpy's and torch's global generators, seeded once per call: a
    # sample's draws depend on the rest of its batch, so its result may too.
    sample_keyed: ClassVar[bool] = False

    attack: str
    options: Options = ()

    def __init__(
        self,
        attack: str = "",
        *,
        eps: float,
        norm: Norm = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
        options: Mapping[str, Any] | Options = (),
        **art_params: Any,
    ) -> None:
        label = self.name or type(self).__name__
        if self.art_class and attack and attack != self.art_class:
            raise InputError(
                f"{label} runs ART's {self.art_class}; for {attack!r} use "
                f"ARTAttack({attack!r}, ...) or the registered name 'art'"
            )
        attack = attack or self.art_class
        if not attack:
            raise InputError(
                f"{label} needs the ART attack's class name, e.g. ARTAttack('DeepFool', eps=0.3) "
                'or attack = "DeepFool" in a suite'
            )
        given = dict(options.items() if isinstance(options, Mapping) else options)
        for key in sorted(set(given) & set(art_params)):
            raise InputError(f"ART option {key!r} is given twice (as a keyword and in options)")
        merged = {**given, **art_params}
        for key in ("estimator", "classifier"):
            if key in merged:
                raise InputError(f"{label} gets ART's {key!r} from the model passed at call time")
        object.__setattr__(self, "attack", attack)
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "bounds", tuple(bounds))
        object.__setattr__(self, "seed", seed)
        object.__setattr__(
            self,
            "options",
            tuple(sorted((str(k), frozen_value(str(k), v)) for k, v in merged.items())),
        )
        self.__post_init__()

    def __post_init__(self) -> None:
        super().__post_init__()
        cls = art_class_named(self.attack)
        accepted = init_parameters(cls)
        open_signature = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        for key, _ in self.options:
            if key in SET_BY_MLSEC and key in accepted:
                raise InputError(
                    f"ART's {self.attack} gets {key!r} from {SET_BY_MLSEC[key]}; "
                    "do not give it as an option"
                )
            if key in MLSEC_FIELDS:
                raise InputError(
                    f"ART's option {key!r} cannot be set through mlsec ({key!r} is mlsec's own "
                    "parameter)"
                )
            if key not in accepted and not open_signature:
                names = sorted(set(accepted) - set(SET_BY_MLSEC))
                raise InputError(
                    f"ART's {self.attack} has no parameter {key!r}; its parameters: "
                    f"{', '.join(names)}"
                )
        check_with_art(self.attack, self.options, float(self.eps), self.norm)
        # Per instance: the generic attack's answer depends on which ART class it runs.
        object.__setattr__(self, "gradient_free", gradient_free(self.attack))

    def params(self) -> dict[str, Any]:
        """The hyperparameters as plain data, with the ART options flattened in."""
        common = {f.name: getattr(self, f.name) for f in dataclasses.fields(Attack)}
        return {"attack": self.attack, **common, **{k: thawed(v) for k, v in self.options}}

    def _perturb(self, problem: Problem) -> Perturbation:
        x, targeted = problem.x, problem.target is not None
        cls = art_class_named(self.attack)
        accepted = init_parameters(cls)
        if targeted and "targeted" not in accepted:
            warnings.warn(
                f"ART's {self.attack} has no targeted mode; with target= it returns x unchanged",
                stacklevel=4,
            )
            return Perturbation(x_adv=x, logits=None, queries=0)
        if self.eps == 0:
            return Perturbation(x_adv=x, logits=None, queries=0)
        with torch.no_grad():
            # One sample's forward, not counted: a fraction 1/B of a query per sample.
            classes = problem.forward(x[:1]).shape[1]
        counting = CountingModel(problem.forward, x.device)
        classifier = art_classifier(counting, x, classes, self.bounds)
        kwargs = mlsec_settings(
            cls, eps=self.eps, norm=self.norm, targeted=targeted, batch=x.shape[0]
        )
        kwargs.update({k: thawed(v) for k, v in self.options})
        x_np = x.detach().float().cpu().numpy().copy()
        labels = problem.labels.cpu().numpy().copy()
        extra: dict[str, Any] = {}
        with seeded(self.seed, x.device), cuda_device(x.device):
            if self.attack in UNSEEDED_START:
                extra["x_adv_init"] = seeded_start(problem, counting).float().cpu().numpy()
            answer = cls(classifier, **kwargs).generate(x_np, y=labels, **extra)
        answer = np.asarray(answer, dtype=np.float32)
        if answer.shape != x_np.shape:
            raise InputError(
                f"ART's {self.attack} returned shape {answer.shape}, not adversarial examples "
                f"shaped like x {x_np.shape}"
            )
        x_adv = torch.from_numpy(answer).to(device=x.device, dtype=x.dtype)
        return Perturbation(
            x_adv=x_adv, logits=None, queries=math.ceil(counting.samples / x.shape[0])
        )


@register_attack("art-deepfool")
@dataclass(frozen=True, kw_only=True, init=False)
class ARTDeepFool(ARTAttack):
    """ART's ``DeepFool`` (Moosavi-Dezfooli et al. 2016): l2 steps to the linearised boundary.

    Untargeted only: with ``target=`` it returns ``x`` unchanged and warns. Options include
    ``max_iter`` (100), ``epsilon`` (the overshoot, 1e-6) and ``nb_grads`` (10).

    Example:
        >>> import mlsec
        >>> mlsec.attacks.create("art-deepfool", eps=0.3, max_iter=20).params()["max_iter"]
        20

    References:
        S.-M. Moosavi-Dezfooli, A. Fawzi, P. Frossard. DeepFool: a simple and accurate method to
        fool deep neural networks. CVPR 2016. arXiv:1511.04599.

    """

    art_class: ClassVar[str] = "DeepFool"


@register_attack("art-elasticnet")
@dataclass(frozen=True, kw_only=True, init=False)
class ARTElasticNet(ARTAttack):
    """ART's ``ElasticNet`` (EAD, Chen et al. 2018): Carlini-Wagner with an l1 + l2 penalty.

    Options include ``max_iter`` (100), ``binary_search_steps`` (9), ``beta`` (0.001, the l1
    weight), ``confidence`` (0.0) and ``decision_rule`` (``"EN"``, ``"L1"`` or ``"L2"``).

    References:
        P.-Y. Chen, Y. Sharma, H. Zhang, J. Yi, C.-J. Hsieh. EAD: Elastic-Net Attacks to Deep Neural
        Networks via Adversarial Examples. AAAI 2018. arXiv:1709.04114.

    """

    art_class: ClassVar[str] = "ElasticNet"
