"""Property tests of the guarantees every attack makes, over random shapes, dtypes and settings.

They run over every registered attack (``mlsec.attacks.list_attacks()``), each with small
settings. The guarantees (see the Attack base class): every sample of ``x_adv`` lies within eps
of ``x`` in the attack's norm and inside the bounds; shape, dtype and device are those of ``x``;
``x`` and ``y`` are not mutated; the same seed gives the same result; ``success`` is what the
model predicts on ``x_adv``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mlsec
from mlsec.attacks import Attack, create, get, list_attacks
from mlsec.core.threat import Norm

# DeepFool has no targeted mode: with a drawn target it warns and returns x (still admissible).
pytestmark = pytest.mark.filterwarnings("ignore:ART's DeepFool has no targeted mode:UserWarning")

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
NORMS: tuple[Norm, ...] = ("linf", "l2")
MAX_EPS: dict[Norm, float] = {"linf": 1.0, "l2": 3.0}
TOLERANCE = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    # The tensors here are tiny: intra-op threads only add overhead, up to 100x on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Case:
    attack: Attack
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None


# Every registered attack, with settings small enough for hundreds of examples; an attack
# without an entry runs with its defaults. Drawn settings (steps, restarts, ...) go on top.
SMALL: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 3},
    "apgd": {"steps": 3},
    "apgd-dlr": {"steps": 3},
    "apgd-t": {"steps": 3, "targets": 2},
    "square": {"queries": 12},
    "eot": {"attack": {"name": "pgd", "steps": 2}, "samples": 2},
    "art": {"attack": "ProjectedGradientDescent", "max_iter": 2},
    "art-deepfool": {"max_iter": 2},
    "art-elasticnet": {"max_iter": 2, "binary_search_steps": 1},
}
# The fewest classes each attack's loss needs (targeted DLR ranks four logits).
MIN_CLASSES = {"apgd-dlr": 4, "apgd-t": 4}
# Examples per attack: the core attacks get the most, ART's (seconds to set up) the fewest.
EXAMPLES = {"fgsm": 500, "pgd": 700}
DEFAULT_EXAMPLES = 60
ART_EXAMPLES = 15
ATTACKS = list_attacks()


def _examples(name: str) -> int:
    return EXAMPLES.get(name, ART_EXAMPLES if name.startswith("art") else DEFAULT_EXAMPLES)


def _attack(draw: st.DrawFn, name: str, common: dict[str, Any]) -> Attack:
    params = {**SMALL.get(name, {}), **common}
    fields = {f.name for f in dataclasses.fields(get(name))}
    if "restarts" in fields and not name.startswith("art"):
        params["restarts"] = draw(st.integers(1, 3))
    if name == "pgd":
        params["steps"] = draw(st.integers(1, 5))
        params["random_start"] = draw(st.booleans())
    return create(name, **params)


@st.composite
def cases(draw: st.DrawFn, name: str, bounds: tuple[float, float] = (0.0, 1.0)) -> Case:
    batch = draw(st.integers(1, 5))
    channels = draw(st.integers(1, 3))
    height = draw(st.integers(2, 8))
    width = draw(st.integers(2, 8))
    classes = draw(st.integers(MIN_CLASSES.get(name, 2), 5))
    dtype = draw(st.sampled_from(DTYPES))
    norms = [n for n in NORMS if n in get(name).norms]
    norm: Norm = draw(st.sampled_from(norms))
    eps = draw(st.floats(0.0, MAX_EPS[norm]))
    seed = draw(st.integers(0, 2**31 - 1))
    attack = _attack(draw, name, {"eps": eps, "norm": norm, "bounds": bounds, "seed": seed})

    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    features = channels * height * width
    linear = nn.Linear(features, classes)
    with torch.no_grad():
        # Weights of scale 1/sqrt(features) keep the logits O(1), so that attacks within these
        # budgets sometimes succeed and sometimes fail.
        linear.weight.copy_(torch.randn(classes, features, generator=generator) / features**0.5)
        linear.bias.copy_(torch.randn(classes, generator=generator))
    model = nn.Sequential(nn.Flatten(), linear)

    low, high = bounds
    uniform = torch.rand(batch, channels, height, width, generator=generator, dtype=torch.float64)
    x = (low + (high - low) * uniform).to(dtype)
    y = torch.randint(0, classes, (batch,), generator=generator)
    target = (
        torch.randint(0, classes, (batch,), generator=generator) if draw(st.booleans()) else None
    )
    return Case(attack=attack, model=model, x=x, y=y, target=target)


def _check_guarantees(case: Case) -> None:
    attack, model, x, y, target = case.attack, case.model, case.x, case.y, case.target
    x_before, y_before = x.clone(), y.clone()
    target_before = None if target is None else target.clone()

    result = attack.run(model, x, y, target=target)
    x_adv = result.x_adv

    assert x_adv.shape == x.shape
    assert x_adv.dtype == x.dtype
    assert x_adv.device == x.device
    assert torch.equal(x, x_before), "the attack mutated x"
    assert torch.equal(y, y_before), "the attack mutated y"
    if target is not None:
        assert target_before is not None
        assert torch.equal(target, target_before), "the attack mutated target"

    delta = (x_adv.double() - x.double()).flatten(1)
    distance = delta.abs().amax(dim=1) if attack.norm == "linf" else delta.norm(dim=1)
    assert bool((distance <= attack.eps + TOLERANCE).all()), (
        f"{attack.norm} distance {distance.tolist()} exceeds eps {attack.eps}"
    )
    low, high = attack.bounds
    assert float(x_adv.double().min()) >= low, f"x_adv below the lower bound {low}"
    assert float(x_adv.double().max()) <= high, f"x_adv above the upper bound {high}"

    again = attack.run(model, x, y, target=target)
    assert torch.equal(again.x_adv, x_adv), "the same seed gave different examples"
    assert torch.equal(again.success, result.success)

    with torch.no_grad():
        predicted = model(x_adv.float()).argmax(dim=1)
    expected = predicted != y if target is None else predicted == target
    assert torch.equal(result.success, expected), (
        f"success {result.success.tolist()} but the model predicts {predicted.tolist()} "
        f"(y {y.tolist()}, target {None if target is None else target.tolist()})"
    )


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_keep_their_guarantees(name: str) -> None:
    @settings(max_examples=_examples(name), deadline=None)
    @given(case=cases(name))
    def check(case: Case) -> None:
        _check_guarantees(case)

    check()


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_keep_their_guarantees_with_other_bounds(name: str) -> None:
    @settings(max_examples=max(_examples(name) // 4, 5), deadline=None)
    @given(case=cases(name, bounds=(-1.0, 2.0)))
    def check(case: Case) -> None:
        _check_guarantees(case)

    check()


def test_every_registered_attack_is_drawn() -> None:
    # The parametrisation comes from the registry: a newly registered attack is checked too.
    assert {"fgsm", "pgd", "apgd", "square", "eot"} <= set(ATTACKS)
    assert sorted(mlsec.attacks.list_attacks()) == ATTACKS
