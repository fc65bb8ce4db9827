"""The command line as a user runs it: the bundled default, user entry points, and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

import mlsec
from mlsec.attacks import FGSM, PGD, registry
from mlsec.cli import main


@pytest.fixture(scope="module")
def default_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict, dict]:
    """``mlsec audit --json`` on the bundled default, as a real subprocess: both bundled models."""
    out = tmp_path_factory.mktemp("audit") / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mlsec", "audit", "--json", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    reports = []
    for name in ("mnist-cnn", "mnist-cnn-pgd"):
        path = out.with_name(f"report.{name}.json")
        reports.append(json.loads(path.read_text()) if path.exists() else {})
    return proc, reports[0], reports[1]


def test_default_audit_exits_zero_with_both_models_side_by_side(
    default_run: tuple[subprocess.CompletedProcess[str], dict, dict],
) -> None:
    proc, report, robust = default_run
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "mnist-cnn-pgd" in line)
    assert header.index("mnist-cnn ") < header.index("mnist-cnn-pgd")  # one row, two columns
    assert "worst case" in proc.stdout
    assert "clean" in proc.stdout
    for one, name in ((report, "mnist-cnn"), (robust, "mnist-cnn-pgd")):
        assert one["schema_version"] == 3
        assert one["model"] == name
        assert one["data"] == "mnist-sample"
        assert one["n"] == 2000
        assert one["warnings"] == []  # the sanity checks ran and found nothing
        assert one["passed"] is True
    # What a newcomer should see at once: adversarial training holds where the standard model falls.
    worst = {w["eps"]: w["robust_accuracy"] for w in robust["worst_case"]}
    assert robust["clean_accuracy"] >= 0.95
    assert worst[0.3] >= 0.8


def test_default_audit_numbers_match_direct_computation(
    default_run: tuple[subprocess.CompletedProcess[str], dict, dict],
    mnist: tuple[torch.Tensor, torch.Tensor],
) -> None:
    _, report, _ = default_run
    x, y = mnist
    model = mlsec.zoo.load("mnist-cnn")
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert report["clean_accuracy"] == correct.sum().item() / 2000
    assert report["clean_accuracy"] >= 0.97

    rows = {(r["attack"], r["eps"]): r for r in report["results"]}
    assert list(rows) == [(a, e) for e in (0.1, 0.2, 0.3) for a in ("fgsm", "pgd")]
    # FGSM runs first on every correctly classified sample: recompute it directly. Batching may
    # flip the sign of a numerically zero gradient component, so allow one sample.
    fgsm = correct & ~FGSM(eps=0.1).run(model, x, y).success
    assert rows[("fgsm", 0.1)]["attacked"] == int(correct.sum())
    assert rows[("fgsm", 0.1)]["robust_accuracy"] == pytest.approx(
        fgsm.float().mean().item(), abs=1 / 2000
    )
    # Every later stage attacks exactly the samples left standing by the one before it.
    standing = int(correct.sum())
    for row in report["results"]:
        assert row["attacked"] == standing
        standing -= row["broken"]
        assert row["robust_accuracy"] == standing / 2000
    worst = {w["eps"]: w["robust_accuracy"] for w in report["worst_case"]}
    for eps in (0.1, 0.2, 0.3):
        assert worst[eps] == rows[("pgd", eps)]["robust_accuracy"]  # pgd is last in the chain
    # Strength, measured against an independent PGD-40 on all samples at eps 0.1.
    pgd = correct & ~PGD(eps=0.1, steps=40).run(model, x, y).success
    assert worst[0.1] <= pgd.float().mean().item() + 0.01
    assert worst[0.1] < 0.8 * report["clean_accuracy"]
    assert worst[0.3] <= 0.01
    assert set(report["attack_seconds"]) == {"fgsm", "pgd"}


def test_attacks_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    for name in mlsec.attacks.list_attacks():
        assert name in out


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's module with models and data in every accepted form, importable from the cwd."""
    name = f"usermod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import DataLoader, TensorDataset
            import mlsec

            def _sample():
                x, y = mlsec.datasets.mnist_sample()
                return x[:120], y[:120]

            def model():
                return mlsec.zoo.load("mnist-cnn")

            def train_mode_model():
                return mlsec.zoo.load("mnist-cnn").train()

            def softmax_model():
                return torch.nn.Sequential(mlsec.zoo.load("mnist-cnn"), torch.nn.Softmax(dim=1))

            def nan_model():
                net = mlsec.zoo.load("mnist-cnn")
                with torch.no_grad():
                    net[-1].bias.fill_(float("nan"))
                return net

            def not_a_model():
                return 42

            def broken_model():
                raise RuntimeError("weights file missing")

            def pair():
                return _sample()

            def dataset():
                return TensorDataset(*_sample())

            def loader():
                return DataLoader(TensorDataset(*_sample()), batch_size=32)

            def bad_labels():
                x, y = _sample()
                return x, y + 5

            def bad_shapes():
                x, y = _sample()
                return x, y[:10]

            def out_of_bounds():
                x, y = _sample()
                return x * 255, y

            def wrong_shape():
                x, y = _sample()
                return torch.rand(len(y), 3, 32, 32), y

            def ragged():
                return [torch.rand(1, 28, 28), torch.rand(1, 20, 20)], torch.tensor([0, 1])

            def uint8_images():
                x, y = _sample()
                return (x * 255).to(torch.uint8), y
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    return name


def _run_json(args: list[str], path: Path) -> dict:
    assert main([*args, "--json", str(path), "--no-progress"]) == 0
    return json.loads(path.read_text())


def test_user_model_and_data_in_every_form(
    user_module: str, tmp_path: Path, mnist: tuple[torch.Tensor, torch.Tensor]
) -> None:
    common = ["audit", "--model", f"{user_module}:model", "--attacks", "fgsm", "--eps", "0.1,0.3"]
    reports = [
        _run_json([*common, "--data", f"{user_module}:{form}"], tmp_path / f"{form}.json")
        for form in ("pair", "dataset", "loader")
    ]
    x, y = mnist[0][:120], mnist[1][:120]
    direct = mlsec.audit(mlsec.zoo.load("mnist-cnn"), (x, y), attacks=["fgsm"], eps=[0.1, 0.3])
    for report in reports:
        assert report["n"] == 120
        assert report["clean_accuracy"] == pytest.approx(direct.clean_accuracy)
        for row in report["results"]:
            assert row["robust_accuracy"] == pytest.approx(
                direct.robust_accuracy("fgsm", row["eps"])
            )


def test_probability_outputs_are_warned_about(
    user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _run_json(
        [
            "audit",
            "--model",
            f"{user_module}:softmax_model",
            "--data",
            f"{user_module}:pair",
            "--attacks",
            "fgsm",
            "--eps",
            "0.1",
        ],
        tmp_path / "soft.json",
    )
    assert any("probabilities" in w for w in report["warnings"])
    assert "warning" in capsys.readouterr().out


BAD_INPUT = [
    (["--eps", "-0.1"], "--eps values must be >= 0"),
    (["--eps", "abc"], "'abc' is not a number"),
    (["--steps", "0"], "must be >= 1"),
    (["--attacks", "nope"], "unknown attack 'nope'"),
    (["--model", "mnist-cnnx"], "unknown model 'mnist-cnnx'"),
    (["--model", "no_such_module_xyz:f"], "cannot import module 'no_such_module_xyz'"),
    (["--model", "{mod}:missing"], "has no attribute 'missing'"),
    (["--model", "{mod}:not_a_model"], "must return a torch.nn.Module"),
    (["--model", "{mod}:broken_model"], "raised RuntimeError: weights file missing"),
    (["--model", "{mod}:nan_model"], "NaN or infinite logits"),
    (["--data", "mnist"], "unknown data set 'mnist'"),
    (["--data", "{mod}:bad_labels"], "labels lie in"),
    (["--data", "{mod}:bad_shapes"], "need inputs [n, ...] and labels [n]"),
    (["--data", "{mod}:out_of_bounds"], "outside the bounds"),
    (["--data", "{mod}:uint8_images"], "divide by 255"),
    (["--data", "{mod}:wrong_shape"], "failed on inputs of shape (3, 32, 32) per sample"),
    (["--data", "{mod}:ragged"], "cannot turn the data into tensors"),
    (["--json", "/no/such/folder/report.json"], "does not exist"),
    (["--json", "."], "is a folder"),
    (["--bounds", "1,0"], "--bounds must be LOW,HIGH"),
    (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"], "cuda"),
    (["--frobnicate"], "unrecognized arguments"),
]


def run_cli(argv: list[str]) -> int | str | None:
    """The exit code of ``mlsec argv``: returned by main, or raised by argparse as SystemExit."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_exits_2_with_one_line(
    args: list[str], message: str, user_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "audit",
        *[a.replace("{mod}", user_module) for a in args],
        "--no-progress",
        "--limit",
        "50",
    ]
    assert run_cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mlsec: ")
    assert message in lines[0]


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mlsec", "audit", "--model", "no_such_module_xyz:f"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_user_registered_attack_runs_with_cli_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"plugin_{uuid.uuid4().hex[:8]}"
    attack = f"counting{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            from dataclasses import dataclass
            import mlsec
            from mlsec.attacks import PGD, register_attack

            @register_attack("{attack}")
            @dataclass(frozen=True, kw_only=True)
            class Counting(PGD):
                pass

            def model():
                return mlsec.zoo.load("mnist-cnn")
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    # The plugin registers into a copy of the registry, so it does not outlive this test.
    monkeypatch.setattr(registry.ATTACKS, "_entries", dict(registry.ATTACKS._entries))
    report = _run_json(
        [
            "audit",
            "--model",
            f"{name}:model",
            "--attacks",
            attack,
            "--steps",
            "3",
            "--eps",
            "0.2",
            "--limit",
            "40",
        ],
        tmp_path / "plugin.json",
    )
    assert report["results"][0]["attack"] == attack
    assert report["results"][0]["params"]["steps"] == 3


def test_train_mode_model_warns_and_fails_strict(
    user_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["audit", "--model", f"{user_module}:train_mode_model", "--data", f"{user_module}:pair",
            "--suite", "quick", "--eps", "0.1", "--no-progress", "-q"]  # fmt: skip
    assert run_cli(argv) == 0
    assert "train mode" in capsys.readouterr().out
    assert run_cli([*argv, "--strict"]) == 1


# A finished stage logged without a terminal: "pgd eps=0.1: 33/33 samples in 0.4 s (82 samples/s)".
STAGE_LINE = re.compile(r"^(?P<stage>.+): (?P<done>\d+)/(?P<total>\d+) samples in \d+\.\d s")


def test_progress_without_a_terminal_is_one_line_per_finished_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE"):  # rich obeys these
        monkeypatch.delenv(name, raising=False)
    report = tmp_path / "report.json"
    argv = ["audit", "--model", "mnist-cnn", "--limit", "40", "--attacks", "fgsm,pgd",
            "--steps", "2", "--eps", "0.1,0.2", "--no-checks", "--json", str(report)]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err  # no animation frames, no cursor movement
    lines = err.strip().splitlines()
    stages = [STAGE_LINE.match(line) for line in lines]
    assert all(stages), lines
    names = [m["stage"] for m in stages if m]
    assert names == ["clean", "fgsm eps=0.1", "pgd eps=0.1", "fgsm eps=0.2", "pgd eps=0.2"]
    counts = [(int(m["done"]), int(m["total"])) for m in stages if m]
    assert counts[0] == (40, 40)
    # Each attack stage counts the samples that attack was handed, as the report records them.
    results = json.loads(report.read_text())["results"]
    assert [(r["attacked"], r["attacked"]) for r in results] == counts[1:]
