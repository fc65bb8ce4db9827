"""Square: a black-box attack that breaks the standard model and reads no gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchattacks
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


def test_l2_square_stays_in_the_ball_and_beats_noise(mnist: Data, cnn: nn.Module) -> None:
    # Measured on these 120 images at eps 2.0 with 1,000 queries: 44.2%; noise of the same norm
    # leaves 99.2%.
    x, y = mnist[0][:120], mnist[1][:120]
    result = Square(eps=2.0, norm="l2", queries=1000).run(cnn, x, y)
    norms = (result.x_adv - x).flatten(1).norm(dim=1)
    assert float(norms.max()) <= 2.0 + 1e-5
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    ours = float((~result.success).float().mean())
    assert ours <= 0.6
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy = (x + noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 2.0).clamp(0, 1)
    with torch.no_grad():
        assert float((cnn(noisy).argmax(1) == y).float().mean()) >= ours + 0.3


def test_l2_square_matches_torchattacks(mnist: Data, cnn: nn.Module) -> None:
    # An independent implementation of the same algorithm (torchattacks' Square, L2; in the test
    # extra, so this runs in CI), same model, images and budget. Measured on 200 images at eps
    # 2.0: mlsec 46.5% / 45.0% (seeds 0, 1), torchattacks 46.0% / 42.5%.
    x, y = mnist[0][:120], mnist[1][:120]
    ours = float((~Square(eps=2.0, norm="l2", queries=1000).run(cnn, x, y).success).float().mean())
    peer = torchattacks.Square(cnn.eval(), norm="L2", eps=2.0, n_queries=1000, p_init=0.8, seed=0)
    with torch.no_grad():
        theirs = float((cnn(peer(x, y)).argmax(1) == y).float().mean())
    assert abs(ours - theirs) <= 0.06, (ours, theirs)


def test_restarts_never_lose_what_one_start_finds(mnist: Data) -> None:
    # Restart 0 replays the single search (the same sample keys); later restarts, from their own
    # keys, only add: no success lost, and the margin (true logit minus the best other) is kept
    # at its lowest, so it falls below the one start's wherever a restart searched better.
    # Measured (seed 0): 4 of these broken with one start and with three, and a lower margin
    # for 73% of the 96 left (with seeds 1 and 2, 4 and then 5 broken).
    x, y = mnist[0][:100], mnist[1][:100]
    robust = mlsec.zoo.load("mnist-cnn-pgd")
    one = Square(eps=0.3, queries=100).run(robust, x, y)
    three = Square(eps=0.3, queries=100, restarts=3).run(robust, x, y)
    assert not bool((one.success & ~three.success).any())
    assert three.queries == 300

    def margin(logits: torch.Tensor) -> torch.Tensor:
        own = logits.gather(1, y[:, None]).squeeze(1)
        return own - logits.scatter(1, y[:, None], float("-inf")).amax(1)

    standing = ~one.success
    assert bool((margin(three.logits) <= margin(one.logits) + 1e-4)[standing].all())
    lower = margin(three.logits) < margin(one.logits) - 1e-3
    # Two more independent searches beat the first for a fair share of the samples it left.
    assert float(lower[standing].float().mean()) > 0.25


def test_square_bump_is_the_papers_pattern() -> None:
    # Worked by hand for a 5x5 bump: rows 0-1 carry the positive half (2x5 block, centre (1, 2)),
    # rows 2-4 the negative one (3x5 block, centre (1, 2)); weights 1 + 1/4 + 1/9 at the centre,
    # 1/4 + 1/9 one step out, 1/9 two steps out, before normalising.
    from mlsec.attacks.square import square_bump

    bump = square_bump(5)
    assert torch.allclose(bump.norm(), torch.tensor(1.0, dtype=bump.dtype))
    centre, ring, edge = 1 + 1 / 4 + 1 / 9, 1 / 4 + 1 / 9, 1 / 9
    top = torch.tensor([[edge, ring, ring, ring, edge], [edge, ring, centre, ring, edge]])
    bottom = -torch.tensor(
        [
            [edge, ring, ring, ring, edge],
            [edge, ring, centre, ring, edge],
            [edge, ring, ring, ring, edge],
        ]
    )
    top, bottom = top / top.norm(), bottom / bottom.norm()
    expected = torch.cat([top, bottom])
    expected = expected / expected.norm()
    assert torch.allclose(bump.float(), expected.float(), atol=1e-6)
    assert torch.equal(square_bump(5, transpose=True), bump.T)


def test_square_parameters_are_checked() -> None:
    with pytest.raises(InputError, match="queries must be an integer >= 1"):
        Square(eps=0.1, queries=0)
    with pytest.raises(InputError, match="restarts must be an integer >= 1"):
        Square(eps=0.1, restarts=0)
    with pytest.raises(InputError, match="p_init must be a number in"):
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
    suite = mlsec.auditing.suite.Suite.from_attacks(["pgd", "square"]).with_overrides(
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
    suite = mlsec.auditing.suite.load_suite("standard")
    params = [(e.label, e.attack.name) for e in suite.entries]
    assert params == [("apgd", "apgd"), ("apgd-t", "apgd-t"), ("square", "square")]
    apgd, apgd_t, square = (e.attack for e in suite.entries)
    assert (apgd.steps, apgd_t.steps, apgd_t.targets, square.queries) == (100, 100, 9, 5000)  # type: ignore[attr-defined]


def test_standard_suite_worst_case_is_at_most_each_component(mnist: Data) -> None:
    # The cross-check on the bundled robust model: the chain's per-sample worst case is no
    # higher than any of its attacks run alone on every sample, and no higher than PGD-40's.
    # To keep the test short, APGD-T aims at 3 classes instead of 9 and Square has 1,000 queries
    # instead of 5,000; the full suite on 500 images is in the docs
    # (python benchmarks/autoattack.py --n 500 --only mlsec --components).
    x, y = mnist[0][:100], mnist[1][:100]
    robust = mlsec.zoo.load("mnist-cnn-pgd")
    suite = mlsec.auditing.suite.load_suite("standard").with_overrides(
        eps=[0.3], params={"queries": 1000, "targets": 3}
    )
    report = mlsec.audit(robust, (x, y), suite=suite, sanity_checks=False)
    worst = report.worst_case[0.3]
    alone = {}
    for entry in suite.entries:
        attack = dataclasses.replace(entry.attack, eps=0.3)
        alone[entry.label] = float((~attack.run(robust, x, y).success).float().mean())
    pgd = float((~PGD(eps=0.3, steps=40).run(robust, x, y).success).float().mean())
    assert worst <= min(alone.values()), (worst, alone)
    assert worst <= pgd, (worst, pgd)
    # The chain is not vacuous: the later attacks break something APGD-CE left standing.
    assert worst < alone["apgd"], (worst, alone)
    assert worst >= 0.7  # a robust model stays robust (AutoAttack on Madry et al.'s: 88.5%)
