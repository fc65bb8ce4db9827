"""``mlsec audit --privacy``: the bundled comparison, reports, the gate, the cache, bad input."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlsec
from mlsec.cli import main

# Tiny shadows: two, one epoch. Enough to exercise LiRA end to end, not to measure it.
TINY = ["--shadow-models", "2", "--shadow-epochs", "1"]


Run = tuple[Path, Path, "int | str | None"]


def run_cli(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("privacy")
    out, cache = root / "out", root / "cache"
    argv = ["audit", "--privacy", "--limit", "1000", *TINY, "--shadow-dir", str(cache)]
    code = run_cli([*argv, "--out", str(out), "-q", "--fail-over", "lira@tpr0.01=0.9"])
    return out, cache, code


def test_the_bundled_models_are_compared_on_their_training_images(bundled_run: Run) -> None:
    out, _, code = bundled_run
    assert code == 0
    reports = {
        m: json.loads((out / m / "report.json").read_text()) for m in ("mnist-cnn", "mnist-cnn-pgd")
    }
    for name, report in reports.items():
        assert report["kind"] == "privacy" and report["model"] == name
        assert report["members"] == "mnist-members-matched"
        assert report["non_members"] == "mnist-sample"
        assert (report["n_members"], report["n_non_members"]) == (1000, 1000)
        assert [r["attack"] for r in report["results"]] == [
            "loss",
            "confidence",
            "entropy",
            "art-blackbox",
            "lira",
        ]
        # Members are training images: the model is at least as accurate on them.
        assert report["member_accuracy"] >= report["non_member_accuracy"] - 0.01
        for result in report["results"]:
            assert 0.0 <= result["auc"] <= 1.0
            assert 0.5 <= result["balanced_accuracy"] <= 1.0
        assert report["thresholds"][0]["passed"] is True
        html = (out / name / "report.html").read_text()
        assert 'id="roc-plot"' in html and html.count('class="roc"') == 5
    # One set of shadows served both models: the second found them in the cache.
    shadows = [reports[m]["shadows"] for m in ("mnist-cnn", "mnist-cnn-pgd")]
    assert shadows[0]["key"] == shadows[1]["key"]


def test_loss_and_confidence_rank_members_alike(bundled_run: Run) -> None:
    # For one model, minus the loss is log p_y: a monotone function of the confidence p_y, so both
    # attacks rank samples identically and every metric agrees.
    out, _, _ = bundled_run
    report = json.loads((out / "mnist-cnn" / "report.json").read_text())
    loss, confidence = report["results"][0], report["results"][1]
    assert loss["auc"] == pytest.approx(confidence["auc"], abs=1e-9)
    assert loss["tpr_at_fpr"] == confidence["tpr_at_fpr"]


def test_a_rerun_trains_no_shadow(bundled_run: Run, tmp_path: Path) -> None:
    _, cache, _ = bundled_run
    argv = ["audit", "--privacy", "--limit", "1000", *TINY, "--shadow-dir", str(cache)]
    assert run_cli([*argv, "--model", "mnist-cnn", "--json", str(tmp_path / "r.json"), "-q"]) == 0
    shadows = json.loads((tmp_path / "r.json").read_text())["shadows"]
    assert (shadows["trained"], shadows["reused"]) == (0, 2)


def test_the_gate_fails_with_exit_1(tmp_path: Path, capsys: Any) -> None:
    code = run_cli(
        [
            "audit",
            "--privacy",
            "--model",
            "mnist-cnn",
            "--limit",
            "1000",
            "--privacy-attacks",
            "loss",
            "--fail-over",
            "loss@balanced-accuracy=0.5",
            "--junit",
            str(tmp_path / "r.xml"),
        ]
    )
    # The balanced accuracy is the best over thresholds, so it is never below 0.5: MAX 0.5 fails
    # unless the scores separate nothing at all.
    assert code == 1
    assert "FAIL" in capsys.readouterr().out
    assert 'failures="1"' in (tmp_path / "r.xml").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--privacy", "--suite", "quick"], "--suite does not apply to --privacy"),
        (["--privacy", "--fail-under", "pgd@0.3=0.5"], "use --fail-over"),
        (["--privacy", "--data", "x.npz"], "--data does not apply to --privacy"),
        (["--members", "mnist-sample"], "--members needs --privacy"),
        (["--fail-over", "lira@auc=0.6"], "--fail-over needs --privacy"),
        (["--privacy", "--limit", "500"], "FPR 0.001 needs at least 1,000 non-members (have 500)"),
        (["--privacy", "--fail-over", "lira@recall=0.1"], "is not ATTACK@METRIC=MAX"),
        (["--privacy", "--privacy-attacks", "loss,magic"], "magic"),
        (
            ["--privacy", "--members", "mnist-sample", "--privacy-attacks", "loss"],
            "samples are in both",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: Any) -> None:
    assert run_cli(["audit", *argv, "--model", "mnist-cnn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlsec: ") and message in err[0]


def test_a_user_model_needs_its_members(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    x, y = mlsec.datasets.mnist_sample()
    np.savez(tmp_path / "held.npz", x=x[:1000].numpy(), y=y[:1000].numpy())
    (tmp_path / "probs.py").write_text(
        textwrap.dedent(
            """
            import torch
            import mlsec

            def build():
                return torch.nn.Sequential(mlsec.zoo.load("mnist-cnn"), torch.nn.Softmax(dim=1))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("probs", None)
    assert run_cli(["audit", "--privacy", "--model", "probs:build"]) == 2
    assert "needs --members" in capsys.readouterr().err
    code = run_cli(
        [
            "audit",
            "--privacy",
            "--model",
            "probs:build",
            "--members",
            "mnist-members",
            "--non-members",
            "held.npz",
            "--privacy-attacks",
            "loss",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "probabilities" in err[0]
