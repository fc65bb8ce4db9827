"""The composite GitHub Action: action.yml's inputs and outputs, and its audit step run in bash.

PyYAML is not a dependency, so the file is read with a small indentation-based reader, enough for
the mappings and block scalars action.yml uses. The audit step's script, scripts/action_audit.sh,
runs as the action runs it: inputs as INPUT_* environment variables, GITHUB_OUTPUT and
GITHUB_STEP_SUMMARY pointing to files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mlsec

ROOT = Path(__file__).resolve().parents[1]
ACTION = ROOT / "action.yml"
SCRIPT = ROOT / "scripts" / "action_audit.sh"
INPUTS = {
    "model", "arch", "data", "suite", "eps", "fail-under", "strict", "extra-args",
    "output-dir", "artifact-name", "python-version", "mlsec-version",
}  # fmt: skip
# The inputs the audit step reads, each as INPUT_<NAME> with "-" written "_".
AUDIT_INPUTS = INPUTS - {"artifact-name", "python-version", "mlsec-version"}
OUTPUTS = {"json", "markdown", "html", "junit", "exit-code"}


def _children(lines: list[str], indent: int) -> dict[str, list[str]]:
    """The keys at ``indent`` spaces, each with the lines below it, of a block of YAML lines."""
    found: dict[str, list[str]] = {}
    key = None
    for line in lines:
        match = re.match(rf"^ {{{indent}}}([A-Za-z][\w-]*):(.*)$", line)
        if match:
            key = match.group(1)
            found[key] = [match.group(2)]
        elif key is not None and (not line.strip() or line.startswith(" " * (indent + 1))):
            found[key].append(line)
        elif line.strip():
            key = None
    return found


def _top() -> dict[str, list[str]]:
    return _children(ACTION.read_text(encoding="utf-8").splitlines(), 0)


def _field(lines: list[str], name: str, indent: int) -> str:
    """A scalar field of a mapping, unquoted."""
    values = _children(lines[1:], indent)
    assert name in values, f"missing {name}"
    return values[name][0].strip().strip('"')


def _steps() -> list[list[str]]:
    """The composite steps, each its lines (the first one starts with '- ')."""
    runs = _top()["runs"]
    steps: list[list[str]] = []
    for line in runs:
        if re.match(r"^    - ", line):
            steps.append([line])
        elif steps:
            steps[-1].append(line)
    return steps


def _run_scripts() -> list[str]:
    """The text of every ``run:`` of the action, block scalars included."""
    scripts = []
    for step in _steps():
        lines = [re.sub(r"^    - ", "      ", step[0]), *step[1:]]
        fields = _children(lines, 6)
        if "run" in fields:
            scripts.append("\n".join(fields["run"]))
    return scripts


def test_inputs_and_outputs() -> None:
    top = _top()
    assert _field(["runs:", *top["runs"]], "using", 2) == "composite"
    inputs = _children(top["inputs"][1:], 2)
    assert set(inputs) == INPUTS
    assert _field(["x", *inputs["output-dir"]], "default", 4) == "mlsec-report"
    assert _field(["x", *inputs["strict"]], "default", 4) == "false"
    spec = "mlsec-audit @ git+https://github.com/mlsec-dev/mlsec"
    assert _field(["x", *inputs["mlsec-version"]], "default", 4) == spec
    outputs = _children(top["outputs"][1:], 2)
    assert set(outputs) == OUTPUTS
    for name, lines in outputs.items():
        assert _field(["x", *lines], "value", 4) == f"${{{{ steps.audit.outputs.{name} }}}}"


def test_no_input_is_pasted_into_a_script() -> None:
    scripts = _run_scripts()
    assert len(scripts) == 2  # install, audit
    for script in scripts:
        assert "${{" not in script, script
    audit = next(step for step in _steps() if any("id: audit" in line for line in step))
    env = _children(_children([re.sub(r"^    - ", "      ", audit[0]), *audit[1:]], 6)["env"], 8)
    expected = {f"INPUT_{name.upper().replace('-', '_')}": name for name in AUDIT_INPUTS}
    assert {k: v[0].strip() for k, v in env.items()} == {
        k: f"${{{{ inputs.{v} }}}}" for k, v in expected.items()
    }
    assert 'bash "$GITHUB_ACTION_PATH/scripts/action_audit.sh"' in "\n".join(scripts)


def test_reports_are_uploaded_always() -> None:
    upload = next(s for s in _steps() if "actions/upload-artifact@v4" in "\n".join(s))
    text = "\n".join(upload)
    assert "if: always()" in text
    assert "${{ inputs.output-dir }}/report.html" in text
    assert "${{ inputs.output-dir }}/report.junit.xml" in text


def _run(tmp_path: Path, **inputs: str) -> tuple[int, dict[str, str], str]:
    """Run the audit step's script with ``inputs``; its exit code, outputs and summary."""
    output, summary = tmp_path / "github_output", tmp_path / "step_summary"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary),
        **{f"INPUT_{k.upper()}": v for k, v in inputs.items()},
    }
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run(
        [bash, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    outputs = {}
    if output.exists():
        outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return done.returncode, outputs, summary.read_text() if summary.exists() else ""


@pytest.mark.parametrize(("threshold", "code"), [("worst@0.3=0.0", 0), ("worst@0.3=0.99", 1)])
def test_audit_step_gates_and_publishes(tmp_path: Path, threshold: str, code: int) -> None:
    # mnist-cnn is not adversarially trained: PGD leaves almost nothing at linf eps 0.3
    # (docs/models-and-data.md), so 99% fails; every accuracy is >= 0, so 0.0 holds.
    exit_code, outputs, summary = _run(
        tmp_path,
        model="mnist-cnn",
        suite="quick",
        eps="0.1,0.3",
        fail_under=f"worst@0.1=0.0 {threshold}",
        strict="false",
        extra_args="--limit 20 --device cpu",
    )
    assert exit_code == code
    assert outputs["exit-code"] == str(code)
    assert set(outputs) == {"json", "markdown", "html", "junit", "exit-code"}
    for name, suffix in (("json", ".json"), ("markdown", ".md"), ("html", ".html")):
        assert outputs[name] == f"mlsec-report/report{suffix}"
        assert (tmp_path / outputs[name]).is_file()
    report = json.loads((tmp_path / outputs["json"]).read_text(encoding="utf-8"))
    assert report["n"] == 20
    assert [t["spec"] for t in report["thresholds"]] == ["worst@0.1=0.0", threshold]
    assert report["passed"] is (code == 0)
    assert "| **worst case** |" in summary
    assert "## mlsec audit" in summary
    assert ("**PASS**" in summary) is (code == 0)
    junit = (tmp_path / outputs["junit"]).read_text(encoding="utf-8")
    assert ("<failure" in junit) is (code == 1)


def test_hostile_inputs_stay_arguments(tmp_path: Path) -> None:
    # Shell syntax in an input reaches mlsec as text: nothing runs, mlsec refuses it (exit 2).
    code, outputs, summary = _run(
        tmp_path, model="$(touch pwned)", extra_args="--limit 5 ; touch pwned2 *", output_dir="r"
    )
    assert code == 2
    assert not list(tmp_path.glob("pwned*"))
    assert outputs == {"exit-code": "2"}
    assert summary == ""


def test_strict_must_be_a_boolean(tmp_path: Path) -> None:
    code, _, _ = _run(tmp_path, strict="yes please", extra_args="--limit 5")
    assert code == 2


def _workflow_step(name: str) -> str:
    """The ``run: |`` script of the step ``name`` in docs/ci.md's robustness.yml."""
    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    found = re.search(r"`\.github/workflows/robustness\.yml`:\n\n```yaml\n(.*?)```", text, re.S)
    assert found is not None
    lines = found.group(1).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"- name: {name}")
    run = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "run: |")
    body = []
    for line in lines[run + 1 :]:
        if line.strip() and not line.startswith(" " * 10):
            break
        body.append(line[10:])
    return "\n".join(body) + "\n"


def test_ci_page_workflow_steps_run(tmp_path: Path) -> None:
    """docs/ci.md's audit, annotation and summary steps, in a folder laid out as the page says."""
    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    suite = re.search(r"`audit/suite.toml`:\n\n```toml\n(.*?)```", text, re.S)
    thresholds = re.search(r"`audit/thresholds.txt`, .*?```text\n(.*?)```", text, re.S)
    assert suite is not None and thresholds is not None
    for folder in ("models", "myproject", "data", "gate/audit"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "gate/audit/suite.toml").write_text(suite.group(1))
    # mnist-cnn is not robust: PGD-40 leaves far below 100% at eps 0.1 (docs/ci.md: 43%).
    (tmp_path / "gate/audit/thresholds.txt").write_text(thresholds.group(1) + "pgd-40@0.1=1.0\n")
    model = mlsec.zoo.load("mnist-cnn")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "models/classifier.safetensors"))
    (tmp_path / "myproject/__init__.py").write_text("")
    (tmp_path / "myproject/models.py").write_text(
        "from mlsec.zoo.architectures import mnist_cnn\n\n\n"
        "def build_classifier():\n    return mnist_cnn()\n"
    )
    x, y = mlsec.datasets.mnist_sample()
    pixels = (x[:60].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    np.savez(tmp_path / "data/heldout.npz", x=pixels, y=y[:60].numpy())
    summary = tmp_path / "summary.md"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "GITHUB_STEP_SUMMARY": str(summary),
        "RELEASE": "false",
    }
    steps = {}
    for name in ("Robustness audit", "Annotate failed thresholds", "Job summary"):
        steps[name] = subprocess.run(
            ["bash", "-c", _workflow_step(name)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert steps["Robustness audit"].returncode == 1, steps["Robustness audit"].stderr
    report = json.loads((tmp_path / "audit-report/report.json").read_text(encoding="utf-8"))
    specs = [t["spec"] for t in report["thresholds"]]
    assert specs == ["worst@0.05=0.80", "pgd-40@0.1=0.40", "pgd-40@0.1=1.0"]
    assert report["config"]["suite"]["name"] == "release-gate"
    errors = steps["Annotate failed thresholds"].stdout.splitlines()
    failed = [t["spec"] for t in report["thresholds"] if not t["passed"]]
    assert "pgd-40@0.1=1.0" in failed
    assert len([e for e in errors if e.startswith("::error ")]) == len(failed)
    assert "::error title=robustness threshold pgd-40@0.1=1.0::" in "\n".join(errors)
    assert "**FAIL**" in summary.read_text(encoding="utf-8")
