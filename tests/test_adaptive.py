"""BPDA and EOT: the adaptive attacks break what plain gradient attacks cannot."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

import mlsec
from mlsec.attacks import BPDA, EOT, PGD
from mlsec.errors import InputError

Data = tuple[torch.Tensor, torch.Tensor]


class Quantise(nn.Module):
    """Round every pixel to a multiple of 1/4: zero gradient almost everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


class Noisy(nn.Module):
    """The classifier behind Gaussian input noise: a randomised defense."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x + self.sigma * torch.randn_like(x))
        return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_bpda_breaks_a_quantised_model_that_masks_plain_pgd(mnist: Data, cnn: nn.Module) -> None:
    x, y = mnist[0][:200], mnist[1][:200]
    quantised = nn.Sequential(Quantise(), cnn).eval()
    assert accuracy(quantised, x, y) > 0.97
    # Plain PGD sees zero gradients: measured 98.0% left at eps 0.3 ...
    plain = PGD(eps=0.3, steps=40)(quantised, x, y)
    assert accuracy(quantised, plain, y) > 0.9
    # ... and the audit says why.
    report = mlsec.audit(quantised, (x, y), attacks=["pgd"], eps=[0.3])
    assert any("input gradients are zero" in w and "BPDA" in w for w in report.warnings)
    # Through BPDA (forward: the quantiser; backward: the identity) PGD breaks every sample,
    # judged on the real quantised model.
    through = nn.Sequential(BPDA(Quantise()), cnn).eval()
    x_adv = PGD(eps=0.3, steps=40)(through, x, y)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
    assert accuracy(quantised, x_adv, y) < 0.05


def test_bpda_values_and_gradients() -> None:
    x = torch.tensor([[0.1, 0.4, 0.9]], requires_grad=True)
    out = BPDA(Quantise(), surrogate=lambda t: 2 * t)(x)
    assert out.tolist() == [[0.0, 0.5, 1.0]]  # the step's values
    out.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [[2.0, 2.0, 2.0]]  # the surrogate's gradient
    with pytest.raises(InputError, match="callable step"):
        BPDA(3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="must agree"):
        BPDA(Quantise(), surrogate=lambda t: t[:, :2])(x)


def test_eot_attacks_a_randomised_model_markedly_better(mnist: Data, cnn: nn.Module) -> None:
    x, y = mnist[0][:200], mnist[1][:200]
    noisy = Noisy(cnn, sigma=0.3).eval()

    def expected_accuracy(x_adv: torch.Tensor) -> float:
        torch.manual_seed(123)
        return sum(accuracy(noisy, x_adv, y) for _ in range(20)) / 20

    torch.manual_seed(0)
    plain = PGD(eps=0.1, steps=20)(noisy, x, y)
    torch.manual_seed(0)
    averaged = EOT(attack=PGD(eps=0.1, steps=20), samples=16)(noisy, x, y)
    assert (averaged - x).abs().max() <= 0.1 + 1e-6
    # Measured: 63.5% of the noisy model's predictions survive plain PGD, 51.6% survive EOT.
    assert expected_accuracy(averaged) < expected_accuracy(plain) - 0.07


def test_eot_takes_its_threat_model_from_the_attack_and_checks_samples() -> None:
    eot = EOT(attack=PGD(eps=0.2, norm="l2", steps=5), samples=4)
    assert (eot.eps, eot.norm, eot.bounds) == (0.2, "l2", (0.0, 1.0))
    with pytest.raises(InputError, match="samples must be an integer >= 1"):
        EOT(attack=PGD(eps=0.2), samples=0)
    with pytest.raises(InputError, match="needs eps, or an attack instance"):
        EOT(attack=None)
    with pytest.raises(InputError, match="needs an attack instance"):
        EOT(attack=3, eps=0.3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="EOT of EOT"):
        EOT(attack=eot)


def test_eot_is_registered_with_pgd_inside_by_default() -> None:
    eot = mlsec.attacks.create("eot", eps=0.2, samples=3)
    assert isinstance(eot, EOT) and eot.samples == 3
    assert eot.attack == PGD(eps=0.2)
    apgd = mlsec.attacks.create("eot", eps=1.0, norm="l2", attack="apgd")
    assert isinstance(apgd, EOT)
    assert apgd.attack == mlsec.attacks.APGD(eps=1.0, norm="l2")
    with pytest.raises(InputError, match="unknown attack 'nope'"):
        mlsec.attacks.create("eot", eps=0.2, attack="nope")


def test_eot_threat_model_changes_reach_the_inner_attack() -> None:
    # The audit moves an attack along the eps grid with dataclasses.replace, and a suite's
    # overrides set norm, bounds and seed the same way: the inner attack must follow.
    eot = EOT(attack=PGD(eps=0.3, steps=5), samples=2)
    moved = dataclasses.replace(eot, eps=0.1, norm="l2", seed=4)
    assert moved.attack == PGD(eps=0.1, norm="l2", seed=4, steps=5)
    assert (moved.eps, moved.norm, moved.seed) == (0.1, "l2", 4)
    with pytest.raises(InputError, match="eps must be"):
        dataclasses.replace(eot, eps=-0.1)


def test_eot_params_are_plain_data_that_build_it_again() -> None:
    eot = EOT(attack=PGD(eps=0.3, steps=5, restarts=2), samples=4)
    params = eot.params()
    assert params["attack"] == {
        "name": "pgd",
        "steps": 5,
        "step_size": None,
        "random_start": True,
        "restarts": 2,
        "last_iterate": False,
        "loss": "ce",
    }
    assert json.loads(json.dumps(params))["samples"] == 4
    assert mlsec.attacks.create("eot", **params) == eot
