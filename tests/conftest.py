"""Shared fixtures: the bundled data and models, and fast settings for every registered attack."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import mlsec
from mlsec.errors import InputError

# Settings that keep each registered attack fast in the contract suite. An attack without an
# entry runs with its defaults.
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 10},
    "apgd": {"steps": 10},
    "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 10, "targets": 3},
    "square": {"queries": 300},
    "eot": {"attack": {"name": "pgd", "steps": 10}, "samples": 2},
    # The ART attacks: settings that hold the contract at linf eps 0.3 after projection.
    "art": {"attack": "ProjectedGradientDescent", "max_iter": 10},
    # A large overshoot: DeepFool's minimal l2 step, scaled up, survives the linf projection.
    "art-deepfool": {"max_iter": 3, "epsilon": 1.0},
    "art-elasticnet": {
        "max_iter": 2,
        "binary_search_steps": 1,
        "initial_const": 100.0,
        "confidence": 10.0,
        "learning_rate": 0.1,
    },
}


def input_error(call: Callable[[], object], *parts: str) -> str:
    """The message of the InputError ``call`` raises: one line, containing every part."""
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


def fast_attack(name: str, **params: Any) -> mlsec.Attack:
    """A registered attack with the contract suite's fast settings, overridden by ``params``."""
    return mlsec.attacks.create(name, **{**FAST_PARAMS.get(name, {}), **params})


@pytest.fixture(scope="session")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    return mlsec.datasets.mnist_sample()


@pytest.fixture
def cnn() -> torch.nn.Module:
    return mlsec.zoo.load("mnist-cnn")
