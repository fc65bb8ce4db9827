"""Cross-checks of mlsec's FGSM and PGD against torchattacks on real MNIST and a bundled model.

torchattacks (Kim 2020) is an independent PyTorch implementation and a dependency of the test
extra, so these checks run in CI. An mlsec attack must never be weaker than torchattacks' at the
same settings: robust accuracy, measured with the model on the returned examples (never read
from ``AttackResult.success``), is at most the peer's plus a tolerance. The model is the
adversarially trained ``mnist-cnn-pgd``, whose robust accuracy is far from 0% at these budgets,
so a weaker attack shows. Run with ``pytest -s`` to see the measured numbers.

References:
    H. Kim. Torchattacks: A PyTorch Repository for Adversarial Attacks. arXiv:2010.01950.

"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torchattacks
from torch import nn

import mlsec
from mlsec.attacks import FGSM, PGD

N_SAMPLES = 300
# Tolerance of every accuracy comparison, in percentage points (2 of 300 samples).
TOLERANCE_PP = 0.67


@dataclass(frozen=True)
class Setup:
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    correct: torch.Tensor


@pytest.fixture(scope="module")
def setup() -> Setup:
    x, y = mlsec.datasets.mnist_sample()
    x, y = x[:N_SAMPLES], y[:N_SAMPLES]
    model = mlsec.zoo.load("mnist-cnn-pgd")
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    return Setup(model=model, x=x, y=y, correct=correct)


def _survives(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) == y


def _accuracy_pp(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float(_survives(model, x_adv, y).float().mean())


def _compare(label: str, setup: Setup, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Robust accuracy of both; asserts mlsec is not weaker. Returns the peer's accuracy."""
    mine = _accuracy_pp(setup.model, ours, setup.y)
    peer = _accuracy_pp(setup.model, theirs, setup.y)
    clean = 100.0 * float(setup.correct.float().mean())
    line = (
        f"{label} on {N_SAMPLES} MNIST images, mnist-cnn-pgd (clean {clean:.1f}%): "
        f"robust accuracy mlsec {mine:.1f}%, torchattacks {peer:.1f}%"
    )
    print(f"\n{line}")
    assert mine <= peer + TOLERANCE_PP, f"mlsec is weaker than torchattacks: {line}"
    return peer


def _assert_admissible(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> None:
    # Guards the comparison itself: an attack leaving the ball would look "stronger" for free.
    delta = (x_adv.double() - x.double()).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_fgsm_matches_torchattacks(setup: Setup) -> None:
    eps = 0.3
    ours = FGSM(eps=eps)(setup.model, setup.x, setup.y)
    theirs = torchattacks.FGSM(setup.model, eps=eps)(setup.x, setup.y)
    _assert_admissible(ours, setup.x, eps, "linf")
    peer = _compare("FGSM linf eps=0.3", setup, ours, theirs)
    # Measured: 96.0% for both (clean 99.0%). The attack must break something, or the
    # comparison above could not tell a do-nothing attack apart.
    assert peer <= 97.0, peer
    # Deterministic: the examples agree on the samples the clean model gets right (mlsec keeps
    # the clean input for a sample already misclassified, torchattacks perturbs every sample).
    torch.testing.assert_close(
        ours[setup.correct], theirs[setup.correct].to(ours.dtype), atol=1e-5, rtol=0.0
    )


@pytest.mark.slow
def test_pgd_is_not_weaker_than_torchattacks(setup: Setup) -> None:
    eps, step, steps = 0.3, 0.01, 40
    ours = PGD(eps=eps, step_size=step, steps=steps, seed=0)(setup.model, setup.x, setup.y)
    torch.manual_seed(0)  # torchattacks draws its random start from torch's global generator
    peer_attack = torchattacks.PGD(setup.model, eps=eps, alpha=step, steps=steps, random_start=True)
    theirs = peer_attack(setup.x, setup.y)
    _assert_admissible(ours, setup.x, eps, "linf")
    peer = _compare("PGD-40 linf eps=0.3 step=0.01, 1 random start", setup, ours, theirs)
    # Measured: 91.0% for both.
    assert 20.0 <= peer <= 95.0, peer


def test_pgd_without_random_start_breaks_what_torchattacks_breaks(setup: Setup) -> None:
    # Without a random start both follow the same deterministic path; mlsec keeps each sample's
    # first successful iterate, torchattacks returns the last one. So every sample torchattacks
    # breaks, mlsec must break too, up to float differences in the gradient (torchattacks
    # averages the loss over the batch, mlsec sums it): a tolerance of 2 samples.
    eps, step, steps = 0.3, 0.05, 10
    ours = PGD(eps=eps, step_size=step, steps=steps, random_start=False)(
        setup.model, setup.x, setup.y
    )
    peer_attack = torchattacks.PGD(
        setup.model, eps=eps, alpha=step, steps=steps, random_start=False
    )
    theirs = peer_attack(setup.x, setup.y)
    _assert_admissible(ours, setup.x, eps, "linf")
    # Measured: 90.0% for both, no sample broken by torchattacks alone.
    _compare("PGD-10 linf eps=0.3 step=0.05, no random start", setup, ours, theirs)
    only_peer_breaks = int(
        (_survives(setup.model, ours, setup.y) & ~_survives(setup.model, theirs, setup.y)).sum()
    )
    print(f"samples torchattacks breaks and mlsec does not: {only_peer_breaks}")
    assert only_peer_breaks <= 2, only_peer_breaks


def test_l2_pgd_is_not_weaker_than_torchattacks(setup: Setup) -> None:
    eps, step, steps = 2.0, 0.25, 20
    ours = PGD(eps=eps, norm="l2", step_size=step, steps=steps, seed=0)(
        setup.model, setup.x, setup.y
    )
    torch.manual_seed(0)
    peer_attack = torchattacks.PGDL2(
        setup.model, eps=eps, alpha=step, steps=steps, random_start=True
    )
    theirs = peer_attack(setup.x, setup.y)
    _assert_admissible(ours, setup.x, eps, "l2")
    # Measured: mlsec 86.3%, torchattacks 86.0% (one sample: the random starts differ).
    peer = _compare("PGD-20 l2 eps=2.0 step=0.25, 1 random start", setup, ours, theirs)
    assert 5.0 <= peer <= 95.0, peer
