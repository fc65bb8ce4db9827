"""Which of ART's evasion attacks mlsec can run, and what each needs.

ART is imported on first use, not when mlsec is imported: the import takes seconds and writes
``~/.art/config.json``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any

from torch import nn

from mlsec.errors import InputError

__all__ = [
    "art_attack_names",
    "art_class_named",
    "art_evasion",
    "evasion_classes",
    "gradient_free",
    "init_parameters",
    "stub_classifier",
    "unsuited",
]

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


def art_evasion() -> Any:
    """ART's evasion-attack module, imported on first use."""
    import art.attacks.evasion

    return art.attacks.evasion


def art_attack_names() -> list[str]:
    """The names of ART's evasion attacks that :class:`ARTAttack` can run, sorted.

    Example:
        >>> {"CarliniL2Method", "DeepFool", "HopSkipJump"} <= set(art_attack_names())
        True

    """
    return sorted(name for name in evasion_classes() if unsuited(name) is None)


@functools.cache
def evasion_classes() -> dict[str, Any]:
    """ART's evasion attack classes by name."""
    from art.attacks.attack import EvasionAttack

    module = art_evasion()
    return {
        name: value
        for name in dir(module)
        if inspect.isclass(value := getattr(module, name)) and issubclass(value, EvasionAttack)
    }


@functools.cache
def unsuited(name: str) -> str | None:
    """Why ART's ``name`` cannot run behind mlsec, or ``None`` when it can."""
    from art.attacks.attack import EvasionAttack
    from art.estimators.classification import PyTorchClassifier

    if name in _UNSUITED:
        return _UNSUITED[name]
    requirements = evasion_classes()[name]._estimator_requirements
    if not EvasionAttack.is_estimator_valid(stub_classifier(), requirements):
        wanted = ", ".join(
            " or ".join(r.__name__ for r in req) if isinstance(req, tuple) else req.__name__
            for req in requirements
            if not (isinstance(req, type) and issubclass(PyTorchClassifier, req))
        )
        return f"it needs another kind of estimator ({wanted or 'see its documentation'})"
    return None


@functools.cache
def stub_classifier() -> Any:
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


def art_class_named(name: object) -> Any:
    """ART's evasion attack called ``name``; one-line :class:`InputError` if it cannot run."""
    if not isinstance(name, str) or not name:
        raise InputError(
            f"attack must be the name of an ART evasion attack, such as 'DeepFool' (got {name!r})"
        )
    classes = evasion_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.5)
        close += [n for n in classes if n.lower() == name.lower() and n not in close]
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise InputError(
            f"ART has no evasion attack {name!r}{hint} (see mlsec.attacks.art.art_attack_names())"
        )
    reason = unsuited(name)
    if reason is not None:
        raise InputError(f"ART's {name} cannot run behind mlsec: {reason}")
    return classes[name]


def init_parameters(cls: Any) -> dict[str, inspect.Parameter]:
    """The parameters of ``cls``'s constructor, without ``self``."""
    parameters = dict(inspect.signature(cls.__init__).parameters)
    parameters.pop("self", None)
    return parameters


def gradient_free(name: str) -> bool:
    """Whether ART's ``name`` reads only the model's outputs (from its estimator requirements)."""
    from art.estimators.classification.classifier import ClassGradientsMixin
    from art.estimators.estimator import LossGradientsMixin

    if name in _GRADIENTS_INSIDE:
        return False
    gradients = (ClassGradientsMixin, LossGradientsMixin)
    for requirement in evasion_classes()[name]._estimator_requirements:
        alternatives = requirement if isinstance(requirement, tuple) else (requirement,)
        if all(isinstance(a, type) and issubclass(a, gradients) for a in alternatives):
            return False
    return True
