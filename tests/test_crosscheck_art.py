"""Cross-checks of mlsec's FGSM and PGD against ART on the bundled CNN and real MNIST images.

An mlsec attack must never be weaker than ART's implementation at the same settings. Robust accuracy
is always measured here with the model on the returned examples, never read from
``AttackResult.success``. Run with ``pytest -s`` to see the measured numbers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch
from art.estimators.classification import PyTorchClassifier
from torch import nn

import mlsec
from mlsec.attacks import FGSM, PGD

N_SAMPLES = 500
# Tolerance of every accuracy comparison, in percentage points (2.5 of 500 samples).
TOLERANCE_PP = 0.5


@dataclass(frozen=True)
class Setup:
    model: nn.Module
    classifier: PyTorchClassifier
    x: torch.Tensor
    y: torch.Tensor
    correct: torch.Tensor


@pytest.fixture(scope="module")
def setup() -> Setup:
    x, y = mlsec.datasets.mnist_sample()
    x, y = x[:N_SAMPLES], y[:N_SAMPLES]
    model = mlsec.zoo.load("mnist-cnn")
    # ART gets its own copy with frozen weights: its backward then skips the weight gradients
    # (same numbers, less time), and nothing ART does to the module can leak into mlsec's runs.
    art_model = copy.deepcopy(model).requires_grad_(False)
    classifier = PyTorchClassifier(
        model=art_model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    return Setup(model=model, classifier=classifier, x=x, y=y, correct=correct)


def _predictions_correct(
    model: nn.Module, x_adv: torch.Tensor | np.ndarray, y: torch.Tensor
) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.as_tensor(x_adv)).argmax(dim=1) == y


def _accuracy_pp(model: nn.Module, x_adv: torch.Tensor | np.ndarray, y: torch.Tensor) -> float:
    """Accuracy of ``model`` on ``x_adv`` in percent."""
    return 100.0 * float(_predictions_correct(model, x_adv, y).float().mean())


def _report(label: str, setup: Setup, mlsec_acc: float, art_acc: float) -> str:
    clean = 100.0 * float(setup.correct.float().mean())
    line = (
        f"{label} on {N_SAMPLES} MNIST images (clean {clean:.1f}%): "
        f"robust accuracy mlsec {mlsec_acc:.1f}%, ART {art_acc:.1f}%"
    )
    print(f"\n{line}")
    return line


def _assert_inside_linf_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    # Guards the comparison itself: an attack leaving the ball would look "stronger" for free.
    assert float((x_adv.double() - x.double()).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0
    assert float(x_adv.max()) <= 1.0


@pytest.mark.slow
def test_pgd_is_not_weaker_than_art(setup: Setup) -> None:
    eps = 0.3
    x_mlsec = PGD(eps=eps, step_size=0.01, steps=40, seed=0)(setup.model, setup.x, setup.y)
    np.random.seed(0)  # ART draws its random start from numpy's global generator
    x_art = ProjectedGradientDescentPyTorch(
        setup.classifier,
        eps=eps,
        eps_step=0.01,
        max_iter=40,
        num_random_init=1,
        batch_size=N_SAMPLES,
        verbose=False,
    ).generate(setup.x.numpy(), y=setup.y.numpy())

    _assert_inside_linf_ball(x_mlsec, setup.x, eps)
    mlsec_acc = _accuracy_pp(setup.model, x_mlsec, setup.y)
    art_acc = _accuracy_pp(setup.model, x_art, setup.y)
    line = _report("PGD-40 linf eps=0.3 step=0.01, 1 random start", setup, mlsec_acc, art_acc)
    assert mlsec_acc <= art_acc + TOLERANCE_PP, f"mlsec PGD is weaker than ART's: {line}"


@pytest.mark.slow
def test_pgd_without_random_start_breaks_what_art_breaks(setup: Setup) -> None:
    # At eps 0.3 both attacks reach 0% on this undefended CNN, so the check above cannot tell a
    # slightly weaker PGD apart. At eps 0.1 about half the samples survive, and without a random
    # start both attacks follow the same deterministic path: mlsec keeps each sample's first
    # successful iterate and ART returns the last one, so every sample ART breaks mlsec must break
    # too, up to float differences in the gradient (ART averages the loss over the batch, mlsec
    # sums it), which the tolerance of 2 samples absorbs.
    eps = 0.1
    x_mlsec = PGD(eps=eps, step_size=0.025, steps=10, random_start=False)(
        setup.model, setup.x, setup.y
    )
    x_art = ProjectedGradientDescentPyTorch(
        setup.classifier,
        eps=eps,
        eps_step=0.025,
        max_iter=10,
        num_random_init=0,
        batch_size=N_SAMPLES,
        verbose=False,
    ).generate(setup.x.numpy(), y=setup.y.numpy())

    _assert_inside_linf_ball(x_mlsec, setup.x, eps)
    mlsec_survives = _predictions_correct(setup.model, x_mlsec, setup.y)
    art_survives = _predictions_correct(setup.model, x_art, setup.y)
    mlsec_acc = 100.0 * float(mlsec_survives.float().mean())
    art_acc = 100.0 * float(art_survives.float().mean())
    only_art_breaks = int((mlsec_survives & ~art_survives).sum())
    line = _report("PGD-10 linf eps=0.1 step=0.025, no random start", setup, mlsec_acc, art_acc)
    print(f"samples ART breaks and mlsec does not: {only_art_breaks}")
    assert mlsec_acc <= art_acc + TOLERANCE_PP, f"mlsec PGD is weaker than ART's: {line}"
    assert only_art_breaks <= 2, f"{only_art_breaks} samples broken by ART survive mlsec: {line}"


def test_fgsm_matches_art_linf(setup: Setup) -> None:
    eps = 0.3
    x_mlsec = FGSM(eps=eps)(setup.model, setup.x, setup.y)
    x_art = FastGradientMethod(setup.classifier, eps=eps, batch_size=N_SAMPLES).generate(
        setup.x.numpy(), y=setup.y.numpy()
    )

    mlsec_acc = _accuracy_pp(setup.model, x_mlsec, setup.y)
    art_acc = _accuracy_pp(setup.model, x_art, setup.y)
    line = _report("FGSM linf eps=0.3", setup, mlsec_acc, art_acc)
    assert abs(mlsec_acc - art_acc) <= TOLERANCE_PP, f"FGSM disagrees with ART: {line}"

    # FGSM is deterministic, so the examples themselves must agree. Only on the samples the clean
    # model classifies correctly: mlsec keeps a sample's first successful iterate, which for an
    # already misclassified sample is the clean input itself, while ART perturbs every sample.
    torch.testing.assert_close(
        x_mlsec[setup.correct],
        torch.from_numpy(x_art)[setup.correct],
        atol=1e-5,
        rtol=0.0,
    )


def test_fgm_matches_art_l2(setup: Setup) -> None:
    eps = 2.0
    x_mlsec = FGSM(eps=eps, norm="l2")(setup.model, setup.x, setup.y)
    x_art = FastGradientMethod(setup.classifier, norm=2, eps=eps, batch_size=N_SAMPLES).generate(
        setup.x.numpy(), y=setup.y.numpy()
    )

    assert float((x_mlsec - setup.x).flatten(1).norm(dim=1).max()) <= eps + 1e-5
    mlsec_acc = _accuracy_pp(setup.model, x_mlsec, setup.y)
    art_acc = _accuracy_pp(setup.model, x_art, setup.y)
    line = _report("FGM l2 eps=2.0", setup, mlsec_acc, art_acc)
    assert abs(mlsec_acc - art_acc) <= TOLERANCE_PP, f"l2 FGM disagrees with ART: {line}"

    # Same step, normalised in float32 by torch on one side and numpy on the other (measured
    # difference ~3e-7).
    torch.testing.assert_close(
        x_mlsec[setup.correct],
        torch.from_numpy(x_art)[setup.correct],
        atol=1e-5,
        rtol=0.0,
    )
