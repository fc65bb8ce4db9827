"""The GAN purifiers behind the Defense interface: Defense-GAN, APE-GAN, their files and audits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import mlsec
from mlsec.attacks import FGSM
from mlsec.auditing.defended import evaluate_defense, worst_cases
from mlsec.cli import main
from mlsec.defenses import APEGAN, PURIFIERS, DefenseGAN, PurifiedModel, load_defense
from mlsec.defenses.purifiers.ape_gan import ape_generator
from mlsec.defenses.purifiers.networks import mnist_encoder, mnist_generator
from mlsec.defenses.weights import save_weights
from mlsec.errors import InputError

WEIGHTS = Path(mlsec.__file__).parent / "zoo" / "weights"


def run_cli(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mlsec.datasets.mnist_sample()
    return x[:40], y[:40]


@pytest.fixture(scope="module")
def defense_gan() -> DefenseGAN:
    # The shipped weights with a cheap projection (the encoder's start and 10 steps from each of
    # 2 starts): tests check properties, not the paper's numbers.
    defense = mlsec.zoo.load("mnist-defense-gan")
    defense.init, defense.steps, defense.restarts = "encoder", 10, 2
    return defense


@pytest.fixture(scope="module")
def ape_gan() -> APEGAN:
    return mlsec.zoo.load("mnist-ape-gan")


def _squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).sum(1)


# --- shipped weights ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"), [("mnist-defense-gan", DefenseGAN), ("mnist-ape-gan", APEGAN)]
)
def test_zoo_returns_fitted_defenses_under_3_mb(name: str, kind: type) -> None:
    defense = mlsec.zoo.load(name)
    assert isinstance(defense, kind)
    assert name in mlsec.zoo.list_defenses()
    assert name not in mlsec.zoo.list_models()
    assert (WEIGHTS / f"{name.replace('-', '_')}.safetensors").stat().st_size < 3_000_000


@pytest.mark.parametrize("which", ["defense_gan", "ape_gan"])
def test_purification_brings_clean_images_closer_than_noise(
    which: str, held_out: tuple[torch.Tensor, torch.Tensor], request: pytest.FixtureRequest
) -> None:
    # A purifier learned the data: clean held-out digits come back far closer to themselves than
    # uniform noise does (noise has no nearby point on the data manifold).
    defense = request.getfixturevalue(which)
    x, _ = held_out
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean_error = _squared_error(defense.purify(x), x).mean()
        noise_error = _squared_error(defense.purify(noise), noise).mean()
    assert clean_error < 0.25 * noise_error, (float(clean_error), float(noise_error))


def test_defended_model_keeps_clean_accuracy(
    defense_gan: DefenseGAN, ape_gan: APEGAN, held_out: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = held_out
    model = mlsec.zoo.load("mnist-cnn")
    with torch.no_grad():
        for defense in (defense_gan, ape_gan):
            accuracy = (defense.wrap(model)(x).argmax(1) == y).float().mean()
            assert accuracy >= 0.85, (defense.name, float(accuracy))


def test_encoder_start_reaches_a_closer_reconstruction_in_few_steps(
    defense_gan: DefenseGAN, held_out: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, _ = held_out
    assert defense_gan.encoder is not None
    errors = {}
    for init in ("random", "encoder"):
        defense = DefenseGAN(
            steps=10,
            restarts=1,
            init=init,
            generator=defense_gan.generator,
            encoder=defense_gan.encoder,
        )
        errors[init] = float(_squared_error(defense.purify(x), x).mean())
    assert errors["encoder"] < 0.7 * errors["random"], errors


# --- the wrapped model -------------------------------------------------------------------------


def test_wrapped_model_is_a_module_the_audit_accepts(
    ape_gan: APEGAN, held_out: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = held_out
    model = mlsec.zoo.load("mnist-cnn")
    wrapped = ape_gan.wrap(model)
    assert isinstance(wrapped, torch.nn.Module) and not wrapped.training
    report = mlsec.audit(wrapped, (x, y), attacks=["fgsm"], eps=[0.3])
    assert not any("train mode" in warning for warning in report.warnings)
    with torch.no_grad():
        expected = float((model(ape_gan.purify(x)).argmax(1) == y).float().mean())
    assert report.clean_accuracy == pytest.approx(expected)
    # FGSM is deterministic: the audit's number equals the attack run by hand on the same model.
    x_adv = mlsec.attacks.FGSM(eps=0.3)(wrapped, x, y)
    with torch.no_grad():
        standing = (wrapped(x).argmax(1) == y) & (wrapped(x_adv).argmax(1) == y)
    assert report.robust_accuracy("fgsm", 0.3) == pytest.approx(
        float(standing.float().mean()), abs=1.5 / len(y)
    )
    assert report.robust_accuracy("fgsm", 0.3) < report.clean_accuracy - 0.05


@pytest.mark.parametrize("bpda", ["identity", "encoder"])
def test_bpda_gradient_is_the_surrogates_at_the_purified_value(
    bpda: str, defense_gan: DefenseGAN, held_out: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Forward: f(purify(x)). Backward: the surrogate's Jacobian times the classifier's gradient
    # at the purified input u, i.e. identity: grad_u; encoder: (d G(E(x)) / dx)^T grad_u.
    x, y = held_out[0][:6], held_out[1][:6]
    model = mlsec.zoo.load("mnist-cnn")
    defense = DefenseGAN(
        init="encoder",
        steps=10,
        restarts=2,
        bpda=bpda,
        generator=defense_gan.generator,
        encoder=defense_gan.encoder,
    )
    x_in = x.clone().requires_grad_(True)
    logits = defense.wrap(model)(x_in)
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_in)
    purified = defense.purify(x).requires_grad_(True)
    assert torch.allclose(logits, model(purified), atol=1e-5)
    (grad_u,) = torch.autograd.grad(
        torch.nn.functional.cross_entropy(model(purified), y, reduction="sum"), purified
    )
    if bpda == "identity":
        expected = grad_u
    else:
        x_ref = x.clone().requires_grad_(True)
        assert defense.generator is not None and defense.encoder is not None
        (expected,) = torch.autograd.grad(
            defense.generator(defense.encoder(x_ref)), x_ref, grad_outputs=grad_u
        )
    assert torch.allclose(grad, expected, atol=1e-5)
    assert float(grad.abs().sum()) > 0


def test_ape_gan_gradient_is_exact(
    ape_gan: APEGAN, held_out: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = held_out[0][:6], held_out[1][:6]
    model = mlsec.zoo.load("mnist-cnn")
    x_in = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(ape_gan.wrap(model)(x_in), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_in)
    x_ref = x.clone().requires_grad_(True)
    generator = ape_gan.generator
    assert generator is not None
    ref = torch.nn.functional.cross_entropy(model(generator.eval()(x_ref)), y, reduction="sum")
    assert torch.allclose(grad, torch.autograd.grad(ref, x_ref)[0], atol=1e-6)
    assert float(grad.abs().sum()) > 0


def test_defense_gan_draws_fresh_starts_per_call_reproducibly(
    defense_gan: DefenseGAN, held_out: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x = held_out[0][:8]
    defense = DefenseGAN(steps=5, restarts=2, seed=3, generator=defense_gan.generator)
    first, second = defense.wrap(torch.nn.Identity()), defense.wrap(torch.nn.Identity())
    with torch.no_grad():
        a1, a2 = first(x), first(x)
        b1, b2 = second(x), second(x)
    assert not torch.equal(a1, a2)  # a randomised defense, as deployed
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # reproducible run to run
    # The first call uses the defense's own seed (BPDA adds and subtracts x: rounding only).
    assert torch.allclose(a1, defense.purify(x), atol=1e-6)


# --- adaptive against non-adaptive -------------------------------------------------------------


@pytest.mark.parametrize("which", ["defense_gan", "ape_gan"])
def test_adaptive_attack_beats_the_non_adaptive_one(
    which: str, held_out: tuple[torch.Tensor, torch.Tensor], request: pytest.FixtureRequest
) -> None:
    defense = request.getfixturevalue(which)
    x, y = held_out
    report = evaluate_defense(
        defense,
        mlsec.zoo.load("mnist-cnn"),
        (x[:30], y[:30]),
        attacks=["pgd"],
        adaptive=["pgd"],
        steps=10,
        eot=2,
    )
    (row,) = report.rows
    assert row.adaptive is not None
    assert row.undefended <= 0.1  # the bare standard CNN falls at eps 0.3
    assert row.adaptive <= row.non_adaptive - 0.2, row
    assert report.worst_adaptive[0.3] <= row.adaptive
    assert any("only against non-adaptive" in flag for flag in report.flags)
    json.loads(report.to_json())


# --- files -------------------------------------------------------------------------------------


def _small_defense_gan(**params: object) -> DefenseGAN:
    torch.manual_seed(0)
    return DefenseGAN(
        latent=8,
        width=8,
        steps=5,
        restarts=3,
        init="encoder",
        generator=mnist_generator(8, 8).eval(),
        encoder=mnist_encoder(8, 8).eval(),
        **params,  # type: ignore[arg-type]
    )


def test_save_load_round_trip_gives_identical_purification(tmp_path: Path) -> None:
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    for defense in (_small_defense_gan(seed=7), APEGAN(width=8, generator=ape_generator(8).eval())):
        path = tmp_path / f"{defense.name}.safetensors"
        defense.save(path)
        loaded = load_defense(path)
        assert type(loaded) is type(defense)
        assert type(type(defense).load(path)) is type(defense)
        assert loaded.params() == defense.params()
        assert torch.equal(loaded.purify(x), defense.purify(x))
        assert torch.equal(loaded.purify(x, seed=3), defense.purify(x, seed=3))


def test_defense_gan_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    x, y = mlsec.datasets.mnist_sample()
    data = (x[:64], y[:64])
    settings: dict[str, Any] = {"encoder_steps": 2, "batch_size": 16, "every": 2}
    straight = DefenseGAN(latent=8, width=8).fit(
        data, gan_steps=4, folder=str(tmp_path / "a"), **settings
    )
    DefenseGAN(latent=8, width=8).fit(data, gan_steps=2, folder=str(tmp_path / "b"), **settings)
    resumed = DefenseGAN(latent=8, width=8).fit(
        data, gan_steps=4, folder=str(tmp_path / "b"), resume=True, **settings
    )
    assert straight.generator is not None and resumed.generator is not None
    expected, got = straight.generator.state_dict(), resumed.generator.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    lines = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]
    with Image.open(tmp_path / "b" / "samples-000004.png") as grid:
        assert grid.size == (8 * 30, 8 * 30)  # 64 samples, 28 px each plus a 1 px border


def test_ape_gan_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    x, y = mlsec.datasets.mnist_sample()
    model = mlsec.zoo.load("mnist-cnn")
    data = (x[:96], y[:96])
    straight = APEGAN(width=8).fit(
        data, model=model, epochs=2, batch_size=32, folder=str(tmp_path / "a")
    )
    APEGAN(width=8).fit(data, model=model, epochs=1, batch_size=32, folder=str(tmp_path / "b"))
    resumed = APEGAN(width=8).fit(
        data, model=model, epochs=2, batch_size=32, folder=str(tmp_path / "b"), resume=True
    )
    probe = torch.rand(3, 1, 28, 28)
    assert torch.equal(straight.purify(probe), resumed.purify(probe))
    with Image.open(tmp_path / "b" / "samples-002.png") as grid:
        assert grid.size == (8 * 30, 3 * 30)  # rows: clean, FGSM, purified


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"restarts": 0}, "restarts must be an integer >= 1"),
        ({"lr": 0.0}, "lr must be a number > 0"),
        ({"init": "zeros"}, "init must be one of"),
        ({"bpda": "straight"}, "bpda must be one of"),
        ({"latent": 16, "generator": mnist_generator(8)}, "latent size 16 does not match"),
        ({"latent": 8, "generator": mnist_generator(8), "encoder": mnist_encoder(4)}, "encoder"),
    ],
)
def test_bad_defense_gan_settings_are_one_line_errors(
    params: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message) as error:
        DefenseGAN(**params)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


def test_purifiers_are_registered_by_name() -> None:
    assert PURIFIERS.names() == ["ape-gan", "defense-gan"]
    for name, cls in PURIFIERS.items():
        assert cls.name == name
    assert PURIFIERS.get("Defense-GAN") is DefenseGAN and PURIFIERS.get("ape-gan") is APEGAN
    assert sorted(PURIFIERS) == ["ape-gan", "defense-gan"] and "ape-gan" in PURIFIERS
    with pytest.raises(InputError, match="unknown defense 'pixel-defend'; available: ape-gan"):
        PURIFIERS.get("pixel-defend")
    with pytest.raises(ValueError, match="'ape-gan' is already registered"):
        PURIFIERS.register("ape-gan")(APEGAN)


def test_unfitted_and_misused_purifiers_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not fitted"):
        DefenseGAN().purify(torch.rand(1, 1, 28, 28))
    with pytest.raises(InputError, match="not fitted"):
        APEGAN().wrap(torch.nn.Identity())
    with pytest.raises(InputError, match=r"\[B, 1, 28, 28\]"):
        _small_defense_gan().purify(torch.rand(2, 3, 32, 32))
    with pytest.raises(InputError, match="adv_weight are both 0"):
        APEGAN(recon_weight=0, adv_weight=0)
    plain = tmp_path / "plain.safetensors"
    save_weights(mnist_generator(8), plain)
    ape = tmp_path / "ape.safetensors"
    APEGAN(width=8, generator=ape_generator(8)).save(ape)
    with pytest.raises(InputError, match="holds a saved ape-gan, not a DefenseGAN"):
        DefenseGAN.load(ape)
    with pytest.raises(InputError, match="not a saved mlsec defense"):
        load_defense(plain)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot read defense file"):
        load_defense(broken)


# --- command line ------------------------------------------------------------------------------


def test_defend_train_then_audit_the_saved_defense(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = ["defend", "train", "ape-gan", "--data", "mnist-sample", "--limit", "64"]
    assert run_cli([*argv, "--run", str(run), "--epochs", "1", "--no-progress"]) == 0
    saved = run / "defense.safetensors"
    assert isinstance(load_defense(saved), APEGAN)
    assert (run / "samples-001.png").is_file()
    report = tmp_path / "report.json"
    argv = ["audit", "--defense", str(saved), "--limit", "20", "--steps", "3", "--attacks"]
    assert run_cli([*argv, "fgsm,pgd", "--json", str(report), "--no-progress"]) == 0
    data = json.loads(report.read_text())
    assert data["n"] == 20 and data["defense"] == "defense.safetensors"
    # Worst cases are per sample over every attack of the column (the adaptive one over the
    # transfer attacks as well), so never above any single row.
    rows = data["rows"]
    assert data["worst_non_adaptive"]["0.3"] <= min(r["non_adaptive"] for r in rows)
    cells = [r["non_adaptive"] for r in rows]
    cells += [r["adaptive"] for r in rows if r["adaptive"] is not None]
    assert data["worst_adaptive"]["0.3"] <= min(cells)
    assert [(r["attack"], r["adaptive"] is None) for r in data["rows"]] == [
        ("fgsm", True),
        ("pgd", False),
    ]
    assert "non-adaptive" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["audit", "--defense", "nope"], "neither a bundled defense"),
        (["audit", "--defense", "mnist-ape-gan", "--suite", "quick"], "does not combine"),
        (["audit", "--defense", "mnist-ape-gan", "--attacks", "nope"], "nope"),
        (["audit", "--purify-steps", "3"], "needs --defense"),
        (["audit", "--bpda", "identity"], "needs --defense"),
        (["audit", "--defense", "mnist-ape-gan", "--bpda", "identity"], "has no bpda"),
        (["audit", "--defense", "mnist-ape-gan", "--purify-steps", "3"], "has no steps"),
        (["audit", "--model", "mnist-defense-gan"], "is a bundled defense"),
        (
            [
                "defend",
                "train",
                "defense-gan",
                "--data",
                "mnist-sample",
                "--run",
                "x",
                "--epochs",
                "2",
            ],
            "--epochs: not an option of defense-gan",
        ),
        (["defend", "train", "gan", "--data", "mnist-sample", "--run", "x"], "invalid choice"),
    ],
)
def test_defense_cli_bad_input_exits_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli([*argv, "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlsec: "), lines
    assert message in lines[0]


def test_fgsm_transfers_poorly_through_the_purifiers(
    defense_gan: DefenseGAN, ape_gan: APEGAN, held_out: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Non-adaptive FGSM at eps 0.3 leaves the bare CNN near chance but far fewer errors behind
    # either purifier (the papers' claim, on a small sample).
    x, y = held_out
    model = mlsec.zoo.load("mnist-cnn")
    x_adv = FGSM(eps=0.3)(model, x, y)
    with torch.no_grad():
        bare = float((model(x_adv).argmax(1) == y).float().mean())
        behind = {
            d.name: float((d.wrap(model)(x_adv).argmax(1) == y).float().mean())
            for d in (defense_gan, ape_gan)
        }
    assert bare <= 0.15
    assert all(acc >= bare + 0.25 for acc in behind.values()), (bare, behind)
    assert isinstance(defense_gan.wrap(model), PurifiedModel)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"eps": -0.1}, "eps must be a number >= 0"),
        ({"lr": float("nan")}, "lr must be a number > 0"),
        ({"adv_weight": True}, "adv_weight must be a number >= 0"),
        ({"width": 1}, "width must be an integer >= 2"),
    ],
)
def test_bad_ape_gan_settings_are_one_line_errors(params: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message) as error:
        APEGAN(**params)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


def test_adaptive_worst_case_counts_the_transfer_attacks() -> None:
    # Sample 0 survives everything; 1 falls to a transfer attack only; 2 to an adaptive attack
    # only; 3 is wrong clean. Non-adaptive worst case: samples 0 and 2; adaptive: sample 0 alone
    # (an attacker who knows the defense may still use the transfer attack).
    clean = torch.tensor([True, True, True, False])
    transfer = [torch.tensor([True, False, True, True]), torch.tensor([True, True, True, True])]
    through = [torch.tensor([True, True, False, True])]
    assert worst_cases(clean, transfer, through) == (0.5, 0.25)
    assert worst_cases(clean, transfer, []) == (0.5, 0.5)
    assert worst_cases(clean, [], through) == (0.75, 0.5)
