"""Square: a black-box attack that breaks the standard model and reads no gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlsec
from mlsec.attacks import PGD, Square
from mlsec.errors import InputError

Data = tuple[torch.Tensor, torch.Tensor]


class GradientSpy(nn.Module):
    """The classifier, recording whether autograd was on in each forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_modes.append(torch.is_grad_enabled())
        out: torch.Tensor = self.model(x)
        return out


def test_square_alone_breaks_the_standard_model_without_gradients(
    mnist: Data, cnn: nn.Module
) -> None:
    # The check: at most 10% accuracy at eps 0.3 within 1,000 queries (measured: 0.0%).
    x, y = mnist[0][:200], mnist[1][:200]
    spy = GradientSpy(cnn).eval()
    result = Square(eps=0.3, queries=1000).run(spy, x, y)
    assert (result.x_adv - x).abs().max() <= 0.3 + 1e-6
    assert float((~result.success).float().mean()) <= 0.10
    with torch.no_grad():
        assert torch.equal(cnn(result.x_adv).argmax(1) != y, result.success)
    # One clean label check by the base class, then the attack's own passes: none with autograd.
    assert not any(spy.grad_modes[1:])
    assert len(spy.grad_modes) <= 1 + 1000 + 1


def test_square_is_no_stronger_than_pgd_on_the_robust_model(mnist: Data) -> None:
    # A gradient-masked model would fall to the black-box attack and not to PGD; the bundled
    # robust model does not (measured on these 100: PGD-40 88%, Square-500 89%).
    x, y = mnist[0][:100], mnist[1][:100]
    robust = mlsec.zoo.load("mnist-cnn-pgd")
    pgd = float((~PGD(eps=0.3, steps=40).run(robust, x, y).success).float().mean())
    square = float((~Square(eps=0.3, queries=500).run(robust, x, y).success).float().mean())
    assert square >= pgd - 0.03
    assert square > 0.5


def test_targeted_square_aims_at_the_target(mnist: Data, cnn: nn.Module) -> None:
    x, y = mnist[0][:64], mnist[1][:64]
    target = (y + 3) % 10
    result = Square(eps=0.3, queries=1000).run(cnn, x, y, target=target)
    hit = result.logits.argmax(1) == target
    assert torch.equal(hit, result.success)
    assert float(hit.float().mean()) > 0.5


def test_square_parameters_are_checked() -> None:
    with pytest.raises(InputError, match="supports norm 'linf'"):
        Square(eps=1.0, norm="l2")
    with pytest.raises(InputError, match="queries must be an integer >= 1"):
        Square(eps=0.1, queries=0)
    with pytest.raises(InputError, match="p_init must lie in"):
        Square(eps=0.1, p_init=1.5)
    flat = nn.Sequential(nn.Linear(10, 3))
    with pytest.raises(InputError, match="needs images"):
        Square(eps=0.1, queries=5).run(flat, torch.rand(4, 10), torch.zeros(4, dtype=torch.long))


class StepMask(nn.Module):
    """Gradient masking planted: the classifier behind a quantiser with zero gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(torch.round(x * 8) / 8)
        return out


def test_the_audit_warns_when_square_beats_the_gradient_attacks(
    mnist: Data, cnn: nn.Module
) -> None:
    x, y = mnist[0][:60], mnist[1][:60]
    masked = StepMask(cnn).eval()
    suite = mlsec.suite.Suite.from_attacks(["pgd", "square"]).with_overrides(
        eps=[0.3], params={"steps": 10, "queries": 300}
    )
    report = mlsec.audit(masked, (x, y), suite=suite)
    assert any("black-box attack square does better" in w for w in report.warnings)
    # The chain's worst case counts what Square broke after PGD failed.
    assert report.worst_case[0.3] < report.robust_accuracy("pgd", 0.3) - 0.3
    # On the bundled model, which masks nothing, no such warning.
    plain = mlsec.audit(cnn, (x, y), suite=suite)
    assert not any("black-box" in w for w in plain.warnings)


def test_standard_suite_is_autoattacks_chain() -> None:
    suite = mlsec.suite.load_suite("standard")
    params = [(e.label, e.attack.name) for e in suite.entries]
    assert params == [("apgd", "apgd"), ("apgd-t", "apgd-t"), ("square", "square")]
    apgd, apgd_t, square = (e.attack for e in suite.entries)
    assert (apgd.steps, apgd_t.steps, apgd_t.targets, square.queries) == (100, 100, 9, 5000)  # type: ignore[attr-defined]
