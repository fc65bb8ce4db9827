"""Defense-GAN's projection: restarts folded into one batch, errors that fall, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlsec.defenses.purifiers.networks import (
    load_generator,
    mnist_generator,
    project,
    save_generator,
)
from mlsec.errors import InputError


@pytest.fixture
def generator() -> torch.nn.Module:
    torch.manual_seed(0)
    return mnist_generator(latent=16)


def test_folded_restarts_equal_a_loop_over_restarts(generator: torch.nn.Module) -> None:
    # The paper's loop: one projection per random start, keep the best. Folded into one batch it
    # must give the same answer (Adam is elementwise; eval-mode batch norm couples nothing).
    x = torch.rand(5, 1, 28, 28)
    z0 = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    folded, z = project(generator, x, steps=15, restarts=3, z0=z0)
    singles = [project(generator, x, steps=15, restarts=1, z0=z0[r : r + 1]) for r in range(3)]
    errors = torch.stack([(rec - x).pow(2).flatten(1).sum(1) for rec, _ in singles])
    best = errors.argmin(0)
    expected = torch.stack([singles[int(r)][0][i] for i, r in enumerate(best)])
    assert torch.allclose(folded, expected, atol=1e-5)
    assert torch.allclose(
        z, torch.stack([singles[int(r)][1][i] for i, r in enumerate(best)]), atol=1e-5
    )


def test_projection_recovers_the_generators_own_images(generator: torch.nn.Module) -> None:
    # An image the generator can make is reconstructed far better than from the random start.
    with torch.no_grad():
        x = generator.eval()(torch.randn(8, 16, generator=torch.Generator().manual_seed(2)))
    start, _ = project(generator, x, steps=1, restarts=1, lr=1e-6)
    rec, _ = project(generator, x, steps=200, restarts=4, lr=0.05)
    before = (start - x).pow(2).flatten(1).sum(1)
    after = (rec - x).pow(2).flatten(1).sum(1)
    assert bool((after < 0.2 * before).all()), (before, after)


def test_projection_is_seeded_and_leaves_the_generator_alone(generator: torch.nn.Module) -> None:
    generator.train()
    flags = [p.requires_grad for p in generator.parameters()]
    state = {k: v.clone() for k, v in generator.state_dict().items()}
    x = torch.rand(4, 1, 28, 28)
    first, _ = project(generator, x, steps=5, restarts=2, seed=3)
    second, _ = project(generator, x, steps=5, restarts=2, seed=3)
    other, _ = project(generator, x, steps=5, restarts=2, seed=4)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert generator.training
    assert [p.requires_grad for p in generator.parameters()] == flags
    for key, value in generator.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"restarts": 0}, "restarts must be an integer >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"z0": torch.zeros(2, 4, 8)}, r"z0 must have shape \(10, 4, 16\)"),
    ],
)
def test_bad_settings_raise_one_line_errors(
    generator: torch.nn.Module, kwargs: dict, message: str
) -> None:
    with pytest.raises(InputError, match=message) as info:
        project(generator, torch.rand(4, 1, 28, 28), **kwargs)
    assert "\n" not in str(info.value)


def test_generator_round_trip_and_latent_mismatch(
    generator: torch.nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "generator.safetensors"
    save_generator(generator, path)
    again = load_generator(path)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(project(generator, x, steps=3)[0], project(again, x, steps=3)[0])
    with pytest.raises(InputError, match=r"latent size 32 does not match .* \(latent 16\)") as info:
        load_generator(path, latent=32)
    assert "\n" not in str(info.value)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot read generator weights"):
        load_generator(tmp_path / "junk.safetensors")


def test_chunked_steps_equal_one_pass(generator: torch.nn.Module) -> None:
    # Chunking splits each step's forward and backward passes; the summed gradient and the one
    # Adam update over all latents are the same (the CPU default is 256 latents per pass).
    x = torch.rand(6, 1, 28, 28)
    z0 = torch.randn(3, 6, 16, generator=torch.Generator().manual_seed(4))
    whole, z_whole = project(generator, x, steps=10, restarts=3, z0=z0, chunk=18)
    parts, z_parts = project(generator, x, steps=10, restarts=3, z0=z0, chunk=5)
    assert torch.allclose(whole, parts, atol=1e-5)
    assert torch.allclose(z_whole, z_parts, atol=1e-5)
    with pytest.raises(InputError, match="chunk must be an integer >= 1"):
        project(generator, x, chunk=0)
