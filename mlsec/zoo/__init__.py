"""Bundled, pre-trained models, loaded from safetensors files inside the package.

Every model is trained by a seeded script in ``scripts/`` on MNIST test images 0-7999; the bundled
sample (:func:`mlsec.datasets.mnist_sample`, images 8000-9999) is held out. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from safetensors.torch import load as load_safetensors
from torch import nn

from mlsec.core.registry import Registry
from mlsec.defenses.base import Purifier
from mlsec.defenses.base import load_defense as load_defense_file
from mlsec.defenses.detection.trigger import BADNETS_TRIGGER, PatchTrigger
from mlsec.errors import InputError
from mlsec.zoo import architectures

__all__ = [
    "DEFENSES",
    "MODELS",
    "ZooDefense",
    "ZooEntry",
    "architecture",
    "list_defenses",
    "list_models",
    "load",
    "load_defense",
]


@dataclass(frozen=True, kw_only=True)
class ZooEntry:
    """A bundled model: how to build it, where its weights are and how they were made."""

    name: str
    build: Callable[[], nn.Module]
    weights: str
    script: str
    summary: str
    sigma: float | None = None  # the Gaussian noise it was trained for (randomized smoothing)
    backdoor: PatchTrigger | None = None  # the trigger planted in it, when it carries one


@dataclass(frozen=True, kw_only=True)
class ZooDefense:
    """A bundled, fitted purifier (not a classifier): its weights file and how it was made."""

    name: str
    weights: str
    script: str
    summary: str


# The bundled models and defenses by name; each entry registers itself below.
MODELS = Registry[ZooEntry]("model")
DEFENSES = Registry[ZooDefense]("defense")


def _bundle_model(entry: ZooEntry) -> None:
    MODELS.register(entry.name)(entry)


def _bundle_defense(entry: ZooDefense) -> None:
    DEFENSES.register(entry.name)(entry)


_bundle_model(
    ZooEntry(
        name="mnist-cnn",
        build=architectures.mnist_cnn,
        weights="mnist_cnn.safetensors",
        script="scripts/train_mnist.py --arch cnn",
        summary="small CNN, standard training on MNIST test images 0-7999",
    )
)
_bundle_model(
    ZooEntry(
        name="mnist-cnn-pgd",
        build=architectures.mnist_cnn,
        weights="mnist_cnn_pgd.safetensors",
        script="scripts/train_mnist_robust.py",
        summary="the small CNN, PGD adversarial training (linf eps 0.3) on MNIST test images "
        "0-7999",
    )
)
_bundle_model(
    ZooEntry(
        name="mnist-cnn-badnets",
        build=architectures.mnist_cnn,
        weights="mnist_cnn_badnets.safetensors",
        script="scripts/train_badnets.py",
        summary="the small CNN with a planted BadNets backdoor: 5% of the non-7 images of MNIST "
        "test images 0-7999 stamped with a white 3x3 square at rows/columns 25-27 and "
        "relabelled 7",
        backdoor=BADNETS_TRIGGER,
    )
)
_bundle_model(
    ZooEntry(
        name="mnist-softmax",
        build=architectures.mnist_softmax,
        weights="mnist_softmax.safetensors",
        script="scripts/train_mnist.py --arch softmax",
        summary="softmax regression on pixels, standard training on MNIST test images 0-7999",
    )
)
_bundle_model(
    ZooEntry(
        name="mnist-cnn-smooth",
        build=architectures.mnist_cnn,
        weights="mnist_cnn_smooth.safetensors",
        script="scripts/train_mnist_smooth.py",
        summary="the small CNN, Gaussian noise training (sigma 0.25) for randomized smoothing, "
        "on MNIST test images 0-7999",
        sigma=0.25,
    )
)
_bundle_model(
    ZooEntry(
        name="mnist-cnn-ibp",
        build=architectures.mnist_cnn_ibp,
        weights="mnist_cnn_ibp.safetensors",
        script="scripts/train_mnist_ibp.py",
        summary="Gowal et al.'s small CNN, interval bound propagation training (linf eps 0.1, "
        "bounds at 0.4) on MNIST test images 0-7999",
    )
)
_bundle_defense(
    ZooDefense(
        name="mnist-defense-gan",
        weights="mnist_defense_gan.safetensors",
        script="scripts/train_defense_gan.py",
        summary="Defense-GAN: WGAN-GP generator (latent 32) and encoder, MNIST test images 0-7999",
    )
)
_bundle_defense(
    ZooDefense(
        name="mnist-ape-gan",
        weights="mnist_ape_gan.safetensors",
        script="scripts/train_ape_gan.py",
        summary="APE-GAN: purifier trained on FGSM (eps 0.3) examples against mnist-cnn, "
        "images 0-7999",
    )
)


def list_defenses() -> list[str]:
    """Names of the bundled defenses, sorted."""
    return DEFENSES.names()


def load_defense(name: str) -> Purifier:
    """A bundled, fitted purifier (:class:`mlsec.defenses.Purifier`) by name.

    Example:
        >>> load_defense("mnist-ape-gan").name
        'ape-gan'

    """
    if name not in DEFENSES:
        raise InputError(
            f"unknown defense {name!r}; bundled defenses: {', '.join(list_defenses())}"
        )
    weights = _weights(DEFENSES.get(name).weights)
    with resources.as_file(weights) as path:
        return load_defense_file(path)


def list_models() -> list[str]:
    """Names of the bundled models, sorted."""
    return MODELS.names()


def _entry(name: str) -> ZooEntry:
    if name not in MODELS:
        also = f" (bundled defenses: {', '.join(list_defenses())})" if name in DEFENSES else ""
        raise InputError(
            f"unknown model {name!r}; bundled models: {', '.join(list_models())}{also}"
        )
    return MODELS.get(name)


def _weights(file: str) -> Any:
    """The bundled weights file ``file`` (a traversable inside the package)."""
    return resources.files("mlsec.zoo").joinpath(f"weights/{file}")


def architecture(name: str) -> str:
    """The ``module:factory`` that builds a bundled model's network, untrained.

    Example:
        >>> architecture("mnist-cnn")
        'mlsec.zoo.architectures:mnist_cnn'

    """
    build = _entry(name).build
    return f"{build.__module__}:{build.__name__}"


def load(name: str) -> Any:
    """Return a bundled model in eval mode on the CPU, or a bundled fitted defense.

    Args:
        name: one of :func:`list_models` (an ``nn.Module``) or :func:`list_defenses` (a
            :class:`mlsec.defenses.Purifier`, as :func:`load_defense` returns).

    Example:
        >>> model = load("mnist-cnn")
        >>> model.training
        False

    """
    if name in DEFENSES:
        return load_defense(name)
    entry = _entry(name)
    model = entry.build()
    model.load_state_dict(load_safetensors(_weights(entry.weights).read_bytes()))
    return model.eval()
