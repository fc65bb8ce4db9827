"""Robustness assertions for pytest: a model's robustness as a test that can fail.

Example:
    >>> import mlsec
    >>> from mlsec.testing import assert_robust
    >>> x, y = mlsec.datasets.mnist_sample()
    >>> model = mlsec.zoo.load("mnist-cnn")
    >>> _ = assert_robust(model, (x[:100], y[:100]), attack="fgsm", eps=0.02, min_accuracy=0.9)

"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlsec.attacks import create
from mlsec.auditing.report import AuditReport
from mlsec.auditing.run import audit
from mlsec.auditing.suite import Suite, SuiteEntry

__all__ = ["assert_robust"]


def assert_robust(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    attack: str = "pgd",
    eps: float,
    min_accuracy: float,
    batch_size: int = 500,
    **params: Any,
) -> AuditReport:
    """Fail with an ``AssertionError`` unless robust accuracy under ``attack`` at ``eps`` holds.

    Args:
        model: the classifier (logits out).
        data: ``(x, y)`` within ``[0, 1]`` (or the ``bounds`` given in ``params``).
        attack: a registered attack name.
        eps: the budget.
        min_accuracy: the least robust accuracy accepted, a fraction in ``[0, 1]``.
        batch_size: samples per attack call.
        **params: the attack's other parameters (``steps=40``, ``norm="l2"``, ...).

    Returns:
        The :class:`AuditReport`, for further assertions.

    """
    configured = create(attack, eps=eps, **params)
    suite = Suite(
        name="assert_robust", entries=(SuiteEntry(label=attack, attack=configured, eps=(eps,)),)
    )
    report = audit(model, data, suite=suite, batch_size=batch_size, sanity_checks=False)
    accuracy = report.worst_case[eps]
    if accuracy < min_accuracy:
        raise AssertionError(
            f"robust accuracy under {attack} at eps {eps:g} is {accuracy:.4f} "
            f"({round(accuracy * report.n)} of {report.n} samples), below the required "
            f"{min_accuracy:.4f}; clean accuracy {report.clean_accuracy:.4f}"
        )
    return report
