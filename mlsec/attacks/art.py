"""Any evasion attack of the Adversarial Robustness Toolbox (ART) behind mlsec's Attack interface.

``ARTAttack("CarliniL2Method", eps=0.5, norm="l2", max_iter=10)`` runs ART's attack through an ART
``PyTorchClassifier`` built around the model at call time, and hands the answer to the base class,
which projects it onto the eps ball and the bounds like every mlsec attack's. Minimum-norm attacks
(Carlini-Wagner, DeepFool, ElasticNet, HopSkipJump) have no budget of their own; the projection
makes their answers admissible, so they are scored at the budget like any other attack.

ART is imported when an ART attack is first built, not when mlsec is imported: the import takes
seconds and writes ``~/.art/config.json``.

References:
    M.-I. Nicolae et al. Adversarial Robustness Toolbox v1.0.0. arXiv:1807.01069.
    https://github.com/Trusted-AI/adversarial-robustness-toolbox

"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mlsec.attacks.base import Attack, Perturbation, Problem
from mlsec.attacks.registry import register_attack
from mlsec.core.threat import Norm
from mlsec.errors import InputError

__all__ = [
    "ARTAttack",
    "ARTDeepFool",
    "ARTElasticNet",
    "art_attack_names",
]

Options = tuple[tuple[str, Any], ...]

# ART parameters mlsec sets itself, and from what.
_SET_BY_MLSEC = {
    "estimator": "the model passed at call time",
    "classifier": "the model passed at call time",
    "eps": "eps=",
    "norm": "norm=",
    "targeted": "the call's target= argument",
    "verbose": "mlsec (always False)",
}
# mlsec's own parameters: an ART option of the same name could not be told apart from them.
_MLSEC_FIELDS = {"attack", "options", "eps", "norm", "bounds", "seed", "name", "label"}

# ART evasion attacks that accept a PyTorch classifier but do not turn a batch of images and
# labels into adversarial examples of it, with the reason.
_UNSUITED = {
    "AdversarialPatch": "it returns a patch, not adversarial examples",
    "AdversarialPatchNumpy": "it returns a patch, not adversarial examples",
    "AdversarialPatchPyTorch": "it returns a patch, not adversarial examples",
    "AdversarialPatchTensorFlowV2": "it returns a patch, not adversarial examples",
    "FeatureAdversariesNumpy": "its y is a guide image, not labels",
    "FeatureAdversariesPyTorch": "its y is a guide image, not labels",
    "FeatureAdversariesTensorFlowV2": "it needs TensorFlow",
    "ProjectedGradientDescentTensorFlowV2": "it needs TensorFlow (use ProjectedGradientDescent)",
    "MalwareGDTensorFlow": "it attacks malware classifiers in TensorFlow",
    "FrameSaliencyAttack": "it attacks videos through another attack object",
    "OverTheAirFlickeringPyTorch": "it attacks videos",
    "LaserAttack": "it needs its own laser-beam and image generators",
    "LowProFool": "it attacks tabular data and needs fitted feature importances",
    "GRAPHITEBlackbox": "it needs masks and target images",
    "GRAPHITEWhiteboxPyTorch": "it needs masks and target images",
    "OverloadPyTorch": "it attacks object detectors",
    "SNAL": "it attacks object detectors",
    "Wasserstein": "its eps is a Wasserstein radius and its norm a string, not mlsec's lp budget",
}

# ART attacks whose requirements omit the gradients that an inner attack computes.
_GRADIENTS_INSIDE = {
    "AutoAttack",
    "UniversalPerturbation",
    "TargetedUniversalPerturbation",
}

# ART attacks that draw their starting point from an unseeded np.random.RandomState(), so that
# mlsec gives them seeded starting points (``x_adv_init``) instead.
_UNSEEDED_START = {"HopSkipJump", "BoundaryAttack"}
# Uniform-noise draws per sample when looking for such a starting point.
_START_DRAWS = 10


def _art() -> Any:
    """ART's evasion-attack module, imported on first use."""
    import art.attacks.evasion

    return art.attacks.evasion


def art_attack_names() -> list[str]:
    """The names of ART's evasion attacks that :class:`ARTAttack` can run, sorted.

    Example:
        >>> {"CarliniL2Method", "DeepFool", "HopSkipJump"} <= set(art_attack_names())
        True

    """
    return sorted(name for name in _evasion_classes() if _unsuited(name) is None)


@functools.cache
def _evasion_classes() -> dict[str, Any]:
    from art.attacks.attack import EvasionAttack

    module = _art()
    return {
        name: value
        for name in dir(module)
        if inspect.isclass(value := getattr(module, name)) and issubclass(value, EvasionAttack)
    }


@functools.cache
def _unsuited(name: str) -> str | None:
    """Why ART's ``name`` cannot run behind mlsec, or ``None`` when it can."""
    from art.attacks.attack import EvasionAttack
    from art.estimators.classification import PyTorchClassifier

    if name in _UNSUITED:
        return _UNSUITED[name]
    requirements = _evasion_classes()[name]._estimator_requirements
    if not EvasionAttack.is_estimator_valid(_stub_classifier(), requirements):
        wanted = ", ".join(
            " or ".join(r.__name__ for r in req) if isinstance(req, tuple) else req.__name__
            for req in requirements
            if not (isinstance(req, type) and issubclass(PyTorchClassifier, req))
        )
        return f"it needs another kind of estimator ({wanted or 'see its documentation'})"
    return None


@functools.cache
def _stub_classifier() -> Any:
    """A tiny PyTorch classifier that lets ART check an attack's settings at construction."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=nn.Sequential(nn.Flatten(), nn.Linear(16, 10)),
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 4, 4),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def _art_class(name: object) -> Any:
    """ART's evasion attack called ``name``; one-line :class:`InputError` if it cannot run."""
    if not isinstance(name, str) or not name:
        raise InputError(
            f"attack must be the name of an ART evasion attack, such as 'DeepFool' (got {name!r})"
        )
    classes = _evasion_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.5)
        close += [n for n in classes if n.lower() == name.lower() and n not in close]
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise InputError(
            f"ART has no evasion attack {name!r}{hint} (see mlsec.attacks.art.art_attack_names())"
        )
    reason = _unsuited(name)
    if reason is not None:
        raise InputError(f"ART's {name} cannot run behind mlsec: {reason}")
    return classes[name]


def _init_parameters(cls: Any) -> dict[str, inspect.Parameter]:
    parameters = dict(inspect.signature(cls.__init__).parameters)
    parameters.pop("self", None)
    return parameters


def _frozen_value(key: str, value: Any) -> Any:
    """``value`` as hashable plain data (lists as tuples); one-line error for anything else."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return tuple(_frozen_value(key, v) for v in value)
    raise InputError(
        f"ART option {key!r} must be a number, a string, a boolean or a list of them "
        f"(got {value!r}); leave it out for ART's default"
    )


def _thawed(value: Any) -> Any:
    """What ART gets: tuples back as lists."""
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


@functools.lru_cache(maxsize=1024)
def _check_with_art(name: str, options: Options, eps: float, norm: Norm) -> None:
    """Build ART's attack on a stub classifier, so that ART checks the settings now."""
    cls = _art_class(name)
    # eps 0 never reaches ART (the answer is x), and some ART attacks refuse it: check with 1.
    kwargs = _mlsec_settings(cls, eps=eps or 1.0, norm=norm, targeted=False, batch=1)
    try:
        cls(_stub_classifier(), **{**kwargs, **{k: _thawed(v) for k, v in options}})
    except (ValueError, TypeError) as error:
        raise InputError(f"ART's {name} refuses these settings: {_one_line(error)}") from None
    except ImportError as error:
        raise InputError(f"ART's {name} needs a package that is missing: {error}") from None


def _mlsec_settings(
    cls: Any, *, eps: float, norm: Norm, targeted: bool, batch: int
) -> dict[str, Any]:
    """The arguments mlsec gives ART's ``cls``: those of its parameters that mlsec sets."""
    accepted = _init_parameters(cls)
    settings: dict[str, Any] = {
        "eps": float(eps),
        "norm": np.inf if norm == "linf" else 2,
        "targeted": targeted,
        "verbose": False,
    }
    if "batch_size" in accepted:
        # The whole batch at once, like every mlsec attack, or ART's default where larger (the
        # decision-based attacks batch their probes of one sample by it); an option overrides it.
        default = accepted["batch_size"].default
        settings["batch_size"] = max(batch, default if isinstance(default, int) else 1)
    return {key: value for key, value in settings.items() if key in accepted}


def _gradient_free(name: str) -> bool:
    from art.estimators.classification.classifier import ClassGradientsMixin
    from art.estimators.estimator import LossGradientsMixin

    if name in _GRADIENTS_INSIDE:
        return False
    gradients = (ClassGradientsMixin, LossGradientsMixin)
    for requirement in _evasion_classes()[name]._estimator_requirements:
        alternatives = requirement if isinstance(requirement, tuple) else (requirement,)
        if all(isinstance(a, type) and issubclass(a, gradients) for a in alternatives):
            return False
    return True


class _CountingModel(nn.Module):
    """What ART's classifier wraps: the model's float32 logits, counting the samples it sees.

    The model is reached through ``forward`` (the problem's, which casts to the model's dtype), not
    held as a submodule, so ART's ``.to(device)`` and ``.train()`` calls never touch it.
    """

    def __init__(
        self, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device
    ) -> None:
        super().__init__()
        self.model_forward = forward
        self.model_device = device
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += x.shape[0]
        return self.model_forward(x.to(self.model_device)).float().to(x.device)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed numpy's and torch's global generators (ART draws from both); restore them after."""
    state = np.random.get_state()
    cuda = device.type == "cuda"
    try:
        with torch.random.fork_rng(devices=[device] if cuda else []):
            np.random.seed(seed % 2**32)
            # Only the generators fork_rng restores (torch.manual_seed would seed every GPU).
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            yield
    finally:
        np.random.set_state(state)


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
            tuple(sorted((str(k), _frozen_value(str(k), v)) for k, v in merged.items())),
        )
        self.__post_init__()

    def __post_init__(self) -> None:
        super().__post_init__()
        cls = _art_class(self.attack)
        accepted = _init_parameters(cls)
        open_signature = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        for key, _ in self.options:
            if key in _SET_BY_MLSEC and key in accepted:
                raise InputError(
                    f"ART's {self.attack} gets {key!r} from {_SET_BY_MLSEC[key]}; "
                    "do not give it as an option"
                )
            if key in _MLSEC_FIELDS:
                raise InputError(
                    f"ART's option {key!r} cannot be set through mlsec ({key!r} is mlsec's own "
                    "parameter)"
                )
            if key not in accepted and not open_signature:
                names = sorted(set(accepted) - set(_SET_BY_MLSEC))
                raise InputError(
                    f"ART's {self.attack} has no parameter {key!r}; its parameters: "
                    f"{', '.join(names)}"
                )
        _check_with_art(self.attack, self.options, float(self.eps), self.norm)
        # Per instance: the generic attack's answer depends on which ART class it runs.
        object.__setattr__(self, "gradient_free", _gradient_free(self.attack))

    def params(self) -> dict[str, Any]:
        """The hyperparameters as plain data, with the ART options flattened in."""
        common = {f.name: getattr(self, f.name) for f in dataclasses.fields(Attack)}
        return {"attack": self.attack, **common, **{k: _thawed(v) for k, v in self.options}}

    def _perturb(self, problem: Problem) -> Perturbation:
        from art.estimators.classification import PyTorchClassifier

        x, targeted = problem.x, problem.target is not None
        cls = _art_class(self.attack)
        accepted = _init_parameters(cls)
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
        counting = _CountingModel(problem.forward, x.device)
        with _cuda_device(x.device):
            classifier = PyTorchClassifier(
                model=counting,
                loss=nn.CrossEntropyLoss(),
                input_shape=tuple(x.shape[1:]),
                nb_classes=classes,
                clip_values=self.bounds,
                # ART computes on the CPU unless told "gpu"; the wrapper reaches other devices.
                device_type="gpu" if x.device.type == "cuda" else "cpu",
            )
        kwargs = _mlsec_settings(
            cls, eps=self.eps, norm=self.norm, targeted=targeted, batch=x.shape[0]
        )
        kwargs.update({k: _thawed(v) for k, v in self.options})
        x_np = x.detach().float().cpu().numpy().copy()
        labels = problem.labels.cpu().numpy().copy()
        extra: dict[str, Any] = {}
        with _seeded(self.seed, x.device), _cuda_device(x.device):
            if self.attack in _UNSEEDED_START:
                extra["x_adv_init"] = _seeded_start(problem, counting).float().cpu().numpy()
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


@contextmanager
def _cuda_device(device: torch.device) -> Iterator[None]:
    """ART places tensors on the current CUDA device: make it ``device`` for the duration."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


def _seeded_start(
    problem: Problem, forward: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Seeded starting points for the decision-based attacks that would draw unseeded ones.

    Per sample, the first of a few uniform-noise images (from the problem's generator) that the
    model does not classify as it classifies ``x`` (targeted: classifies as the target); where none
    is, an input of the batch that qualifies; where none is either, ``x`` (ART then draws its own).
    """
    x = problem.x
    shape = (-1, *([1] * (x.dim() - 1)))
    with torch.no_grad():
        own = forward(x).argmax(1)
        start = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

        def qualifies(predicted: torch.Tensor) -> torch.Tensor:
            return predicted == problem.target if problem.target is not None else predicted != own

        for _ in range(_START_DRAWS):
            noise = torch.rand(x.shape, generator=problem.generator, device=x.device)
            noise = (problem.low + (problem.high - problem.low) * noise).to(x.dtype)
            new = qualifies(forward(noise).argmax(1)) & ~found
            start = torch.where(new.view(shape), noise, start)
            found |= new
            if bool(found.all()):
                return start
        # Another input of the batch: the first that qualifies for each sample still without one.
        fits = (
            own[None, :] == problem.target[:, None]
            if problem.target is not None
            else own[None, :] != own[:, None]
        )
        donor = fits.float().argmax(1)
        use = ~found & fits.any(1)
        return torch.where(use.view(shape), x[donor], start)


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
