"""Bundled data: 2,000 held-out MNIST test images, shipped inside the package.

The images are numbers 8000-9999 of the MNIST test set (Y. LeCun, C. Cortes and C. J. C. Burges,
http://yann.lecun.com/exdb/mnist/), licensed under Creative Commons Attribution-Share Alike 3.0.
They are stored as compressed uint8 and checked against a SHA-256 digest on every load. Bundled
models are trained on test images 0-7999, so these 2,000 are never seen in training.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import torch

__all__ = ["MNIST_SAMPLE_SHA256", "mnist_sample"]

MNIST_SAMPLE_SHA256 = "d1ba61f71fe54765ba9280780b3ba6b91fabd99d9ac173fabd20f82085938e7b"


def mnist_sample() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the bundled MNIST sample.

    Returns:
        ``(x, y)``: float32 images ``[2000, 1, 28, 28]`` in ``[0, 1]`` and int64 labels ``[2000]``.

    Example:
        >>> x, y = mnist_sample()
        >>> tuple(x.shape), x.dtype, float(x.min()), float(x.max()), tuple(y.shape)
        ((2000, 1, 28, 28), torch.float32, 0.0, 1.0, (2000,))

    """
    with resources.files("mlsec").joinpath("_data/mnist_sample.npz").open("rb") as fh:
        arrays = np.load(fh)
        images, labels = arrays["x"], arrays["y"]
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    if digest != MNIST_SAMPLE_SHA256:
        raise RuntimeError("the bundled MNIST sample is corrupted; reinstall mlsec")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
