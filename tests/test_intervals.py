"""Interval bound propagation: sound (sampling, attacks), exact where it must be, equal to ART."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mlsec
from mlsec.attacks import PGD
from mlsec.core.normalize import Normalized
from mlsec.defenses.certified.intervals import (
    check_bounded,
    interval_bounds,
    linf_bounds,
    margin_bounds,
    verified,
)
from mlsec.defenses.training.ibp import IBPTraining
from mlsec.defenses.training.methods import METHODS
from mlsec.errors import InputError


def bundled_ibp() -> nn.Module:
    """The bundled IBP model (``scripts/train_mnist_ibp.py``)."""
    return mlsec.zoo.load("mnist-cnn-ibp")


def random_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d, generator: torch.Generator) -> None:
    """Running statistics and an affine map with both signs, so the BatchNorm is not identity."""
    n = bn.num_features
    assert bn.running_mean is not None and bn.running_var is not None
    bn.running_mean.copy_(torch.randn(n, generator=generator))
    bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    bn.weight.data.copy_(torch.randn(n, generator=generator))
    bn.bias.data.copy_(torch.randn(n, generator=generator))


def conv_model(seed: int) -> nn.Sequential:
    """Conv (stride, padding, dilation, groups), BatchNorm2d, AvgPool, MaxPool; input 2x12x12."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(4)
    random_bn(bn, generator)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),  # 6x6
        bn,
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), nn.ReLU()),  # 6x6
        nn.AvgPool2d(2),  # 3x3
        nn.Conv2d(6, 6, 2, padding=1),  # 4x4
        nn.MaxPool2d(2),  # 2x2
        nn.Flatten(),
        nn.Linear(24, 16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )
    return model.eval()


def normalized_model(seed: int) -> nn.Module:
    """Normalized around a nested Sequential with BatchNorm1d and Identity; input [2, 12, 12]."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm1d(20)
    random_bn(bn, generator)
    inner = nn.Sequential(
        nn.Conv2d(2, 3, 5, stride=3),  # 3x3
        nn.ReLU(),
        nn.Flatten(),
        nn.Sequential(nn.Linear(27, 20), bn, nn.Identity(), nn.ReLU()),
        nn.Linear(20, 4),
    )
    return Normalized(inner, mean=[0.3, 0.6], std=[0.2, 0.5]).eval()


MODELS = [conv_model, normalized_model]


def sample_box(lower: torch.Tensor, upper: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` points of each box: half uniform inside, half random corners; [B * n, ...]."""
    generator = torch.Generator().manual_seed(seed)
    shape = (lower.shape[0], n, *lower.shape[1:])
    u = torch.rand(shape, generator=generator)
    u[:, n // 2 :] = u[:, n // 2 :].round()  # corners
    points = lower[:, None] + u * (upper - lower)[:, None]
    return points.flatten(0, 1)


@pytest.mark.parametrize("build", MODELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_no_sampled_output_leaves_the_bounds(build: type, seed: int) -> None:
    model = build(seed)
    generator = torch.Generator().manual_seed(100 + seed)
    centre = torch.rand(4, 2, 12, 12, generator=generator)
    radius = 0.05 * torch.rand(4, 2, 12, 12, generator=generator)
    lower, upper = centre - radius, centre + radius
    with torch.no_grad():
        low, high = interval_bounds(model, lower, upper)
        points = sample_box(lower, upper, 400, seed)
        out = model(points).view(4, 400, -1)
    assert torch.isfinite(low).all() and torch.isfinite(high).all()
    assert (out >= low[:, None] - 1e-5).all()
    assert (out <= high[:, None] + 1e-5).all()


@pytest.mark.parametrize("build", MODELS)
def test_margin_bounds_lie_below_every_sampled_margin(build: type) -> None:
    model = build(3)
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(4, 2, 12, 12, generator=generator)
    y = torch.tensor([0, 1, 2, 3])
    eps = 0.03
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    with torch.no_grad():
        margin = margin_bounds(model, x, y, eps)
        out = model(sample_box(lower, upper, 400, 5)).view(4, 400, -1)
    sampled = out.gather(2, y[:, None, None].expand(4, 400, 1)) - out
    assert (margin[:, None] <= sampled + 1e-5).all()
    assert (margin.gather(1, y[:, None]) == 0).all()


@pytest.mark.parametrize("build", MODELS)
def test_zero_eps_gives_the_model_output(build: type) -> None:
    model = build(2)
    x = torch.rand(6, 2, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        out = model(x)
        low, high = linf_bounds(model, x, 0.0)
        margin = margin_bounds(model, x, y, 0.0)
    torch.testing.assert_close(low, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(high, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(margin, out.gather(1, y[:, None]) - out, atol=1e-5, rtol=0)


def test_one_linear_layer_is_bounded_exactly_by_its_extreme_corners() -> None:
    # For an affine map the box's extreme corner (by the weights' signs) attains each bound.
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    lower, upper = torch.rand(2, 6), torch.rand(2, 6) + 1.0
    low, high = interval_bounds(nn.Sequential(layer), lower, upper)
    positive = layer.weight > 0  # [3, 6]
    top = torch.where(positive[None], upper[:, None], lower[:, None])  # [2, 3, 6]
    bottom = torch.where(positive[None], lower[:, None], upper[:, None])
    with torch.no_grad():
        want_high = (top * layer.weight).sum(-1) + layer.bias
        want_low = (bottom * layer.weight).sum(-1) + layer.bias
    torch.testing.assert_close(high, want_high)
    torch.testing.assert_close(low, want_low)


def test_elision_is_at_least_as_tight_as_subtracting_logit_intervals() -> None:
    model = conv_model(4)
    x = torch.rand(8, 2, 12, 12, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 5
    with torch.no_grad():
        margin = margin_bounds(model, x, y, 0.05)
        low, high = linf_bounds(model, x, 0.05)
    naive = low.gather(1, y[:, None]) - high
    naive = naive.scatter(1, y[:, None], 0.0)
    assert (margin >= naive - 1e-6).all()
    assert (margin > naive + 1e-4).any()  # strictly tighter somewhere


class ArtView(nn.Module):
    """The same layers as direct children without Flatten (ART infers the reshape itself)."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        self.model_layers = [m for m in model if not isinstance(m, nn.Flatten)]
        for i, layer in enumerate(self.model_layers):
            self.add_module(f"l{i}", layer)
        self.full = [model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.full[0](x)
        return out


def test_interval_bounds_equal_arts_ibp_classifier() -> None:
    art_interval = pytest.importorskip("art.estimators.certification.interval")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 4, stride=2),  # 13x13
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),  # 7x7
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    ).eval()
    x, _ = mlsec.datasets.mnist_sample()
    x = x[:16]
    lower, upper = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = art_interval.PyTorchIBPClassifier(
            model=ArtView(model),
            loss=nn.CrossEntropyLoss(),
            input_shape=(1, 28, 28),
            nb_classes=10,
            clip_values=(0.0, 1.0),
            device_type="cpu",
        )
    box = torch.stack([lower, upper], dim=1).numpy()
    theirs = classifier.predict_intervals(box, is_interval=True)  # [B, 2, 10]
    with torch.no_grad():
        low, high = interval_bounds(model, lower, upper)
    np.testing.assert_allclose(low.numpy(), theirs[:, 0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(high.numpy(), theirs[:, 1], atol=1e-4, rtol=0)
    assert float((high - low).mean()) > 0.01  # a box that is not a point


def test_no_attack_breaks_a_verified_sample_of_the_bundled_model() -> None:
    model = bundled_ibp()
    x, y = mlsec.datasets.mnist_sample()
    x, y = x[:100], y[:100]
    eps = 0.1
    certified = verified(model, x, y, eps)
    assert int(certified.sum()) >= 80  # the bundled model is verifiably robust at 0.1
    x_adv = PGD(eps=eps, steps=10, step_size=0.025, restarts=2, seed=0)(model, x, y)
    with torch.no_grad():
        correct = model(x_adv).argmax(1) == y
    assert not (certified & ~correct).any()


def test_verified_means_every_other_margin_is_positive() -> None:
    model = conv_model(5)
    x = torch.rand(16, 2, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
        at_zero = verified(model, x, y, 0.0)
        at_large = verified(model, x, y, 0.5)
    assert at_zero.dtype == torch.bool and at_zero.shape == (16,)
    assert at_zero.all()  # at eps 0 the model's own prediction is verified (no ties here)
    assert not at_large.any()


def test_interval_bounds_are_differentiable() -> None:
    model = conv_model(0).train()
    model[1].eval()  # BatchNorm in eval mode; the rest trains
    lower = torch.rand(2, 2, 12, 12)
    low, high = interval_bounds(model, lower, lower + 0.1)
    (high - low).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model[0].parameters())


# ---- errors -------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x.flatten(1))
        return out


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(4, 2)),
            "layer 1 (Dropout) of the model",
        ),
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Softmax(1)), "layer 2 (Softmax)"),
        (
            Net(),
            "the model (Net, a module with its own forward); IBP needs the model as nn.Sequential",
        ),
        (nn.Sequential(nn.Identity(), nn.Sequential(nn.ReLU(), Net())), "layer 1.1 (Net"),
        (Normalized(nn.Sequential(nn.Flatten(), nn.Tanh()), [0.5], [0.5]), "layer model.1 (Tanh)"),
        (nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4)).train(), "call model.eval()"),
    ],
)
def test_unsupported_layers_are_one_line_errors(model: nn.Module, expected: str) -> None:
    with pytest.raises(InputError, match="cannot pass through") as info:
        check_bounded(model)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="cannot pass through"):
        linf_bounds(model, torch.rand(2, 1, 2, 2), 0.1)


def test_supported_model_passes_the_check() -> None:
    check_bounded(conv_model(0))
    check_bounded(normalized_model(0))


@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf")])
def test_bad_eps_is_refused(eps: float) -> None:
    model = conv_model(0)
    x = torch.rand(2, 2, 12, 12)
    with pytest.raises(InputError, match="eps must be a finite number >= 0"):
        linf_bounds(model, x, eps)
    with pytest.raises(InputError, match="eps"):
        verified(model, x, torch.tensor([0, 1]), eps)


def test_an_empty_box_is_refused() -> None:
    with pytest.raises(InputError, match="lower exceeds upper"):
        interval_bounds(nn.Sequential(nn.ReLU()), torch.ones(1, 3), torch.zeros(1, 3))


# ---- IBP training -------------------------------------------------------------------------------


def test_ibp_training_is_registered() -> None:
    assert METHODS.get("ibp") is IBPTraining


def test_ibp_loss_equals_a_direct_computation() -> None:
    torch.manual_seed(0)
    first, last = nn.Linear(12, 8), nn.Linear(8, 4)
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), last)
    x = torch.rand(5, 1, 3, 4)
    y = torch.tensor([0, 1, 2, 3, 1])
    method = IBPTraining(eps=0.2, kappa=0.3, train_eps_factor=1.5)
    loss, logits = method.training_loss(model, x, y, eps=0.1, seed=0)  # halfway up the ramp
    with torch.no_grad():
        # Independent bounds: positive and negative parts of the weights, corner by corner.
        r = 0.1 * 1.5
        lo, hi = (x - r).clamp(0, 1).flatten(1), (x + r).clamp(0, 1).flatten(1)
        w_pos, w_neg = first.weight.clamp(min=0), first.weight.clamp(max=0)
        h_lo = (lo @ w_pos.T + hi @ w_neg.T + first.bias).relu()
        h_hi = (hi @ w_pos.T + lo @ w_neg.T + first.bias).relu()
        c = last.weight[y][:, None, :] - last.weight[None]  # [B, C, H]
        worst = torch.minimum(c * h_lo[:, None], c * h_hi[:, None]).sum(-1)
        worst = worst + last.bias[y][:, None] - last.bias[None]
        kappa = 1 - (1 - 0.3) * 0.5
        clean = -F.log_softmax(model(x), 1).gather(1, y[:, None]).mean()
        robust = -F.log_softmax(-worst, 1).gather(1, y[:, None]).mean()
        want = kappa * clean + (1 - kappa) * robust
    torch.testing.assert_close(loss.detach(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.detach(), model(x).detach())
    loss.backward()
    assert first.weight.grad is not None and float(first.weight.grad.abs().sum()) > 0
    assert last.weight.grad is not None and float(last.weight.grad.abs().sum()) > 0


def test_kappa_ramps_from_one_to_its_final_value() -> None:
    method = IBPTraining(eps=0.3, kappa=0.5)
    assert method.kappa_at(0.0) == 1.0
    assert method.kappa_at(0.15) == pytest.approx(0.75)
    assert method.kappa_at(0.3) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kappa": 1.5}, "kappa must be a number in \\[0, 1\\]"),
        ({"kappa": -0.1}, "kappa must be a number in \\[0, 1\\]"),
        ({"train_eps_factor": 0.5}, "train_eps_factor must be >= 1"),
        ({"norm": "l2"}, "linf balls only"),
    ],
)
def test_bad_ibp_settings_are_one_line_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        IBPTraining(eps=0.1, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
