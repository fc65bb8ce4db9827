"""What a hostile working folder and misbehaving user code can do to a run: nothing silent.

The working folder never shadows an installed package; user code that raises, exits or hands over
a model without weights ends the run in one line with exit 2; numbers a dtype cannot hold are
refused up front.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from safetensors.torch import save_file

import mlsec
from mlsec.cli import main

FAST = ["--attacks", "fgsm", "--eps", "0.1", "--limit", "20", "--no-checks", "-q"]


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("mlsec: "), err
    return err


def _module(folder: Path, source: str) -> str:
    """Write a uniquely named module into ``folder``; returns its name."""
    name = f"usermod_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def _hijacker(folder: Path, package: str, marker: Path) -> None:
    """A package in ``folder`` named like a dependency that makes ``marker`` when imported."""
    (folder / package).mkdir()
    (folder / package / "__init__.py").write_text(
        f"import os\nos.mkdir({str(marker)!r})\nraise ImportError('hijacked')\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        ["--model", "mnist-cnn"],
        ["--model", "weights.safetensors", "--arch", "mlsec.zoo.architectures:mnist_cnn"],
    ],
)
def test_the_working_folder_does_not_shadow_installed_packages(
    model: list[str], tmp_path: Path
) -> None:
    """A ``matplotlib/`` in the working folder does not run when the HTML report draws its plot."""
    pytest.importorskip("matplotlib")
    marker = tmp_path / "hijacked"
    _hijacker(tmp_path, "matplotlib", marker)
    save_file(mlsec.zoo.load("mnist-cnn").state_dict(), str(tmp_path / "weights.safetensors"))
    run = subprocess.run(
        [sys.executable, "-m", "mlsec", "audit", *model, *FAST, "--html", "report.html"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert not marker.exists(), "a folder in the working directory was imported"
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()


def test_a_module_both_local_and_installed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"pkg_{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("def build():\n    raise AssertionError\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / f"{name}.py").write_text("raise AssertionError('the local copy ran')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(work)
    assert main(["audit", "--model", f"{name}:build", *FAST]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"module {name!r} is both in the current folder" in err
    assert "installed" in err


def test_a_local_module_still_imports_and_leaves_the_path_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    helper = _module(tmp_path, "SCALE = 1.0\n")
    name = _module(
        tmp_path,
        f"""
        import {helper}
        from mlsec.zoo import architectures

        def build():
            return architectures.mnist_cnn()
        """,
    )
    save_file(mlsec.zoo.load("mnist-cnn").state_dict(), str(tmp_path / "w.safetensors"))
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    code = main(["audit", "--model", "w.safetensors", "--arch", f"{name}:build", *FAST])
    assert code == 0, capsys.readouterr().err
    assert sys.path == before
    assert str(tmp_path) not in sys.path


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        ("import sys\nsys.exit(0)\n", "build", "SystemExit (it called sys.exit(0))"),
        ("import sys\ndef build():\n    sys.exit(0)\n", "build", "raised SystemExit"),
        ("def build():\n    raise KeyError('gone')\n", "build", "raised KeyError: 'gone'"),
    ],
)
def test_user_code_that_exits_or_raises_while_loading(
    source: str,
    spec: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = _module(tmp_path, source)
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "--model", f"{name}:{spec}", *FAST]) == 2
    assert message in _one_line(capsys.readouterr().err)


FORWARDS = {
    "value-error": ("raise ValueError('bad pixels')", "forward raised ValueError (bad pixels)"),
    "exit-zero": ("import sys; sys.exit(0)", "forward called sys.exit(0)"),
    "zero-division": ("return x.sum() / 0 if False else 1 / 0", "raised ZeroDivisionError"),
}


@pytest.mark.parametrize("case", sorted(FORWARDS))
def test_a_forward_that_raises_or_exits_names_the_exception_and_the_model(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body, message = FORWARDS[case]
    name = _module(
        tmp_path,
        f"""
        import torch

        class Broken(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(784, 10)

            def forward(self, x):
                {body}

        def build():
            return Broken()
        """,
    )
    monkeypatch.chdir(tmp_path)
    code = main(["audit", "--model", f"{name}:build", *FAST])
    err = _one_line(capsys.readouterr().err)
    assert code == 2, err
    assert message in err
    assert f"the model {name}:build failed" in err


def test_sys_exit_inside_an_attack_is_not_a_silent_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that exits only when it sees gradients flowing (inside the attack)."""
    name = _module(
        tmp_path,
        """
        import sys
        import torch
        import mlsec

        class ExitsUnderAttack(torch.nn.Module):
            def __init__(self):
                super().__init__()
                # Trained weights: samples are classified correctly, so the attack does run
                # (an untrained network's accuracy hangs on the global random state).
                self.net = mlsec.zoo.load("mnist-cnn")

            def forward(self, x):
                if x.requires_grad:
                    sys.exit(0)
                return self.net(x)

        def build():
            return ExitsUnderAttack()
        """,
    )
    monkeypatch.chdir(tmp_path)
    code = main(["audit", "--model", f"{name}:build", *FAST])
    err = _one_line(capsys.readouterr().err)
    assert code == 2, err
    assert "sys.exit(0)" in err


def test_a_model_on_the_meta_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _module(
        tmp_path,
        """
        import torch
        from mlsec.zoo import architectures

        def build():
            with torch.device("meta"):
                return architectures.mnist_cnn()
        """,
    )
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "--model", f"{name}:build", *FAST]) == 2
    assert "on the meta device" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--eps", "1e39"], "eps 1e+39 overflows the model's float32"),
        (["--seed", str(2**64)], "seed must be an integer in [0, 2**63 - 1]"),
        (["--seed", "-1"], "seed must be an integer in [0, 2**63 - 1] (got -1)"),
    ],
)
def test_numbers_the_run_cannot_hold(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["audit", "--model", "mnist-cnn", "--attacks", "pgd", "--steps", "2", "--limit", "20"]
    code = main([*argv, "--no-checks", "-q", *options])
    err = _one_line(capsys.readouterr().err)
    assert code == 2, err
    assert message in err


def test_a_dataset_that_raises_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _module(
        tmp_path,
        """
        import torch

        class Flaky(torch.utils.data.Dataset):
            def __len__(self):
                return 10

            def __getitem__(self, index):
                if index == 7:
                    raise KeyError(index)
                return torch.zeros(1, 28, 28), 0

        def load():
            return Flaky()
        """,
    )
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "--model", "mnist-cnn", "--data", f"{name}:load", *FAST]) == 2
    assert "--data: reading the data raised KeyError: 7" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64])
def test_training_seeds_the_rng_cannot_take_are_refused(seed: int) -> None:
    from mlsec.defenses.training import TrainConfig

    with pytest.raises(mlsec.InputError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\]"):
        TrainConfig(seed=seed)
