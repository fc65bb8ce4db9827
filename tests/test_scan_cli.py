"""``mlsec scan`` as a user runs it: the reports, the exit codes and the one-line errors."""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

import mlsec
from mlsec.cli import main
from mlsec.defenses.detection import BADNETS_TRIGGER

# Few steps on few samples: enough for the bundled backdoor to stand out (its reversed trigger
# is an order of magnitude smaller than any clean class's), fast enough for the suite.
FAST = ["--steps", "60", "--limit", "200", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    """The default model scanned with every report written and the CI gate on."""
    out = tmp_path_factory.mktemp("scan")
    code = main(["scan", *FAST, "--out", str(out), "--fail-on-backdoor"])
    return code, out


def test_the_gate_fails_on_the_planted_backdoor(scanned: tuple[int, Path]) -> None:
    code, out = scanned
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1
    assert report["model"] == "mnist-cnn-badnets"
    assert report["n"] == 200
    assert report["flagged_classes"] == [7]
    assert report["passed"] is False
    assert report["trigger"] == {"target": 7, "top": 25, "left": 25, "height": 3, "width": 3}
    assert report["config"]["steps"] == 60
    assert report["detectors"] == []
    assert {"mlsec", "torch", "device"} <= set(report["environment"])
    assert [c["class"] for c in report["classes"]] == list(range(10))
    keys = {"class", "l1", "anomaly_index", "flagged", "attack_success", "iou"}
    assert all(set(c) == keys for c in report["classes"])
    seven = report["classes"][7]
    assert seven["iou"] >= 0.5
    assert seven["l1"] < min(c["l1"] for c in report["classes"] if c["class"] != 7) / 2


def test_the_reports_show_each_class(scanned: tuple[int, Path]) -> None:
    _, out = scanned
    html = (out / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,[^"]+" alt="mask \d+"', html)) == 10
    assert len(re.findall(r'alt="trigger \d+"', html)) == 10
    assert html.count('<tr class="flagged">') == 1
    assert html.count('class="patch"') == 20  # the true patch outlined on both images of a class
    assert "http://" not in html and "https://" not in html and "<script" not in html
    junit = (out / "report.junit.xml").read_text()
    assert junit.count("<testcase ") == 10
    assert junit.count('type="BackdoorSuspected"') == 1
    assert 'name="class 7"' in junit
    markdown = (out / "report.md").read_text()
    assert "**FAIL**: backdoor suspected, class 7" in markdown


def test_exit_zero_without_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    args = ["scan", "--steps", "2", "--limit", "50", "--no-progress", "--json", str(path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mask L1" in out and "anomaly index" in out
    assert json.loads(path.read_text())["config"]["steps"] == 2


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"scanmod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import torch
            import mlsec

            def softmax_model():
                return torch.nn.Sequential(mlsec.zoo.load("mnist-cnn"), torch.nn.Softmax(dim=1))

            def one_class():
                x, y = mlsec.datasets.mnist_sample()
                return x[:50], y[:50] * 0
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _error(args: list[str], capsys: pytest.CaptureFixture[str], *parts: str) -> str:
    assert main(["scan", "--steps", "1", "--limit", "20", "-q", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlsec: ") and "\n" not in err, err
    for part in parts:
        assert part in err, err
    return err


def test_bad_input_is_one_line_and_exit_2(
    user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _error(["--model", "no-such-model"], capsys, "no-such-model")
    _error(["--model", f"{user_module}:softmax_model"], capsys, "probabilities")
    _error(["--data", f"{user_module}:one_class"], capsys, "--data", "2 classes")
    _error(["--json", str(tmp_path / "missing" / "r.json")], capsys, "--json", "does not exist")
    x, y = mlsec.datasets.mnist_sample()
    small = tmp_path / "small.npz"
    np.savez(small, x=x[:40, :, :14, :14].numpy(), y=y[:40].numpy())
    _error(["--train-data", str(small)], capsys, "--train-data", "shape")
    with pytest.raises(SystemExit) as exited:  # argparse refuses it before the command runs
        main(["scan", "--steps", "0"])
    assert exited.value.code == 2
    assert "--steps: must be >= 1" in capsys.readouterr().err


def test_train_data_runs_arts_detectors(tmp_path: Path) -> None:
    # 1,500 bundled members, 50 non-7 ones stamped with the bundled trigger and relabelled 7: a
    # quarter of class 7, under the 35% that ART's cluster analysis takes for a poisoned cluster.
    x, y = mlsec.datasets.mnist_members()
    x, y = x[:1500].clone(), y[:1500].clone()
    chosen = (y != 7).nonzero().flatten()[:50]
    x[chosen] = BADNETS_TRIGGER.apply(x[chosen])
    y[chosen] = 7
    train = tmp_path / "train.npz"
    np.savez(train, x=x.numpy(), y=y.numpy())
    path = tmp_path / "r.json"
    args = ["scan", "--steps", "2", "--limit", "50", "-q", "--train-data", str(train)]
    assert main([*args, "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["train_data"] is not None
    spectral, clustering = report["detectors"]
    assert spectral["detector"] == "spectral-signature"
    assert clustering["detector"] == "activation-clustering"
    assert clustering["suspect_classes"] == [7]
    assert clustering["per_class"][7]["flagged"] >= 50
    assert clustering["per_class"][7]["samples"] == int((y == 7).sum())
    assert sum(row["samples"] for row in spectral["per_class"]) == 1500
