"""Goodfellow, Shlens, Szegedy 2015 (arXiv:1412.6572) on the bundled softmax regression.

The paper reports 99.9% error for a shallow softmax classifier on MNIST under FGSM at eps 0.25.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mlsec
from mlsec.attacks import FGSM

EPS = 0.25


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return mlsec.datasets.mnist_sample()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return mlsec.zoo.load("mnist-softmax")


def test_fgsm_error_on_softmax_regression_matches_the_paper(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    with torch.no_grad():
        clean_accuracy = float((model(x).argmax(dim=1) == y).float().mean())
        logits_adv = model(FGSM(eps=EPS)(model, x, y))
    error = float((logits_adv.argmax(dim=1) != y).float().mean())
    confidence = float(logits_adv.softmax(dim=1).amax(dim=1).mean())
    print(
        f"\nmnist-softmax on {len(y)} held-out images: clean accuracy {clean_accuracy:.1%}, "
        f"FGSM eps={EPS} error {error:.1%} (mean confidence {confidence:.1%}); "
        "paper: 99.9% error, 79.3% confidence"
    )
    assert clean_accuracy >= 0.90, f"clean accuracy {clean_accuracy:.1%} < 90%: a bad model"
    assert error >= 0.99, f"FGSM eps={EPS} error {error:.1%} < 99% (paper: 99.9%)"


def test_fgsm_is_one_signed_gradient_step_on_softmax_regression(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    x_adv = FGSM(eps=EPS)(model, x, y)

    xr = x.clone().requires_grad_(True)
    # Summed, not averaged, so that no gradient entry is scaled towards underflow.
    loss = F.cross_entropy(model(xr), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xr)

    # For softmax regression the input gradient of the cross-entropy has a closed form,
    # W^T (softmax(Wx + b) - onehot(y)): check that the reference above is that gradient.
    assert isinstance(model, nn.Sequential)
    linear = model[1]
    assert isinstance(linear, nn.Linear)
    with torch.no_grad():
        probs = (x.flatten(1) @ linear.weight.T + linear.bias).softmax(dim=1)
        closed = ((probs - F.one_hot(y, 10).float()) @ linear.weight).view_as(x)
    torch.testing.assert_close(closed, grad, atol=1e-5, rtol=1e-4)

    expected = torch.clamp(x + EPS * grad.sign(), 0.0, 1.0)
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    assert int(correct.sum()) >= 1800
    # Samples misclassified at the start are excluded: FGSM keeps the clean input for them.
    torch.testing.assert_close(x_adv[correct], expected[correct], atol=1e-6, rtol=0.0)
