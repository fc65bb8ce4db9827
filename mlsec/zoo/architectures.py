"""Architectures of the bundled models."""

from __future__ import annotations

from torch import nn


def mnist_cnn() -> nn.Sequential:
    """Small MNIST CNN: two 5x5 convolutions with max pooling, two linear layers (171k weights)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def mnist_softmax() -> nn.Sequential:
    """Softmax regression on raw pixels (the "shallow softmax classifier" of Goodfellow et al.)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
