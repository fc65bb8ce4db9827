"""ARTAttack: ART's evasion attacks behind mlsec's interface, checked against ART run directly."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from art.attacks.evasion import CarliniL2Method, ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from torch import nn

import mlsec
from mlsec.attacks import FGSM, ARTAttack
from mlsec.attacks.art import art_attack_names, gradient_free
from mlsec.attacks.art.estimator import seeded_start
from mlsec.attacks.base import Problem
from mlsec.auditing.suite import load_suite
from mlsec.core.keyed import SampleKeys
from mlsec.core.threat import geometry
from mlsec.errors import InputError


def art_classifier(model: nn.Module) -> PyTorchClassifier:
    """ART's own classifier around a frozen copy of ``model``: the independent reference."""
    return PyTorchClassifier(
        model=copy.deepcopy(model).requires_grad_(False),
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def accuracy(model: nn.Module, x: torch.Tensor | np.ndarray, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(torch.as_tensor(x)).argmax(1) == y).float().mean())


def test_pgd_matches_art_run_directly(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:200], mnist[1][:200]
    settings: dict[str, Any] = {"eps": 0.1, "eps_step": 0.01, "max_iter": 10, "num_random_init": 0}
    mine = ARTAttack("ProjectedGradientDescent", **settings)(cnn, x, y)
    reference = ProjectedGradientDescent(
        art_classifier(cnn), **settings, batch_size=200, verbose=False
    ).generate(x.numpy(), y=y.numpy())
    assert torch.allclose(mine, torch.from_numpy(reference), atol=1e-6)
    robust = accuracy(cnn, mine, y)
    assert robust == accuracy(cnn, reference, y)
    assert robust < accuracy(cnn, x, y) - 0.2  # the attack does something


def test_carlini_l2_with_a_large_budget_is_arts_own_answer(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    # An l2 budget of 100 covers the whole image: the projection changes nothing.
    x, y = mnist[0][:16], mnist[1][:16]
    settings: dict[str, Any] = {
        "max_iter": 10,
        "binary_search_steps": 1,
        "initial_const": 10.0,
        "learning_rate": 0.1,
    }
    mine = ARTAttack("CarliniL2Method", eps=100.0, norm="l2", seed=3, **settings)(cnn, x, y)
    np.random.seed(3)
    reference = CarliniL2Method(
        art_classifier(cnn), **settings, batch_size=16, verbose=False
    ).generate(x.numpy(), y=y.numpy())
    assert torch.allclose(mine, torch.from_numpy(reference), atol=1e-6)
    assert accuracy(cnn, mine, y) <= 0.5


def test_minimum_norm_answers_are_projected(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:64], mnist[1][:64]
    # The overshoot of the DeepFool paper: ART's default (1e-6) stops on the boundary.
    wide = ARTAttack("DeepFool", eps=100.0, norm="l2", max_iter=10, epsilon=0.02)(cnn, x, y)
    tight = ARTAttack("DeepFool", eps=0.5, norm="l2", max_iter=10, epsilon=0.02)(cnn, x, y)
    distances = (wide - x).flatten(1).norm(dim=1)
    assert distances.max() > 1.0  # DeepFool goes beyond 0.5 ...
    assert (tight - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5  # ... and is projected back
    assert accuracy(cnn, wide, y) < 0.1 < accuracy(cnn, tight, y)


def test_queries_count_the_samples_forwarded(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:50], mnist[1][:50]
    # ART's FGSM: one forward (with its backward) per sample, then mlsec's scoring forward,
    # exactly like mlsec's FGSM.
    art_fgsm = ARTAttack("FastGradientMethod", eps=0.1).run(cnn, x, y)
    assert art_fgsm.queries == FGSM(eps=0.1).run(cnn, x, y).queries == 2
    # PGD: the 7 steps, ART's own predictions (its success check), and the scoring forward.
    pgd = ARTAttack("ProjectedGradientDescent", eps=0.1, max_iter=7).run(cnn, x, y)
    assert 8 <= pgd.queries <= 10
    # HopSkipJump's one iteration estimates the gradient from init_eval probes per sample.
    hsj = ARTAttack("HopSkipJump", eps=0.3, max_iter=1, init_eval=50)
    assert hsj.run(cnn, x[:4], y[:4]).queries > 50


def test_targeted_reaches_the_targets(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:100], mnist[1][:100]
    target = (y + 1) % 10
    attack = ARTAttack("ProjectedGradientDescent", eps=0.3, eps_step=0.05, max_iter=20)
    result = attack.run(cnn, x, y, target=target)
    with torch.no_grad():
        predicted = cnn(result.x_adv).argmax(1)
    assert torch.equal(result.success, predicted == target)
    assert result.success.float().mean() >= 0.9
    # Untargeted the same attack reaches the targets far less often: the target was used.
    untargeted = attack(cnn, x, y)
    with torch.no_grad():
        assert (cnn(untargeted).argmax(1) == target).float().mean() < 0.5


def test_an_attack_without_a_targeted_mode_warns_and_returns_x(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:8], mnist[1][:8]
    with pytest.warns(UserWarning, match="DeepFool has no targeted mode"):
        result = ARTAttack("DeepFool", eps=0.3).run(cnn, x, y, target=(y + 1) % 10)
    assert torch.equal(result.x_adv, x)


def test_bfloat16_model(mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module) -> None:
    x, y = mnist[0][:64], mnist[1][:64]
    model = cnn.to(torch.bfloat16)
    result = ARTAttack("DeepFool", eps=0.3, max_iter=3, epsilon=1.0).run(model, x, y)
    assert result.x_adv.dtype == torch.float32
    assert (result.x_adv - x).abs().max() <= 0.3 + 1e-6
    assert result.success.float().mean() >= 0.9


def test_seeded_and_global_generators_restored(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:32], mnist[1][:32]
    np.random.seed(123)
    torch.manual_seed(123)
    numpy_before, torch_before = np.random.get_state(legacy=False), torch.get_rng_state()
    attack = ARTAttack("ProjectedGradientDescent", eps=0.1, max_iter=2, num_random_init=1)
    first = attack(cnn, x, y)
    numpy_after = np.random.get_state(legacy=False)
    assert np.array_equal(numpy_after["state"]["key"], numpy_before["state"]["key"])
    assert numpy_after["state"]["pos"] == numpy_before["state"]["pos"]
    assert torch.equal(torch.get_rng_state(), torch_before)
    assert torch.equal(first, attack(cnn, x, y))
    assert not torch.equal(first, dataclasses.replace(attack, seed=1)(cnn, x, y))


def test_attacks_are_frozen_values() -> None:
    attack = ARTAttack("CarliniL2Method", eps=0.3, norm="l2", max_iter=10, confidence=0.5)
    assert attack.params() == {
        "attack": "CarliniL2Method",
        "eps": 0.3,
        "norm": "l2",
        "bounds": (0.0, 1.0),
        "seed": 0,
        "confidence": 0.5,
        "max_iter": 10,
    }
    assert attack.options == (("confidence", 0.5), ("max_iter", 10))
    assert dataclasses.replace(attack, eps=0.1) == ARTAttack(
        "CarliniL2Method", eps=0.1, norm="l2", options={"max_iter": 10, "confidence": 0.5}
    )
    assert hash(attack) == hash(pickle.loads(pickle.dumps(attack)))
    assert pickle.loads(pickle.dumps(attack)) == attack
    with pytest.raises(dataclasses.FrozenInstanceError):
        attack.eps = 0.5  # type: ignore[misc]
    assert attack != ARTAttack("CarliniL2Method", eps=0.3, norm="l2", max_iter=11)
    # eps 0 (how suites build their attacks) even for ART attacks that refuse it themselves.
    assert ARTAttack("SquareAttack", eps=0.0).eps == 0.0
    zoo = mlsec.attacks.create("art", attack="ZooAttack", eps=0.3, max_iter=5)
    assert isinstance(zoo, ARTAttack) and zoo.options == (("max_iter", 5),)
    deepfool = mlsec.attacks.create("art-deepfool", eps=0.3, max_iter=20)
    assert deepfool.params()["attack"] == "DeepFool"
    assert dataclasses.replace(deepfool, eps=0.2) == mlsec.attacks.create(
        "art-deepfool", eps=0.2, max_iter=20
    )
    assert mlsec.attacks.get("art-deepfool").norms == ("linf", "l2")


def test_gradient_free_follows_arts_requirements() -> None:
    assert ARTAttack("HopSkipJump", eps=0.3).gradient_free
    assert mlsec.attacks.create("art", attack="HopSkipJump", eps=0.3).gradient_free
    assert ARTAttack("ZooAttack", eps=0.3).gradient_free
    assert ARTAttack("SquareAttack", eps=0.3).gradient_free
    assert not ARTAttack("CarliniL2Method", eps=0.3).gradient_free
    assert not ARTAttack("AutoAttack", eps=0.3).gradient_free  # APGD inside
    # The registered classes' declared flags agree with ART's requirements.
    for name in mlsec.attacks.list_attacks():
        cls = mlsec.attacks.get(name)
        if issubclass(cls, ARTAttack) and cls.art_class:
            assert cls.gradient_free == gradient_free(cls.art_class), name
    assert {"DeepFool", "ElasticNet", "HopSkipJump", "ZooAttack"} <= set(art_attack_names())
    assert "AdversarialPatch" not in art_attack_names()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: ARTAttack("DeepFoo", eps=0.3),
            r"no evasion attack 'DeepFoo'; did you mean 'DeepFool'",
        ),
        (lambda: ARTAttack("deepfool", eps=0.3), r"did you mean .*'DeepFool'"),
        (
            lambda: ARTAttack("DeepFool", eps=0.3, max_iters=3),
            r"DeepFool has no parameter 'max_iters'; its parameters: batch_size, epsilon, max_iter",
        ),
        (lambda: ARTAttack("DeepFool", eps=0.3, max_iter=0), "refuses these settings: .*positive"),
        (lambda: ARTAttack("CarliniL2Method", eps=0.3, targeted=True), "from the call's target="),
        (
            lambda: ARTAttack("DeepFool", eps=0.3, classifier=nn.Linear(1, 1)),
            "'classifier' from the model",
        ),
        (
            lambda: ARTAttack("ProjectedGradientDescent", eps=0.3, norm="l2", options={"eps": 1}),
            "'eps' from eps=",
        ),
        (lambda: ARTAttack("AdversarialPatch", eps=0.3), "returns a patch"),
        (lambda: ARTAttack("DecisionTreeAttack", eps=0.3), "needs another kind of estimator"),
        (lambda: ARTAttack("SimBA", eps=0.3, options={"attack": "px"}), "mlsec's own parameter"),
        (lambda: ARTAttack("DeepFool", eps=0.3, max_iter=None), "leave it out for ART's default"),
        (lambda: ARTAttack("DeepFool", eps=-1.0), "eps must be"),
        (lambda: mlsec.attacks.create("art", eps=0.3), "needs the ART attack's class name"),
        (
            lambda: mlsec.attacks.create("art-deepfool", eps=0.3, attack="ElasticNet"),
            "runs ART's DeepFool",
        ),
    ],
)
def test_bad_settings_raise_one_line_errors(build: object, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        build()  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_model_failure_propagates_and_model_is_restored(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    calls = []

    class Failing(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            if len(calls) == 4:
                raise RuntimeError("planted failure")
            return cnn(x)

    model = Failing().train()
    with pytest.raises(RuntimeError, match="planted failure"):
        ARTAttack("DeepFool", eps=0.3).run(model, mnist[0][:8], mnist[1][:8])
    assert model.training and cnn.training is False


def test_toml_suite_round_trips_and_audits(
    tmp_path: Path, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    path = tmp_path / "art.toml"
    path.write_text(
        textwrap.dedent(
            """
            name = "art-gate"
            eps = [0.3]

            [[attack]]
            name = "art"
            attack = "DeepFool"
            max_iter = 3
            epsilon = 1.0

            [[attack]]
            name = "art-elasticnet"
            label = "ead"
            max_iter = 2
            binary_search_steps = 1
            initial_const = 100.0
            confidence = 10.0
            learning_rate = 0.1
            decision_rule = "L1"
            """
        )
    )
    suite = load_suite(path)
    deepfool, ead = (entry.attack for entry in suite.entries)
    assert isinstance(ead, ARTAttack)
    assert deepfool == ARTAttack("DeepFool", eps=0.0, max_iter=3, epsilon=1.0)
    assert dict(ead.options)["decision_rule"] == "L1"
    written = tmp_path / "written.toml"
    written.write_text(suite.to_toml())
    assert load_suite(written) == suite
    report = mlsec.audit(cnn, (mnist[0][:100], mnist[1][:100]), suite=suite, sanity_checks=False)
    assert report.robust_accuracy("art", 0.3) <= 0.05
    assert report.robust_accuracy("ead", 0.3) <= 0.2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_iters = 3", r"line 5: ART's DeepFool has no parameter 'max_iters'"),
        # ART does not say which option it refuses: the error names the table's line.
        ("max_iter = 0", r"line 2: ART's DeepFool refuses these settings: .* positive integer"),
        ("targeted = true", r"line 5: ART's DeepFool has no parameter 'targeted'"),
    ],
)
def test_bad_art_options_in_a_suite_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[[attack]]\nname = "art"\nattack = "DeepFool"\nepsilon = 0.5\n{line}\n')
    with pytest.raises(InputError, match=message) as info:
        load_suite(path)
    assert "\n" not in str(info.value)


def _problem(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Problem:
    return Problem(
        model=model,
        model_dtype=torch.float32,
        x=x,
        y=y,
        target=None,
        geometry=geometry("linf"),
        eps=torch.tensor(0.3),
        low=torch.tensor(0.0),
        high=torch.tensor(1.0),
        keys=SampleKeys.of(0, index),
    )


def test_seeded_starts_are_drawn_per_sample(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    # The decision-based attacks' noise starts come from each sample's key: a sample draws the
    # same start in a batch of 30 as in a batch of its last 12, and another index draws another.
    x, y = mnist[0][:30], mnist[1][:30]
    index = torch.arange(30) + 500
    whole = seeded_start(_problem(cnn, x, y, index), cnn)
    part = seeded_start(_problem(cnn, x[18:], y[18:], index[18:]), cnn)
    # Rows started from noise, not from an image of the batch (the fallback when no noise fits).
    noise = (whole[:, None] != x[None]).flatten(2).any(2).all(1)
    assert int(noise[18:].sum()) >= 6
    assert torch.equal(whole[18:][noise[18:]], part[noise[18:]])
    with torch.no_grad():
        assert bool((cnn(whole[noise]).argmax(1) != cnn(x[noise]).argmax(1)).all())
    moved = seeded_start(_problem(cnn, x, y, index + 1), cnn)
    assert not bool((moved[noise] == whole[noise]).flatten(1).all(1).any())


def test_art_attacks_say_they_are_not_keyed_per_sample() -> None:
    # ART draws from numpy's and torch's global generators, seeded once per call.
    assert ARTAttack.sample_keyed is False
    created = mlsec.attacks.create("art", attack="DeepFool", eps=0.3)
    assert isinstance(created, ARTAttack) and created.sample_keyed is False
