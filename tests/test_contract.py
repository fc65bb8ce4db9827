"""The contract every registered attack keeps (ARCHITECTURE.md, "Core types")."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import fast_attack
from torch import nn

import mlsec
from mlsec.attacks import FGSM, PGD, Perturbation, Problem
from mlsec.core.threat import L2, LINF, geometry
from mlsec.errors import InputError

ATTACKS = mlsec.attacks.list_attacks()
N = 64


def contract_attack(name: str, **params: Any) -> mlsec.Attack:
    """A registered attack with the suite's fast settings, overridden by ``params``."""
    return fast_attack(name, **params)


def distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    delta = (a.double() - b.double()).flatten(1)
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


def test_registry_lists_the_core_attacks() -> None:
    assert {"fgsm", "pgd", "apgd", "square", "eot"} <= set(ATTACKS)
    assert sorted(ATTACKS) == ATTACKS


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("linf", 0.3), ("l2", 1.5)])
def test_within_eps_and_bounds(
    name: str, norm: str, eps: float, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:N], mnist[1][:N]
    if norm not in mlsec.attacks.get(name).norms:
        # An attack without this norm says so at construction, in one line.
        with pytest.raises(InputError, match=f"supports norm .* \\(got '{norm}'\\)"):
            contract_attack(name, eps=eps, norm=norm)
        return
    x_adv = contract_attack(name, eps=eps, norm=norm)(cnn, x, y)
    assert distance(x_adv, x, norm).max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0
    assert x_adv.max().item() <= 1.0
    # The attack must actually move: an attack that returns x passes the checks above.
    assert distance(x_adv, x, norm).max().item() > 0.5 * eps


@pytest.mark.parametrize("name", ATTACKS)
def test_inputs_not_mutated(
    name: str, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:N].clone(), mnist[1][:N].clone()
    x_before, y_before = x.clone(), y.clone()
    target = (y + 1) % 10
    target_before = target.clone()
    state_before = {k: v.clone() for k, v in cnn.state_dict().items()}
    contract_attack(name, eps=0.3).run(cnn, x, y)
    contract_attack(name, eps=0.3).run(cnn, x, y, target=target)
    assert torch.equal(x, x_before)
    assert torch.equal(y, y_before)
    assert torch.equal(target, target_before)
    for key, value in cnn.state_dict().items():
        assert torch.equal(value, state_before[key]), key


class ModeRecorder(nn.Module):
    """Wraps a model; records the training flag at each forward; can fail on a given call."""

    def __init__(self, model: nn.Module, fail_on_call: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.dropout = nn.Dropout(0.5)
        self.modes: list[bool] = []
        self.grad_flags: list[bool] = []
        self.fail_on_call = fail_on_call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training or self.model.training or self.dropout.training)
        self.grad_flags.append(any(p.requires_grad for p in self.parameters()))
        if self.fail_on_call is not None and len(self.modes) == self.fail_on_call:
            raise RuntimeError("planted failure")
        return self.dropout(self.model(x))


def _mixed_state(model: ModeRecorder) -> tuple[list[bool], list[bool]]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("fail_on_call", [None, 2, 3])
def test_mode_and_requires_grad_restored(
    name: str, fail_on_call: int | None, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    model = ModeRecorder(cnn, fail_on_call=fail_on_call)
    model.train()
    next(iter(model.model.children())).eval()  # a mixed state must come back exactly
    params = list(model.parameters())
    params[0].requires_grad_(False)
    before = _mixed_state(model)
    x, y = mnist[0][:8], mnist[1][:8]
    if fail_on_call is None:
        contract_attack(name, eps=0.3).run(model, x, y)
    else:
        with pytest.raises(RuntimeError, match="planted failure"):
            contract_attack(name, eps=0.3).run(model, x, y)
    assert _mixed_state(model) == before
    assert model.modes, "the model was never called"
    assert not any(model.modes), "the attack ran the model in train mode"
    assert not any(model.grad_flags), "parameters kept requires_grad during the attack"


@pytest.mark.parametrize("name", ATTACKS)
def test_same_seed_same_result(
    name: str, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:N], mnist[1][:N]
    first = contract_attack(name, eps=0.2, seed=7)(cnn, x, y)
    second = contract_attack(name, eps=0.2, seed=7)(cnn, x, y)
    assert torch.equal(first, second)


def test_different_seed_changes_random_start(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:N], mnist[1][:N]
    first = PGD(eps=0.2, steps=2, seed=1)(cnn, x, y)
    second = PGD(eps=0.2, steps=2, seed=2)(cnn, x, y)
    assert not torch.equal(first, second)


# ART's attacks draw from global generators seeded per call, and say so (``sample_keyed``).
KEYED = [name for name in ATTACKS if contract_attack(name, eps=0.2).sample_keyed]


def test_only_the_art_bridge_says_its_draws_are_not_keyed_by_sample() -> None:
    assert set(ATTACKS) - set(KEYED) == {name for name in ATTACKS if name.startswith("art")}
    assert {"fgsm", "pgd", "apgd", "square", "eot"} <= set(KEYED)


@pytest.mark.parametrize("name", KEYED)
def test_a_samples_result_does_not_depend_on_its_batch(
    name: str, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    # Randomness is keyed by (seed, index, restart): the last half of a batch, attacked alone with
    # its positions as index, gets the same examples.
    attack = contract_attack(name, eps=0.2)
    x, y = mnist[0][:N], mnist[1][:N]
    index = torch.arange(N) + 100
    whole = attack.run(cnn, x, y, index=index)
    half = attack.run(cnn, x[N // 2 :], y[N // 2 :], index=index[N // 2 :])
    assert torch.equal(half.success, whole.success[N // 2 :])
    assert torch.allclose(half.x_adv, whole.x_adv[N // 2 :], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (torch.arange(8).float(), "integer tensor"),
        (torch.arange(7), r"shape \[8\]"),
        (torch.arange(8) - 1, ">= 0"),
    ],
)
def test_bad_index_raises_one_line_errors(
    index: torch.Tensor, message: str, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    with pytest.raises(InputError, match=message) as info:
        PGD(eps=0.3, steps=2).run(cnn, mnist[0][:8], mnist[1][:8], index=index)
    assert "\n" not in str(info.value)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_shape_dtype_device_preserved(
    name: str,
    dtype: torch.dtype,
    device: str,
    mnist: tuple[torch.Tensor, torch.Tensor],
    cnn: nn.Module,
) -> None:
    model = cnn.to(device)
    x, y = mnist[0][:16].to(device=device, dtype=dtype), mnist[1][:16].to(device)
    result = contract_attack(name, eps=0.3).run(model, x, y)
    assert result.x_adv.shape == x.shape
    assert result.x_adv.dtype == dtype
    assert result.x_adv.device == x.device
    assert result.success.shape == y.shape
    assert result.success.dtype == torch.bool
    assert distance(result.x_adv, x, "linf").max().item() <= 0.3 + 1e-6
    assert result.x_adv.min().item() >= 0.0 and result.x_adv.max().item() <= 1.0


@pytest.mark.parametrize("name", ATTACKS)
def test_success_matches_the_models_prediction(
    name: str, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:N], mnist[1][:N]
    target = (y + 3) % 10
    for kwargs, wanted in (({}, None), ({"target": target}, target)):
        result = contract_attack(name, eps=0.2).run(cnn, x, y, **kwargs)
        with torch.no_grad():
            predicted = cnn(result.x_adv).argmax(1)
        expected = predicted != y if wanted is None else predicted == wanted
        assert torch.equal(result.success, expected)
        assert torch.equal(result.logits.argmax(1), predicted)


@pytest.mark.parametrize("name", ATTACKS)
def test_robust_accuracy_well_below_clean(
    name: str, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:200], mnist[1][:200]
    with torch.no_grad():
        clean = (cnn(x).argmax(1) == y).float().mean().item()
        x_adv = contract_attack(name, eps=0.3)(cnn, x, y)
        robust = (cnn(x_adv).argmax(1) == y).float().mean().item()
    assert clean >= 0.97
    assert robust <= 0.2, f"{name}: robust accuracy {robust:.3f} against clean {clean:.3f}"


def test_pgd_stronger_than_fgsm_and_targeted_reaches_targets(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:200], mnist[1][:200]
    fgsm = FGSM(eps=0.1).run(cnn, x, y).success.float().mean().item()
    pgd = PGD(eps=0.1, steps=20).run(cnn, x, y).success.float().mean().item()
    assert pgd >= fgsm + 0.1, (fgsm, pgd)
    target = (y + 1) % 10
    hit = PGD(eps=0.3, steps=20).run(cnn, x[:100], y[:100], target=target[:100]).success
    assert hit.float().mean().item() >= 0.8


def _plain_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int
) -> torch.Tensor:
    """Textbook PGD from the clean input, returning the last iterate."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.clamp(
            torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps), 0, 1
        )
    return x_adv


def test_pgd_never_weaker_than_its_last_iterate(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    # A large step makes iterates oscillate, so the last iterate sometimes loses a success.
    x, y = mnist[0][:300], mnist[1][:300]
    eps, step, steps = 0.15, 0.1, 8
    mine = PGD(eps=eps, step_size=step, steps=steps, random_start=False).run(cnn, x, y).success
    x_last = _plain_pgd(cnn, x, y, eps, step, steps)
    with torch.no_grad():
        last = cnn(x_last).argmax(1) != y
    assert not bool((last & ~mine).any()), "a sample broken by the last iterate was lost"
    assert int((mine & ~last).sum()) >= 1, (
        "expected the kept iterate to beat the last one somewhere"
    )


def test_restarts_never_lose_what_one_start_finds(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    # Restart 0 of a folded batch replays the single-start run (fold 0 keeps each sample's key).
    x, y = mnist[0][:200], mnist[1][:200]
    one = PGD(eps=0.08, steps=5, restarts=1).run(cnn, x, y).success
    three = PGD(eps=0.08, steps=5, restarts=3).run(cnn, x, y)
    assert not bool((one & ~three.success).any())
    assert three.queries == 3 * 6


def test_normalized_adapter_attacks_in_pixel_space(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    mean, std = 0.1307, 0.3081

    class ExpectsNormalized(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return cnn(z * std + mean)

    wrapped = mlsec.Normalized(ExpectsNormalized(), mean=[mean], std=[std])
    x, y = mnist[0][:64], mnist[1][:64]
    with torch.no_grad():
        assert torch.allclose(wrapped(x), cnn(x), atol=1e-5)
    x_adv = FGSM(eps=0.2)(wrapped, x, y)
    assert distance(x_adv, x, "linf").max().item() <= 0.2 + 1e-6
    assert torch.allclose(x_adv, FGSM(eps=0.2)(cnn, x, y), atol=1e-6)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"eps": -0.1}, "eps must be"),
        ({"eps": float("nan")}, "eps must be"),
        ({"eps": 0.3, "norm": "l1"}, "norm must be"),
        ({"eps": 0.3, "bounds": (1.0, 0.0)}, "bounds must be"),
        ({"eps": 0.3, "steps": 0}, "steps must be"),
        ({"eps": 0.3, "restarts": 0}, "restarts must be"),
        ({"eps": 0.3, "step_size": -1.0}, "step_size must be"),
        ({"eps": 0.3, "stepz": 3}, "has no parameter 'stepz'"),
        ({"steps": 3}, "needs eps"),
    ],
)
def test_bad_hyperparameters_raise(params: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        mlsec.attacks.create("pgd", **params)


def test_attacks_are_frozen_values() -> None:
    attack = PGD(eps=0.3, steps=40)
    with pytest.raises(dataclasses.FrozenInstanceError):
        attack.eps = 0.5  # type: ignore[misc]
    assert attack == mlsec.attacks.create("pgd", eps=0.3, steps=40)
    assert dataclasses.replace(attack, eps=0.1).eps == 0.1
    with pytest.raises(TypeError):
        PGD(0.3)  # type: ignore[call-arg]  # keyword-only


def _nan_model() -> nn.Module:
    class NaNModel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 10), float("nan"))

    return NaNModel()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("labels out of range", r"labels in \[.*\] but the model has 10 outputs"),
        ("negative labels", r"labels in \[-1"),
        ("shape mismatch", "must have shape"),
        ("float labels", "integer tensor"),
        ("outside bounds", "outside the bounds"),
        ("nan input", "NaN or infinite"),
        ("nan logits", "NaN or infinite logits"),
        ("no batch dim", "batch dimension"),
        ("not a module", "torch.nn.Module"),
    ],
)
def test_bad_inputs_raise_one_line_errors(
    case: str, message: str, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:8].clone(), mnist[1][:8].clone()
    model: object = cnn
    if case == "labels out of range":
        y[0] = 10
    elif case == "negative labels":
        y[0] = -1
    elif case == "shape mismatch":
        y = y[:5]
    elif case == "float labels":
        y = y.float()
    elif case == "outside bounds":
        x = x * 255
    elif case == "nan input":
        x[0, 0, 0, 0] = float("nan")
    elif case == "nan logits":
        model = _nan_model()
    elif case == "no batch dim":
        x = x[0, 0, 0]
    elif case == "not a module":
        model = lambda t: t  # noqa: E731
    with pytest.raises(InputError, match=message) as info:
        PGD(eps=0.3, steps=2).run(model, x, y)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_empty_batch_returns_empty(cnn: nn.Module) -> None:
    x, y = torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
    result = PGD(eps=0.3, steps=2).run(cnn, x, y)
    assert result.x_adv.shape == x.shape
    assert result.success.shape == (0,)


def test_model_without_input_gradient_is_refused(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x.flatten(1).detach())

    with pytest.raises(InputError, match="no gradient with respect to its input"):
        PGD(eps=0.3, steps=2).run(Detached(), mnist[0][:4], mnist[1][:4])


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_bfloat16_model_keeps_eps_exact(
    name: str, input_dtype: torch.dtype, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    # eps 0.3 is not a bfloat16 number: the attack must not round it up to 0.30078125.
    model = cnn.to(torch.bfloat16)
    x, y = mnist[0][:32].to(input_dtype), mnist[1][:32]
    result = contract_attack(name, eps=0.3).run(model, x, y)
    assert result.x_adv.dtype == input_dtype
    assert distance(result.x_adv, x, "linf").max().item() <= 0.3 + 1e-6
    assert result.success.float().mean().item() >= 0.8


def test_registry_refuses_duplicate_and_upper_case_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        mlsec.attacks.register_attack("pgd")(PGD)
    with pytest.raises(ValueError, match="lower case"):
        mlsec.attacks.register_attack("MyAttack")(PGD)


def test_last_iterate_pgd_equals_textbook_pgd(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    # Without a random start both follow the same path; last_iterate returns where it ends.
    x, y = mnist[0][:100], mnist[1][:100]
    eps, step, steps = 0.15, 0.1, 6
    mine = PGD(eps=eps, step_size=step, steps=steps, random_start=False, last_iterate=True)
    expected = _plain_pgd(cnn, x, y, eps, step, steps)
    assert torch.allclose(mine(cnn, x, y), expected, atol=1e-6)
    first = PGD(eps=eps, step_size=step, steps=steps, random_start=False)(cnn, x, y)
    assert not torch.allclose(first, expected, atol=1e-6), "first-success differs somewhere"


@pytest.mark.parametrize("restarts", [1, 3])
def test_the_accelerator_code_path_finds_what_the_cpu_path_finds(
    monkeypatch: pytest.MonkeyPatch,
    mnist: tuple[torch.Tensor, torch.Tensor],
    cnn: nn.Module,
    restarts: int,
) -> None:
    # On the CPU broken samples leave the batch; on an accelerator the batch keeps its shape and
    # the bookkeeping is plain where()s. Run the second path here: the answers must agree.
    from mlsec.attacks import pgd as pgd_module

    x, y = mnist[0][:200], mnist[1][:200]
    attack = PGD(eps=0.08, steps=10, restarts=restarts)
    shrinking = attack.run(cnn, x, y)
    monkeypatch.setattr(pgd_module, "SHRINK_ON_CPU", False)
    full = attack.run(cnn, x, y)
    assert 20 < int(full.success.sum()) < 190
    assert torch.equal(shrinking.success, full.success)
    assert torch.allclose(shrinking.x_adv, full.x_adv, atol=1e-5)
    assert torch.equal(shrinking.logits.argmax(1), full.logits.argmax(1))


class CountingForward(nn.Module):
    """Wraps a model; counts its forward passes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self.model(x)
        return out


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd", "square", "eot"])
def test_run_unchecked_gives_runs_result_without_the_label_check(
    name: str, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:32], mnist[1][:32]
    model = CountingForward(cnn)
    attack = contract_attack(name, eps=0.2)
    checked = attack.run(model, x, y)
    checked_calls, model.calls = model.calls, 0
    unchecked = attack.run_unchecked(model, x, y)
    assert torch.equal(unchecked.x_adv, checked.x_adv)
    assert torch.equal(unchecked.success, checked.success)
    assert unchecked.queries == checked.queries
    # The checks of run cost one forward (labels against the model's outputs); nothing else goes.
    assert model.calls == checked_calls - 1


def test_run_unchecked_still_projects_and_restores_the_model(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    class Overshoot(mlsec.Attack):
        """Returns examples far outside the ball and the bounds."""

        def _perturb(self, problem: Problem) -> Perturbation:
            return Perturbation(x_adv=problem.x + 5.0, logits=None, queries=0)

    x, y = mnist[0][:16], mnist[1][:16]
    x_before = x.clone()
    cnn.train()
    result = Overshoot(eps=0.1).run_unchecked(cnn, x, y)
    assert cnn.training, "the model's mode was not restored"
    assert all(p.requires_grad for p in cnn.parameters())
    assert torch.equal(x, x_before)
    assert distance(result.x_adv, x, "linf").max().item() <= 0.1 + 1e-6
    assert result.x_adv.max().item() <= 1.0
    # In the ball's corner at +eps wherever the bounds allow it.
    assert torch.allclose(result.x_adv, (x + 0.1).clamp(max=1.0))


def test_each_norms_region_is_its_ball_within_the_bounds() -> None:
    assert geometry("linf") is LINF and geometry("l2") is L2
    assert (LINF.art_norm, L2.art_norm) == (float("inf"), 2)
    x = torch.tensor([[0.0, 0.5, 0.95, 0.2]])
    far = torch.tensor([[0.9, -0.4, 0.5, 0.2]])
    eps = torch.tensor(0.1)
    box = LINF.region(x, eps, torch.tensor(0.0), torch.tensor(1.0))
    assert torch.allclose(box.project(far), torch.tensor([[0.1, 0.4, 0.85, 0.2]]))
    assert bool(box.contains(x).all())
    assert box.contains(far).tolist() == [[False, False, False, True]]
    ball = L2.region(x, torch.tensor(0.5), torch.tensor(0.0), torch.tensor(1.0))
    projected = ball.project(far)
    assert abs(float((projected - x).norm()) - 0.5) < 1e-6  # onto the sphere: the bounds allow it
    assert bool(ball.contains(projected).all()) and not bool(ball.contains(far).any())
    assert ball.contains(x).shape == (1, 1)  # per sample, broadcastable to x
    # Selecting rows keeps each row's own ball.
    two = L2.region(torch.cat([x, x + 0.01]), 0.5, 0.0, 1.0).select(torch.tensor([False, True]))
    assert bool(two.contains(x + 0.01).all())
    assert LINF.erasing_eps(0.0, 1.0, 784) == 0.5
    assert L2.erasing_eps(0.0, 1.0, 784) == 28.0
