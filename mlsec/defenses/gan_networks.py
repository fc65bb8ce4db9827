"""Small networks for GAN-based defenses on 28 x 28 grey images (MNIST).

- :func:`mnist_generator`: latent ``z`` -> image in ``[0, 1]`` (DCGAN-style, two transposed
  convolutions; batch norm in the generator only).
- :func:`mnist_critic`: image -> one unbounded score (a WGAN-GP critic: no batch norm, whose
  per-sample statistics would break the gradient penalty).

Both are kept small so that the shipped weights stay well under 3 MB and Defense-GAN's projection
(hundreds of generator passes per image) stays fast.
"""

from __future__ import annotations

from torch import nn

from mlsec.errors import InputError

__all__ = ["mnist_critic", "mnist_generator"]


def _check_latent(latent: int) -> None:
    if not isinstance(latent, int) or isinstance(latent, bool) or latent < 1:
        raise InputError(f"latent must be an integer >= 1 (got {latent!r})")


def mnist_generator(latent: int = 32, width: int = 64) -> nn.Module:
    """A generator from ``[B, latent]`` to ``[B, 1, 28, 28]`` images in ``[0, 1]``.

    Example:
        >>> import torch
        >>> generator = mnist_generator(latent=8).eval()
        >>> image = generator(torch.zeros(2, 8))
        >>> tuple(image.shape), bool(image.min() >= 0), bool(image.max() <= 1)
        ((2, 1, 28, 28), True, True)

    """
    _check_latent(latent)
    return nn.Sequential(
        nn.Linear(latent, width * 7 * 7),
        nn.BatchNorm1d(width * 7 * 7),
        nn.ReLU(),
        nn.Unflatten(1, (width, 7, 7)),
        nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1),  # 14 x 14
        nn.BatchNorm2d(width // 2),
        nn.ReLU(),
        nn.ConvTranspose2d(width // 2, 1, 4, stride=2, padding=1),  # 28 x 28
        nn.Sigmoid(),
    )


def mnist_critic(width: int = 64) -> nn.Module:
    """A WGAN-GP critic from ``[B, 1, 28, 28]`` images to scores ``[B]``."""
    return nn.Sequential(
        nn.Conv2d(1, width // 2, 4, stride=2, padding=1),  # 14 x 14
        nn.LeakyReLU(0.2),
        nn.Conv2d(width // 2, width, 4, stride=2, padding=1),  # 7 x 7
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(width * 7 * 7, 1),
        nn.Flatten(0),
    )
