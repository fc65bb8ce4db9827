"""Randomised defenses and EOT draw per sample: a sample's result ignores the rest of its batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import mlsec
from mlsec.attacks import EOT, PGD
from mlsec.attacks.adaptive import repetitions
from mlsec.core.keyed import SampleKeys, drawing_for
from mlsec.defenses import DefenseGAN
from mlsec.defenses.purifiers.networks import project
from mlsec.errors import InputError

Data = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def bundled() -> DefenseGAN:
    return mlsec.zoo.load("mnist-defense-gan")


@pytest.fixture
def make(bundled: DefenseGAN) -> Callable[..., DefenseGAN]:
    """Defense-GANs on the bundled generator with a cheap projection (3 steps from 2 starts).

    Trained weights, not an untrained generator: an untrained one draws nearly the same grey
    image from every start, so it would not show whose draws a sample got.
    """

    def build(**params: Any) -> DefenseGAN:
        settings: dict[str, Any] = {"steps": 3, "restarts": 2, **params}
        return DefenseGAN(
            latent=bundled.latent, width=bundled.width, generator=bundled.generator, **settings
        )

    return build


class Recorder(nn.Module):
    """A classifier that remembers every input it is given (the purified images)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        out: torch.Tensor = self.model(x)
        return out


def images(count: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_a_samples_purification_ignores_the_rest_of_its_batch(
    make: Callable[..., DefenseGAN],
) -> None:
    defense = make()
    x, index = images(20), torch.arange(100, 120)
    big = defense.purify(x, keys=SampleKeys.of(4, index), step=2)
    rows = torch.tensor([5, 0, 17])
    small = defense.purify(x[rows], keys=SampleKeys.of(4, index[rows]), step=2)
    # The same: the starts are a pure function of the key, and the projection (Adam is
    # elementwise, the generator is in eval mode) couples no rows. Not always to the last bit:
    # with several threads a CPU kernel may split a batch of 3 and one of 20 differently.
    torch.testing.assert_close(big[rows], small, rtol=0, atol=1e-6)
    # The draws move with the step, the key and the defense's own seed.
    other_step = defense.purify(x[rows], keys=SampleKeys.of(4, index[rows]), step=3)
    other_key = defense.purify(x[rows], keys=SampleKeys.of(5, index[rows]), step=2)
    other_seed = make(seed=1).purify(x[rows], keys=SampleKeys.of(4, index[rows]), step=2)
    for other in (other_step, other_key, other_seed):
        assert bool(((other - small).abs().flatten(1).amax(1) > 1e-3).all())


def test_the_seed_path_keys_row_r_as_sample_r(make: Callable[..., DefenseGAN]) -> None:
    defense = make(seed=6)
    x = images(4)
    plain = defense.purify(x)
    assert torch.equal(plain, defense.purify(x, keys=SampleKeys.of(6, torch.arange(4))))
    assert torch.equal(plain, defense.purify(x, seed=6))
    # Row r keyed as sample r: the first rows purify alone as they do in the batch.
    torch.testing.assert_close(plain[:2], defense.purify(x[:2]), rtol=0, atol=1e-6)
    assert not torch.equal(plain, defense.purify(x, seed=7))


def test_keyed_starts_are_standard_normal_and_independent_per_restart(
    make: Callable[..., DefenseGAN],
) -> None:
    defense = make(restarts=4)
    z0 = defense.starts(images(125), keys=SampleKeys.of(0, torch.arange(125)), step=0)
    assert tuple(z0.shape) == (4, 125, 32)
    # 16,000 draws: mean within 5 standard errors of 0, variance within 5% of 1.
    assert abs(float(z0.mean())) < 5 / 16000**0.5
    assert abs(float(z0.var()) - 1.0) < 0.05
    # Restarts are not copies of one another.
    corr = torch.corrcoef(z0.reshape(4, -1))
    assert float((corr - torch.eye(4)).abs().max()) < 0.08  # 5 standard errors at 4,000


def test_an_encoder_start_alone_draws_nothing(
    bundled: DefenseGAN, make: Callable[..., DefenseGAN]
) -> None:
    # The deterministic path (one start, the encoder's) is what it was: project from E(x).
    encoder, generator = bundled.encoder, bundled.generator
    assert encoder is not None and generator is not None
    defense = make(init="encoder", restarts=1, encoder=encoder)
    x = images(5)
    with torch.no_grad():
        z0 = encoder(x).unsqueeze(0)
    expected, _ = project(generator, x, steps=3, restarts=1, lr=defense.lr, z0=z0)
    assert torch.equal(defense.purify(x), expected)
    assert torch.equal(defense.purify(x, keys=SampleKeys.of(9, torch.arange(5)), step=7), expected)


def test_purified_model_draws_from_the_attacks_keys_else_counts_calls(
    make: Callable[..., DefenseGAN],
) -> None:
    defense = make(seed=3)
    model = defense.wrap(nn.Identity())
    x, keys = images(6), SampleKeys.of(0, torch.arange(40, 46))
    with torch.no_grad():
        with drawing_for(keys, call=5):
            keyed = model(x)
        assert model.calls == 0  # keyed passes leave the plain passes' counter alone
        # BPDA adds and subtracts x: equal up to rounding.
        assert torch.allclose(keyed, defense.purify_keyed(x, keys, step=5), atol=1e-6)
        with drawing_for(keys.select(torch.tensor([4, 1])), call=5):
            pair = model(x[[4, 1]])
        assert torch.allclose(pair, keyed[[4, 1]], atol=1e-6)
        # A plain forward pass: the seed defense.seed + calls, as before.
        first, second = model(x), model(x)
    assert model.calls == 2
    assert torch.allclose(first, defense.purify(x, seed=3), atol=1e-6)
    assert torch.allclose(second, defense.purify(x, seed=4), atol=1e-6)


def test_keys_that_do_not_cover_the_batch_are_refused(make: Callable[..., DefenseGAN]) -> None:
    defense = make()
    model = defense.wrap(nn.Identity())
    keys = SampleKeys.of(0, torch.arange(3))
    message = "keyed 3 rows but the purifier got 4"
    with drawing_for(keys, call=0), pytest.raises(InputError, match=message) as info:
        model(images(4))
    assert info.value.subject == "keys"
    with pytest.raises(InputError, match="3 sample keys for a batch of 4"):
        defense.purify(images(4), keys=SampleKeys.of(0, torch.arange(3)))


def test_eot_repetition_keys_are_distinct_from_restarts_and_per_sample() -> None:
    keys = SampleKeys.of(0, torch.arange(10, 15))
    folded = repetitions(keys.fold(3), 4)  # 3 restarts of 5 samples, 4 repetitions each
    assert len(folded) == 60
    assert len(set(folded.keys.tolist())) == 60  # no repetition of one restart is another's
    assert torch.equal(folded.keys[:15], keys.fold(3).keys)  # repetition 0: the row's own key
    subset = repetitions(keys.select(torch.tensor([3, 1])), 4).keys.view(4, 2)
    assert torch.equal(subset, repetitions(keys, 4).keys.view(4, 5)[:, [3, 1]])


def test_eot_repetitions_draw_different_starts(
    mnist: Data, cnn: nn.Module, make: Callable[..., DefenseGAN]
) -> None:
    x, y = mnist[0][:3], mnist[1][:3]
    recorder = Recorder(cnn)
    model = make().wrap(recorder).eval()
    EOT(attack=PGD(eps=0.1, steps=1), samples=4)(model, x, y)
    # The attack's first step: 4 repetitions of the 3 samples, folded into one batch.
    first = next(seen for seen in recorder.seen if len(seen) == 12).view(4, 3, -1)
    for i in range(3):
        for a in range(4):
            for b in range(a):
                assert float((first[a, i] - first[b, i]).abs().max()) > 1e-3, (i, a, b)


def test_eot_over_defense_gan_gives_a_sample_the_same_example_at_any_batch_size(
    mnist: Data, cnn: nn.Module, make: Callable[..., DefenseGAN]
) -> None:
    # One thread: the property is about the randomness; with several threads a CPU kernel may
    # round a batch of 2 and one of 9 differently, and PGD's sign steps can amplify the last bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _eot_same_example(mnist, cnn, make)
    finally:
        torch.set_num_threads(threads)


def _eot_same_example(mnist: Data, cnn: nn.Module, make: Callable[..., DefenseGAN]) -> None:
    x, y = mnist[0][:9], mnist[1][:9]
    index = torch.arange(300, 309)
    attack = EOT(attack=PGD(eps=0.2, steps=3), samples=4)
    # Enough projection steps that the purified digits are mostly recognised (measured: 75% of
    # the first 40 held-out ones): the attack then has gradient steps to take, not just a start.
    model = make(steps=10, lr=0.1).wrap(cnn).eval()
    whole = attack(model, x, y, index=index)
    rows = torch.tensor([6, 2])
    pair = attack(model, x[rows], y[rows], index=index[rows])
    assert torch.equal(pair, whole[rows])
    moved = (whole - x).abs().flatten(1).amax(1)
    assert bool((moved > 0.1).all())  # the attack did move every sample
    # The purifier's draws do shape the examples: under another defense seed they differ.
    reseeded = make(steps=10, lr=0.1, seed=1).wrap(cnn).eval()
    assert not torch.equal(attack(reseeded, x[rows], y[rows], index=index[rows]), pair)
