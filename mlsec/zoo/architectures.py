"""Architectures of the bundled models."""

from __future__ import annotations

from torch import nn


def mnist_cnn() -> nn.Sequential:
    """Small MNIST CNN: two 5x5 convolutions with max pooling, two linear layers (171k weights)."""
    return _cnn(16, 32, 100)


def mnist_softmax() -> nn.Sequential:
    """Softmax regression on raw pixels (the "shallow softmax classifier" of Goodfellow et al.)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def mnist_cnn_wide() -> nn.Sequential:
    """The CNN with twice the filters and hidden units (32/64 filters, 200 hidden; 680k weights).

    Capacity helps adversarial training (Madry et al.): with Adam (``scripts/train_mnist_robust.py
    --arch wide --optimizer adam --lr 1e-3 --batch-size 64 --eps-ramp 3``) it reaches 83.9%
    PGD-40 accuracy at eps 0.3 where the small CNN plateaus at 79.3%.
    """
    return _cnn(32, 64, 200)


def mnist_cnn_ibp() -> nn.Sequential:
    """The small CNN of Gowal et al.'s IBP paper: strided convolutions, no pooling (330k weights).

    Conv(16, 4x4, stride 2), Conv(32, 4x4), Linear(100), Linear(10), ReLU between: every layer
    interval bounds pass through, and ART's interval classifier can bound it too.
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 10 * 10, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def _cnn(first: int, second: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, first, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(first, second, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(second * 7 * 7, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )
