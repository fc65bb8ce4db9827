"""The command line as a CI job uses it: reports, thresholds, quiet output, resume after kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mlsec.auditing.suite import load_suite
from mlsec.cli import main

QUICK = [
    "audit",
    "--model",
    "mnist-cnn",
    "--limit",
    "200",
    "--suite",
    "quick",
    "--eps",
    "0.1,0.3",
    "--no-progress",
]


def run_cli(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_out_writes_every_report_and_the_resolved_suite(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    assert run_cli([*QUICK, "--out", str(out), "--fail-under", "pgd@0.1=0.2"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["report.html", "report.json", "report.junit.xml", "report.md", "suite.toml"]
    report = json.loads((out / "report.json").read_text())
    suite = load_suite(out / "suite.toml")
    assert suite.to_config() == report["config"]["suite"]
    assert suite.eps == [0.1, 0.3]
    junit = ET.parse(out / "report.junit.xml").getroot()
    cases = junit.findall(".//testcase")
    assert [c.get("name") for c in cases] == ["pgd@0.1=0.2"]
    assert not junit.findall(".//failure")
    html = (out / "report.html").read_text()
    assert 'id="results"' in html
    assert 'id="accuracy-plot"' in html
    assert "| pgd |" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("gate", "code"),
    [
        (["--fail-under", "pgd@0.1=0.2"], 0),
        (["--fail-under", "pgd@0.1=0.2,worst@0.3=0.5"], 1),
        (["--fail-under", "fgsm@0.1=0.1", "--fail-under", "worst@0.3=0.9"], 1),
        (["--max-drop", "fgsm@0.1=0.9"], 0),
        (["--max-drop", "worst@0.1=0.05"], 1),
    ],
)
def test_thresholds_set_the_exit_code(
    gate: list[str], code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junit = tmp_path / "gate.xml"
    assert run_cli([*QUICK, *gate, "--junit", str(junit)]) == code
    out = capsys.readouterr().out
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert len(failures) == out.count("FAIL ")
    assert (len(failures) > 0) == (code == 1)
    assert (tmp_path / "gate.suite.toml").exists()  # the resolved configuration, beside the report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail-under", "pgd@0.1"], "is not ATTACK@EPS=VALUE"),
        (["--fail-under", "pgd@0.1=85"], "must lie in [0, 1]"),
        (["--fail-under", "cw@0.1=0.5"], "no attack 'cw'"),
        (["--fail-under", "pgd@0.2=0.5"], "does not run at eps 0.2"),
        (["--suite", "paranoid"], "neither a built-in suite"),
        (["--suite", "quick", "--attacks", "fgsm"], "--suite or --attacks"),
        (["--out", "/no/such/parent/out"], "does not exist"),
    ],
)
def test_bad_gate_and_suite_options_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a for a in QUICK if a not in ("--suite", "quick")] if "--suite" in args else QUICK
    assert run_cli([*argv, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_quiet_and_no_color_for_ci_logs(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([*QUICK, "-q", "--no-color", "--fail-under", "worst@0.3=0.5"]) == 1
    captured = capsys.readouterr()
    assert "\x1b[" not in captured.out
    assert "\x1b[" not in captured.err
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("mnist-cnn on mnist-sample: clean ")
    assert lines[1].startswith("FAIL worst@0.3=0.5")
    assert "━" not in captured.err  # no progress bar


def _command(checkpoint: Path, report: Path) -> list[str]:
    return [
        sys.executable, "-m", "mlsec", "audit", "--model", "mnist-cnn", "--limit", "600",
        "--batch-size", "40",
        "--eps", "0.1,0.2", "--no-checks", "--no-progress",
        "--checkpoint", str(checkpoint), "--json", str(report),
    ]  # fmt: skip


def _numbers(path: Path) -> list[tuple[str, float, float, int, int]]:
    data = json.loads(path.read_text())
    return [
        (r["attack"], r["eps"], r["robust_accuracy"], r["attacked"], r["broken"])
        for r in data["results"]
    ]


def test_resume_after_sigkill_gives_the_uninterrupted_numbers(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    uninterrupted = tmp_path / "full.json"
    subprocess.run(
        _command(tmp_path / "ck-full", uninterrupted),
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )

    log = tmp_path / "ck" / "batches.jsonl"
    proc = subprocess.Popen(
        _command(tmp_path / "ck", tmp_path / "resumed.json"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the audit finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "resumed.json").exists()
    done_before = log.read_bytes().count(b"\n")
    total = len((tmp_path / "ck-full" / "batches.jsonl").read_text().splitlines())
    assert 20 <= done_before < total

    finished = subprocess.run(
        _command(tmp_path / "ck", tmp_path / "resumed.json"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr
    assert _numbers(tmp_path / "resumed.json") == _numbers(uninterrupted)
    assert len(log.read_text().splitlines()) == total

    # The same folder with another configuration is refused, and left as it was.
    other = [
        a if a != "0.1,0.2" else "0.1,0.3" for a in _command(tmp_path / "ck", tmp_path / "x.json")
    ]
    refused = subprocess.run(other, env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert "belongs to a different audit: the attacks" in refused.stderr
    assert len(log.read_text().splitlines()) == total


def test_without_model_both_bundled_models_get_reports_and_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["audit", "--limit", "100", "--suite", "quick", "--eps", "0.3", "--no-progress"]
    assert run_cli([*argv, "--out", str(out), "-q", "--fail-under", "worst@0.3=0.5"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("mnist-cnn on mnist-sample: clean ")
    assert lines[1].startswith("mnist-cnn-pgd on mnist-sample: clean ")
    # The gate applies to each model: the standard one fails it, the robust one passes.
    assert "FAIL mnist-cnn: worst@0.3=0.5" in lines[2]
    assert "PASS mnist-cnn-pgd: worst@0.3=0.5" in lines[3]
    assert (out / "suite.toml").exists()
    for name in ("mnist-cnn", "mnist-cnn-pgd"):
        files = sorted(p.name for p in (out / name).iterdir())
        assert files == ["report.html", "report.json", "report.junit.xml", "report.md"]
        report = json.loads((out / name / "report.json").read_text())
        assert report["model"] == name and report["n"] == 100
