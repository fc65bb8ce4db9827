"""The defended audit through the one pipeline: old numbers, resume, thresholds, report files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import mlsec
from mlsec.attacks import EOT, FGSM, PGD, Attack
from mlsec.auditing.chain import Runner
from mlsec.auditing.defended import evaluate_defense
from mlsec.auditing.thresholds import parse_thresholds
from mlsec.cli import main
from mlsec.core.keyed import SampleKeys, drawing_for
from mlsec.defenses import DefenseGAN

Data = tuple[torch.Tensor, torch.Tensor]
SETTINGS: dict[str, Any] = {
    "eps": [0.2, 0.3],
    "attacks": ["fgsm", "pgd"],
    "adaptive": ["pgd"],
    "steps": 3,
    "eot": 2,
    "batch_size": 5,
}


@pytest.fixture(scope="module")
def data() -> Data:
    x, y = mlsec.datasets.mnist_sample()
    return x[:12], y[:12]


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return mlsec.zoo.load("mnist-cnn")


def _defense_gan() -> DefenseGAN:
    # The shipped networks with a cheap, still randomised projection.
    defense = mlsec.zoo.load("mnist-defense-gan")
    defense.init, defense.steps, defense.restarts = "encoder", 3, 2
    return defense


def _by_hand(defense: DefenseGAN, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The defended audit's numbers computed directly: every attack on every batch, on one
    defended model whose draws are keyed by sample: the clean pass at call 0, a judging pass of
    an adversarial example at call 1, and the attacks' own passes keyed by the attack."""
    defended = defense.wrap(model).eval()
    size = SETTINGS["batch_size"]
    index = torch.arange(len(y))
    batches = list(zip(x.split(size), y.split(size), index.split(size), strict=True))

    def keyed(net: nn.Module, xb: torch.Tensor, idx: torch.Tensor, call: int) -> torch.Tensor:
        with torch.no_grad(), drawing_for(SampleKeys.of(0, idx), call):
            return net(xb).argmax(1)

    clean_bare = torch.cat([keyed(model, xb, i, 0) == yb for xb, yb, i in batches])
    clean_def = torch.cat([keyed(defended, xb, i, 0) == yb for xb, yb, i in batches])
    rows, masks = [], {e: [clean_def.clone(), clean_def.clone()] for e in SETTINGS["eps"]}
    for name, make in (("fgsm", lambda e: FGSM(eps=e)), ("pgd", lambda e: PGD(eps=e, steps=3))):
        for e in SETTINGS["eps"]:
            attack: Attack = make(e)
            bare_ok, def_ok = [], []
            for xb, yb, i in batches:
                x_adv = attack(model, xb, yb, index=i)
                bare_ok.append(keyed(model, x_adv, i, 1) == yb)
                def_ok.append(keyed(defended, x_adv, i, 1) == yb)
            non = torch.cat(def_ok) & clean_def
            masks[e][0] &= non
            masks[e][1] &= non
            adaptive = None
            if name == "pgd":
                through = EOT(attack=attack, samples=2)
                ok = []
                for (xb, yb, i), standing in zip(batches, clean_def.split(size), strict=True):
                    got = torch.zeros_like(standing)
                    if bool(standing.any()):
                        picked = i[standing]
                        x_adv = through(defended, xb[standing], yb[standing], index=picked)
                        got[standing] = keyed(defended, x_adv, picked, 1) == yb[standing]
                    ok.append(got)
                masks[e][1] &= torch.cat(ok)
                adaptive = float(torch.cat(ok).float().mean())
            bare = float((torch.cat(bare_ok) & clean_bare).float().mean())
            rows.append([name, e, bare, float(non.float().mean()), adaptive])
    return {
        "clean": [float(clean_bare.float().mean()), float(clean_def.float().mean())],
        "rows": rows,
        "worst": {e: [float(m.float().mean()) for m in masks[e]] for e in SETTINGS["eps"]},
    }


def test_numbers_equal_the_attacks_run_by_hand(data: Data, cnn: nn.Module) -> None:
    expected = _by_hand(_defense_gan(), cnn, *data)
    report = evaluate_defense(_defense_gan(), cnn, data, **SETTINGS)
    assert [report.clean_undefended, report.clean_defended] == expected["clean"]
    got = [[r.attack, r.eps, r.undefended, r.non_adaptive, r.adaptive] for r in report.rows]
    assert got == expected["rows"]
    for e, (non, ada) in expected["worst"].items():
        assert report.worst_non_adaptive[e] == non and report.worst_adaptive[e] == ada
    # The columns' own reports carry the same numbers (as counts over n).
    adaptive = report.audits["adaptive"]
    assert adaptive.robust_accuracy("pgd", 0.3) == pytest.approx(expected["rows"][3][4])
    assert adaptive.worst_case[0.3] == pytest.approx(expected["worst"][0.3][1])
    assert report.audits["undefended"].clean_accuracy == pytest.approx(expected["clean"][0])
    assert report.audits["non_adaptive"].robust_accuracy("fgsm", 0.2) == pytest.approx(
        expected["rows"][0][3]
    )


def _without_seconds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def test_an_interrupted_audit_resumes_to_the_same_report(
    data: Data, cnn: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = evaluate_defense(_defense_gan(), cnn, data, **SETTINGS).to_dict()
    folder = tmp_path / "ck"
    real = Runner._strike
    calls: list[int] = []

    def counting(self: Runner, *args: Any) -> Any:
        calls.append(1)
        return real(self, *args)

    def failing(self: Runner, *args: Any) -> Any:
        # Three batches per stage: calls 10 and 11 are the adaptive pgd at eps 0.2, after the
        # randomised purifier has drawn for every earlier batch.
        if len(calls) == 10:
            raise RuntimeError("interrupted")
        return counting(self, *args)

    monkeypatch.setattr(Runner, "_strike", counting)
    evaluate_defense(_defense_gan(), cnn, data, checkpoint=tmp_path / "whole", **SETTINGS)
    total, calls[:] = len(calls), []
    monkeypatch.setattr(Runner, "_strike", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate_defense(_defense_gan(), cnn, data, checkpoint=folder, **SETTINGS)
    recorded = [json.loads(line) for line in (folder / "batches.jsonl").read_text().splitlines()]
    assert len(recorded) == 10 and recorded[-1]["stage"] == 3  # stage 3: adaptive pgd at 0.2
    monkeypatch.setattr(Runner, "_strike", counting)
    calls.clear()
    resumed = evaluate_defense(_defense_gan(), cnn, data, checkpoint=folder, **SETTINGS)
    assert len(calls) == total - 10  # the recorded batches were replayed, not attacked again
    assert _without_seconds(resumed.to_dict()) == _without_seconds(whole)


def test_a_changed_purifier_is_refused_by_the_checkpoint(
    data: Data, cnn: nn.Module, tmp_path: Path
) -> None:
    few = {**SETTINGS, "attacks": ["fgsm"], "adaptive": [], "eps": [0.3]}
    evaluate_defense(_defense_gan(), cnn, data, checkpoint=tmp_path, **few)
    other = _defense_gan()
    other.steps = 4
    with pytest.raises(mlsec.errors.InputError, match="the defense or its settings") as error:
        evaluate_defense(other, cnn, data, checkpoint=tmp_path, **few)
    assert error.value.subject == "checkpoint"


def test_thresholds_judge_the_adaptive_column(data: Data, cnn: nn.Module) -> None:
    specs = ["pgd@0.3=0.0", "fgsm@0.3=0.0", "worst@0.3=0.99"]
    report = evaluate_defense(
        _defense_gan(),
        cnn,
        data,
        **{**SETTINGS, "eps": [0.3]},
        thresholds=parse_thresholds(specs, "min-accuracy"),
    )
    verdicts = {t.spec: t for t in report.thresholds}
    pgd, fgsm = report.rows[1], report.rows[0]
    assert verdicts["pgd@0.3=0.0"].value == pgd.adaptive
    assert verdicts["fgsm@0.3=0.0"].value == fgsm.non_adaptive  # fgsm ran only non-adaptively
    assert verdicts["worst@0.3=0.99"].value == report.worst_adaptive[0.3]
    assert not verdicts["worst@0.3=0.99"].passed and not report.passed
    assert report.audits["adaptive"].thresholds == report.thresholds
    with pytest.raises(mlsec.errors.InputError, match="no attack 'apgd'"):
        evaluate_defense(
            _defense_gan(),
            cnn,
            data,
            attacks=["fgsm", "pgd"],
            adaptive=["pgd"],
            thresholds=parse_thresholds(["apgd@0.3=0.1"], "max-drop"),
        )


ARGV = ["audit", "--defense", "mnist-ape-gan", "--limit", "12", "--steps", "2", "--no-progress"]


def test_cli_out_writes_every_report_and_thresholds_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [*ARGV, "--attacks", "fgsm,pgd", "--out", str(out), "--batch-size", "5"]
    assert main([*argv, "--fail-under", "worst@0.3=0.99"]) == 1
    assert "FAIL worst@0.3=0.99" in capsys.readouterr().out
    names = {"report.json", "report.md", "report.html", "report.junit.xml", "suite.toml"}
    assert {p.name for p in out.iterdir()} == names
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False and report["schema_version"] == 3
    assert set(report["audits"]) == {"undefended", "non_adaptive", "adaptive"}
    assert report["audits"]["adaptive"]["thresholds"][0]["passed"] is False
    assert report["strength_note"].startswith("weaker than the standard suite")
    junit = ET.fromstring((out / "report.junit.xml").read_text())
    assert junit.get("failures") == "1" and len(junit.findall("testsuite")) == 3
    page = (out / "report.html").read_text()
    assert '<table class="defended">' in page and page.count("<iframe") == 3
    assert "| pgd | 0.3 |" in (out / "report.md").read_text()
    pgd = mlsec.auditing.suite.load_suite(out / "suite.toml").entries[1].attack
    assert isinstance(pgd, PGD) and pgd.steps == 2
    assert main([*argv, "--fail-under", "worst@0.3=0.0", "-q"]) == 0


def test_cli_checkpoint_resumes_the_defended_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*ARGV, "--attacks", "fgsm", "--checkpoint", str(tmp_path / "ck")]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main([*argv, "--json", str(first)]) == 0
    assert main([*argv, "--json", str(second)]) == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert _without_seconds(a) == _without_seconds(b)
    assert "resuming" not in capsys.readouterr().err  # no progress, so no announcement
