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

from mlsec.errors import InputError
from mlsec.zoo import architectures

__all__ = ["ZooEntry", "architecture", "list_defenses", "list_models", "load", "load_defense"]


@dataclass(frozen=True, kw_only=True)
class ZooEntry:
    """A bundled model: how to build it, where its weights are and how they were made."""

    name: str
    build: Callable[[], nn.Module]
    weights: str
    script: str
    summary: str


_ENTRIES = {
    entry.name: entry
    for entry in (
        ZooEntry(
            name="mnist-cnn",
            build=architectures.mnist_cnn,
            weights="mnist_cnn.safetensors",
            script="scripts/train_mnist.py --arch cnn",
            summary="small CNN, standard training on MNIST test images 0-7999",
        ),
        ZooEntry(
            name="mnist-cnn-pgd",
            build=architectures.mnist_cnn,
            weights="mnist_cnn_pgd.safetensors",
            script="scripts/train_mnist_robust.py",
            summary="the small CNN, PGD adversarial training (linf eps 0.3) on MNIST test images "
            "0-7999",
        ),
        ZooEntry(
            name="mnist-softmax",
            build=architectures.mnist_softmax,
            weights="mnist_softmax.safetensors",
            script="scripts/train_mnist.py --arch softmax",
            summary="softmax regression on pixels, standard training on MNIST test images 0-7999",
        ),
    )
}


# Bundled purifiers (fitted defenses, not classifiers): name -> (weights file, training script).
_DEFENSES = {
    "mnist-defense-gan": (
        "mnist_defense_gan.safetensors",
        "scripts/train_defense_gan.py",
        "Defense-GAN: WGAN-GP generator (latent 32) and encoder, MNIST test images 0-7999",
    ),
    "mnist-ape-gan": (
        "mnist_ape_gan.safetensors",
        "scripts/train_ape_gan.py",
        "APE-GAN: purifier trained on FGSM (eps 0.3) examples against mnist-cnn, images 0-7999",
    ),
}


def list_defenses() -> list[str]:
    """Names of the bundled defenses, sorted."""
    return sorted(_DEFENSES)


def load_defense(name: str) -> Any:
    """A bundled, fitted purifier (:class:`mlsec.defenses.Purifier`) by name.

    Example:
        >>> load_defense("mnist-ape-gan").name
        'ape-gan'

    """
    from mlsec.defenses.base import load_defense as load_file

    if name not in _DEFENSES:
        raise InputError(
            f"unknown defense {name!r}; bundled defenses: {', '.join(list_defenses())}"
        )
    with resources.as_file(
        resources.files("mlsec.zoo").joinpath(f"weights/{_DEFENSES[name][0]}")
    ) as path:
        return load_file(path)


def list_models() -> list[str]:
    """Names of the bundled models, sorted."""
    return sorted(_ENTRIES)


def _entry(name: str) -> ZooEntry:
    try:
        return _ENTRIES[name]
    except KeyError:
        also = f" (bundled defenses: {', '.join(list_defenses())})" if name in _DEFENSES else ""
        raise InputError(
            f"unknown model {name!r}; bundled models: {', '.join(list_models())}{also}"
        ) from None


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
    if name in _DEFENSES:
        return load_defense(name)
    entry = _entry(name)
    model = entry.build()
    blob = resources.files("mlsec.zoo").joinpath(f"weights/{entry.weights}").read_bytes()
    model.load_state_dict(load_safetensors(blob))
    return model.eval()
