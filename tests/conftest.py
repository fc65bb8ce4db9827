"""Shared fixtures: the bundled data and models, and fast settings for every registered attack."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mlsec

# Settings that keep each registered attack fast in the contract suite. An attack without an
# entry runs with its defaults.
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 10},
    "apgd": {"steps": 10},
    "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 10, "targets": 3},
    "square": {"queries": 300},
}


def fast_attack(name: str, **params: Any) -> mlsec.Attack:
    """A registered attack with the contract suite's fast settings, overridden by ``params``."""
    return mlsec.attacks.create(name, **{**FAST_PARAMS.get(name, {}), **params})


@pytest.fixture(scope="session")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    return mlsec.datasets.mnist_sample()


@pytest.fixture
def cnn() -> torch.nn.Module:
    return mlsec.zoo.load("mnist-cnn")
