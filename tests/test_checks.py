"""Sanity checks: each sign of gradient masking, planted in a small model, is flagged."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import mlsec
from mlsec.attacks import FGSM, PGD, Attack, Perturbation, Problem
from mlsec.auditing.suite import Suite, SuiteEntry

Data = tuple[torch.Tensor, torch.Tensor]


def run(
    model: nn.Module, data: Data, suite: Suite | str = "quick", eps: list[float] | None = None
) -> list[str]:
    x, y = data
    return mlsec.audit(model, (x[:200], y[:200]), suite=suite, eps=eps or [0.1, 0.2]).warnings


def flagged(warnings: list[str], phrase: str) -> bool:
    return any(phrase in w for w in warnings)


def test_bundled_model_raises_no_warning(mnist: Data, cnn: nn.Module) -> None:
    x, y = mnist
    report = mlsec.audit(cnn, (x[:300], y[:300]), suite="default")
    assert report.warnings == []


def test_train_mode_is_flagged(mnist: Data, cnn: nn.Module) -> None:
    cnn.train()
    assert flagged(run(cnn, mnist), "train mode")
    assert cnn.training


class Noisy(nn.Module):
    """Adds fresh input noise on every call, even in eval mode."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.05 * torch.randn_like(x))


def test_random_model_is_flagged(mnist: Data, cnn: nn.Module) -> None:
    assert flagged(run(Noisy(cnn), mnist), "two forward passes in eval mode differ")


def test_probability_outputs_are_flagged(mnist: Data, cnn: nn.Module) -> None:
    assert flagged(run(nn.Sequential(cnn, nn.Softmax(dim=1)), mnist), "look like probabilities")


class Binarized(nn.Module):
    """Thresholds its input: gradients are zero almost everywhere (shattered gradients)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hard = (x > 0.5).to(x.dtype)
        return self.net(x * 0 + hard)  # depends on x through autograd, gradient exactly zero


def test_zero_gradients_and_huge_eps_are_flagged(mnist: Data, cnn: nn.Module) -> None:
    warnings = run(Binarized(cnn), mnist)
    assert flagged(warnings, "input gradients are zero or NaN for 100%")
    assert flagged(warnings, "a budget that can erase any input")


@dataclass(frozen=True, kw_only=True)
class GivesUpAtLargeEps(Attack):
    """FGSM that stops trying above eps 0.15: accuracy then rises with eps."""

    def _perturb(self, problem: Problem) -> Perturbation:
        if self.eps > 0.15:
            return Perturbation(x_adv=problem.x, logits=None, queries=0)
        return FGSM(eps=self.eps)._perturb(problem)


@dataclass(frozen=True, kw_only=True)
class TimidPGD(PGD):
    """An iterative attack whose steps are far too small to leave the clean point's region."""

    def _perturb(self, problem: Problem) -> Perturbation:
        return PGD(eps=self.eps, steps=self.steps, step_size=1e-4, random_start=False)._perturb(
            problem
        )


def test_accuracy_rising_with_eps_is_flagged(mnist: Data, cnn: nn.Module) -> None:
    suite = Suite(
        name="t",
        entries=(SuiteEntry(label="lazy", attack=GivesUpAtLargeEps(eps=0.0), eps=(0.1, 0.2)),),
    )
    assert flagged(run(cnn, mnist, suite), "rises with eps")


def test_iterative_worse_than_single_step_is_flagged(mnist: Data, cnn: nn.Module) -> None:
    suite = Suite(
        name="t",
        entries=(SuiteEntry(label="timid", attack=TimidPGD(eps=0.0, steps=5), eps=(0.2,)),),
    )
    warnings = run(cnn, mnist, suite)
    assert flagged(warnings, "does worse than single-step FGSM")
    assert flagged(warnings, "a budget that can erase any input")


@pytest.mark.parametrize("strict", [False, True])
def test_strict_turns_warnings_into_exit_1(
    strict: bool, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlsec.cli import main

    argv = [
        "audit",
        "--model",
        "mnist-softmax",
        "--limit",
        "100",
        "--suite",
        "quick",
        "--no-progress",
        "--eps",
        "0.1",
    ]
    code = main([*argv, "--strict"] if strict else argv)
    out = capsys.readouterr().out
    # The softmax regression is not masked: no warning, so --strict changes nothing.
    assert "warning" not in out
    assert code == 0
