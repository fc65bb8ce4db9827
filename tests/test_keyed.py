"""Sample-keyed randomness: the draws' statistics, and attacks whose results ignore the batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mlsec.attacks import APGD, FGSM, PGD, Attack, Square
from mlsec.core.keyed import SampleKeys, _mix, current_draw

Data = tuple[torch.Tensor, torch.Tensor]

# Draws per statistic: with n draws a mean's standard error is sigma / sqrt(n); the bounds below
# are 5 standard errors, so a correct generator fails them about once in 10^6 runs.
_N = 200_000


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _keys(seed: int = 0, index: list[int] | None = None) -> SampleKeys:
    return SampleKeys.of(seed, torch.tensor(index if index is not None else [0, 1, 2, 3]))


def test_uniform_draws_have_the_uniform_mean_and_variance() -> None:
    u = _keys().uniform((_N // 4,), stream="test").double()
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    # Uniform(0, 1): mean 1/2, variance 1/12 (sd of the mean 0.289/sqrt(n); of the variance,
    # sqrt(1/180 / n)).
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / _N)
    assert abs(float(u.var()) - 1 / 12) < 5 * math.sqrt(1 / 180 / _N)
    # Each row on its own is uniform too, and rows are not copies of each other.
    assert all(abs(float(row.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / (_N // 4)) for row in u)
    assert abs(float(torch.corrcoef(u[:2])[0, 1])) < 5 / math.sqrt(_N // 4)


def test_normal_draws_are_standard_normal() -> None:
    z = _keys(seed=3).normal((_N // 4,), stream="test").double().flatten()
    assert abs(float(z.mean())) < 5 / math.sqrt(_N)
    assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / _N)
    # The tails of a normal: 4.55% beyond 2 sd (binomial sd about 0.05% at this n).
    beyond = float((z.abs() > 2).double().mean())
    assert abs(beyond - 0.0455) < 5 * math.sqrt(0.0455 * 0.9545 / _N)


def test_integers_lie_in_range_and_are_equally_likely() -> None:
    keys = _keys(seed=1)
    values = keys.integers(7, (_N // 4,), stream="test")
    assert values.dtype == torch.int64
    assert int(values.min()) == 0 and int(values.max()) == 6
    counts = torch.bincount(values.flatten(), minlength=7).double()
    # Chi-square with 6 degrees of freedom: 99.99% of its mass lies below 27.9.
    expected = _N / 7
    assert float(((counts - expected) ** 2 / expected).sum()) < 27.9
    # A bound per row: row r draws from [0, high[r]).
    high = torch.tensor([1, 2, 3, 1000])
    per_row = keys.integers(high, (5000,), stream="test/high")
    assert bool((per_row >= 0).all()) and bool((per_row < high[:, None]).all())
    assert int(per_row[0].max()) == 0 and set(per_row[1].tolist()) == {0, 1}
    assert int(per_row[3].max()) > 990


def test_a_samples_draws_ignore_the_rest_of_its_batch() -> None:
    whole = _keys(seed=5, index=[3, 7, 11, 40])
    other = _keys(seed=5, index=[40, 11, 99])  # another order, another companion
    a = whole.uniform((6,), stream="start", step=2)
    b = other.uniform((6,), stream="start", step=2)
    assert torch.equal(a[3], b[0]) and torch.equal(a[2], b[1])
    # select follows rows out of a batch: by indices and by a mask.
    assert torch.equal(
        whole.select(torch.tensor([2, 0])).uniform((6,), stream="start", step=2), a[[2, 0]]
    )
    mask = torch.tensor([False, True, False, True])
    assert torch.equal(
        whole.select(mask).normal((6,), stream="n"), whole.normal((6,), stream="n")[mask]
    )


def test_fold_and_restart_agree() -> None:
    keys = _keys(seed=2, index=[5, 6, 7])
    folded = keys.fold(3)
    assert len(folded) == 9
    # Row f * B + i of the folded keys is restart f of sample i; fold 0 is the sample's own key.
    for f in range(3):
        assert torch.equal(folded.keys[3 * f : 3 * f + 3], keys.restart(f).keys)
    assert torch.equal(keys.restart(0).keys, keys.keys)
    assert keys.fold(1) is keys
    # SampleKeys.of's restart argument, one for all or per row, names the same keys.
    assert torch.equal(keys.restart(2).keys, SampleKeys.of(2, torch.tensor([5, 6, 7]), 2).keys)
    per_row = SampleKeys.of(2, torch.tensor([5, 6, 7, 5]), torch.tensor([0, 1, 2, 2]))
    assert torch.equal(per_row.keys[:3], folded.keys[[0, 4, 8]])
    assert torch.equal(per_row.keys[3], keys.restart(2).keys[0])
    # Restarts draw differently.
    draws = folded.uniform((50,), stream="start")
    assert not bool((draws[:3] == draws[3:6]).all(dim=1).any())


def test_seeds_streams_steps_and_indices_all_change_the_draws() -> None:
    base = _keys(seed=0).uniform((64,), stream="a", step=0)
    variants = [
        _keys(seed=1).uniform((64,), stream="a", step=0),
        _keys(seed=0).uniform((64,), stream="b", step=0),
        _keys(seed=0).uniform((64,), stream="a", step=1),
        _keys(seed=0, index=[4, 5, 6, 7]).uniform((64,), stream="a", step=0),
    ]
    for other in variants:
        # Independent uniform rows: equal elements happen with chance 2^-24 each.
        assert int((other == base).sum()) <= 2
    # The same arguments give the same numbers.
    assert torch.equal(_keys(seed=0).uniform((64,), stream="a", step=0), base)


def test_indices_beyond_32_bits_are_distinct() -> None:
    w = SampleKeys.of(0, torch.tensor([7, 7 + 2**32])).words((8,), stream="a")
    assert int((w[0] == w[1]).sum()) == 0


def _lowbias32(x: np.ndarray) -> np.ndarray:
    """Wellons' lowbias32 in plain uint32 arithmetic (wrapping), the reference for the hash."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


@pytest.mark.parametrize("device", DEVICES)
def test_the_hash_is_lowbias32_exactly_on_every_device(device: str) -> None:
    # The int64 arithmetic that never overflows gives uint32 wrapping arithmetic's numbers, on
    # the CPU and on a GPU alike: so every device draws the same.
    values = np.random.default_rng(0).integers(0, 2**32, size=10_000, dtype=np.uint64)
    values[:4] = [0, 1, 2**31, 2**32 - 1]
    mixed = _mix(torch.from_numpy(values.astype(np.int64)).to(device))
    assert np.array_equal(mixed.cpu().numpy().astype(np.uint64), _lowbias32(values))
    keys = _keys(seed=9)
    for name in ("uniform", "normal"):
        cpu = getattr(keys, name)((1000,), stream="dev")
        there = getattr(keys.to(device), name)((1000,), stream="dev")
        assert torch.allclose(cpu, there.cpu(), atol=1e-6, rtol=0)
    assert torch.equal(
        keys.words((1000,), stream="dev"), keys.to(device).words((1000,), stream="dev").cpu()
    )


# Attacks: a sample's result is the same in a batch of 7, of 64 (shuffled) or of all of them. ----


class NoisyModel(nn.Module):
    """A randomised classifier: Gaussian noise on its input, drawn from the rows' sample keys."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        draw = current_draw()
        if draw is not None:
            self.calls += 1
            assert len(draw.keys) == x.shape[0]
            noise = draw.keys.normal(tuple(x.shape[1:]), stream="noise", step=draw.call)
            x = x + 0.1 * noise.to(x.dtype)
        out: torch.Tensor = self.model(x)
        return out


ATTACKS: list[Attack] = [
    PGD(eps=0.1, steps=5, restarts=2),
    FGSM(eps=0.1),
    APGD(eps=0.1, steps=5, restarts=2),
    APGD(eps=0.1, steps=4, targets=2),
    Square(eps=0.25, queries=20, restarts=2),
    Square(eps=4.0, norm="l2", queries=20, restarts=2),
]
_SAMPLES = 105


def _in_batches(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attack's x_adv and success per sample, run on shuffled batches of ``size``."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(size))
    x_adv, success = torch.empty_like(x), torch.empty(len(x), dtype=torch.bool)
    for rows in order.split(size):
        result = attack.run_unchecked(model, x[rows], y[rows], index=index[rows])
        x_adv[rows], success[rows] = result.x_adv, result.success
    return x_adv, success


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: f"{a.name}-{a.norm}")
def test_a_samples_result_ignores_its_batch(attack: Attack, mnist: Data, cnn: nn.Module) -> None:
    x, y = mnist[0][:_SAMPLES], mnist[1][:_SAMPLES]
    index = torch.arange(_SAMPLES) + 8000  # their positions in the MNIST test set
    whole = attack.run(cnn, x, y, index=index)
    # Neither all broken nor all standing, or the comparison would say little.
    assert 0.1 < float(whole.success.float().mean()) < 0.95
    for size in (7, 64):
        x_adv, success = _in_batches(attack, cnn, x, y, index, size)
        assert torch.equal(success, whole.success), size
        assert torch.allclose(x_adv, whole.x_adv, atol=1e-5, rtol=0), size


@pytest.mark.parametrize("attack", [ATTACKS[0], ATTACKS[2], ATTACKS[4]], ids=lambda a: a.name)
def test_a_randomised_model_draws_per_sample(attack: Attack, mnist: Data, cnn: nn.Module) -> None:
    # The model's noise comes from the keys the attack passes with each call: the noisy
    # model's results, too, ignore the batch (and the keys reach the model at every call).
    x, y = mnist[0][:70], mnist[1][:70]
    index = torch.arange(70) * 3
    model = NoisyModel(cnn).eval()
    # run_unchecked: the label check's one-sample probe is not a call of the attack's.
    whole = attack.run_unchecked(model, x, y, index=index)
    assert model.calls > 1
    x_adv, success = _in_batches(attack, model, x, y, index, 7)
    assert torch.equal(success, whole.success)
    assert torch.allclose(x_adv, whole.x_adv, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attack", [ATTACKS[0], ATTACKS[2], ATTACKS[5]], ids=lambda a: a.name)
def test_the_index_keys_the_draws(attack: Attack, mnist: Data, cnn: nn.Module) -> None:
    # Other positions in the data set draw other starts and proposals: not the same examples.
    x, y = mnist[0][:20], mnist[1][:20]
    a = attack.run(cnn, x, y, index=torch.arange(20)).x_adv
    b = attack.run(cnn, x, y, index=torch.arange(20) + 1).x_adv
    differs = (a - b).flatten(1).abs().amax(dim=1) > 1e-3
    assert int(differs.sum()) >= 15
