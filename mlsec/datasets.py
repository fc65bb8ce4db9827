"""Bundled data: MNIST test images shipped inside the package, split as the bundled models use it.

The images are from the MNIST test set (Y. LeCun, C. Cortes and C. J. C. Burges,
http://yann.lecun.com/exdb/mnist/), licensed under Creative Commons Attribution-Share Alike 3.0.
Bundled models are trained on test images 0-7999 (:func:`mnist_members`); images 8000-9999
(:func:`mnist_sample`) are never seen in training, so they are the held-out data of every audit and
the non-members of the privacy audit. Both are stored as compressed uint8 and checked against a
SHA-256 digest on every load.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import torch

__all__ = [
    "MNIST_MEMBERS_SHA256",
    "MNIST_SAMPLE_SHA256",
    "mnist_members",
    "mnist_members_matched",
    "mnist_sample",
]

MNIST_SAMPLE_SHA256 = "d1ba61f71fe54765ba9280780b3ba6b91fabd99d9ac173fabd20f82085938e7b"
MNIST_MEMBERS_SHA256 = "856ec361d8d4e486d42caa557deb5c3dfa0f7356428d15b6173079b5049ceb6a"


def mnist_sample() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the bundled MNIST sample: test images 8000-9999, held out from every bundled model.

    Returns:
        ``(x, y)``: float32 images ``[2000, 1, 28, 28]`` in ``[0, 1]`` and int64 labels ``[2000]``.

    Example:
        >>> x, y = mnist_sample()
        >>> tuple(x.shape), x.dtype, float(x.min()), float(x.max()), tuple(y.shape)
        ((2000, 1, 28, 28), torch.float32, 0.0, 1.0, (2000,))

    """
    return _load("mnist_sample.npz", MNIST_SAMPLE_SHA256)


def mnist_members() -> tuple[torch.Tensor, torch.Tensor]:
    """Return MNIST test images 0-7999: the data every bundled model was trained on.

    The members of the default privacy audit (:func:`mnist_sample` holds the non-members).

    Returns:
        ``(x, y)``: float32 images ``[8000, 1, 28, 28]`` in ``[0, 1]`` and int64 labels ``[8000]``.

    Example:
        >>> x, y = mnist_members()
        >>> tuple(x.shape), tuple(y.shape), y[:5].tolist()
        ((8000, 1, 28, 28), (8000,), [7, 2, 1, 0, 4])

    """
    return _load("mnist_members.npz", MNIST_MEMBERS_SHA256)


def mnist_members_matched() -> tuple[torch.Tensor, torch.Tensor]:
    """Return MNIST test images 5000-7999: the members written by the sample's pool of writers.

    MNIST's test set has two halves from different writers: images 0-4999 come from NIST's Special
    Database 3 (Census Bureau employees; cleaner, easier), images 5000-9999 from Special Database 1
    (high-school students). The held-out sample (8000-9999) lies in the second half only, so a
    membership attack comparing all 8,000 members with it would partly measure the difference
    between the halves. These 3,000 members come from the same half as the non-members; the
    default privacy audit scores them.

    Example:
        >>> x, y = mnist_members_matched()
        >>> tuple(x.shape), bool((x == mnist_members()[0][5000:]).all())
        ((3000, 1, 28, 28), True)

    """
    x, y = mnist_members()
    return x[5000:].clone(), y[5000:].clone()


def _load(file: str, sha256: str) -> tuple[torch.Tensor, torch.Tensor]:
    with resources.files("mlsec").joinpath(f"_data/{file}").open("rb") as fh:
        arrays = np.load(fh)
        images, labels = arrays["x"], arrays["y"]
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"the bundled MNIST data ({file}) is corrupted; reinstall mlsec")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
