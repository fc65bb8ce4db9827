"""The sanity checks read the chain and attack small probes, never repeating the chain's work."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mlsec
from mlsec.attacks import Attack
from mlsec.auditing import chain_checks
from mlsec.auditing.chain_checks import PROBE, ChainView

Data = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def calls() -> list[tuple[Attack, list[int]]]:
    return []


@pytest.fixture(scope="module")
def report(calls: list[tuple[Attack, list[int]]]) -> mlsec.AuditReport:
    """The default suite on 200 samples, every probe attack the checks make recorded."""
    original = ChainView.attack

    def recording(self: ChainView, attack: Attack, pool: torch.Tensor) -> tuple[int, int]:
        calls.append((attack, pool.nonzero().flatten()[:PROBE].tolist()))
        return original(self, attack, pool)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ChainView, "attack", recording)
        x, y = mlsec.datasets.mnist_sample()
        return mlsec.audit(mlsec.zoo.load("mnist-cnn"), (x[:200], y[:200]), suite="default")


def test_the_report_says_which_checks_ran_on_how_many_samples(report: mlsec.AuditReport) -> None:
    names = [run.check for run in report.checks]
    assert names == [
        "train mode",
        "probability outputs",
        "random model",
        "zero or NaN gradients",
        "black box beats gradients",
        "rising with eps",
        "iterative below FGSM",
        "erasing budget",
    ]
    by_name = {run.check: run for run in report.checks}
    # Read from what the audit had: no sample attacked.
    for name in ("train mode", "probability outputs", "black box beats gradients"):
        assert by_name[name].samples == 0 and by_name[name].source in ("clean pass", "chain")
    # Rising with eps: two attacks x two pairs of eps, a probe of at most PROBE each.
    assert 0 < by_name["rising with eps"].samples <= 4 * PROBE
    assert 0 < by_name["iterative below FGSM"].samples <= 3 * PROBE
    assert by_name["erasing budget"].samples == PROBE
    data = json.loads(report.to_json())
    assert [c["check"] for c in data["checks"]] == names
    assert all(c["seconds"] >= 0 for c in data["checks"])
    assert "Sanity checks ran in" in report.to_markdown()
    assert 'id="checks"' in report.to_html()
    assert report.warnings == []


def test_no_probe_repeats_an_attack_on_samples_the_chain_ran_it_on(
    report: mlsec.AuditReport, calls: list[tuple[Attack, list[int]]]
) -> None:
    assert calls, "the checks attacked no probe"
    stages = {(s.attack.name, s.attack.eps): s for s in _plan(report)}
    ran_on = {}
    previous = report.correct
    for stage in _plan(report):
        ran_on[(stage.attack.name, stage.attack.eps)] = previous
        previous = report.robust[(stage.label, stage.eps)]
    for attack, rows in calls:
        assert len(rows) <= PROBE
        key = (attack.name, attack.eps)
        if key in stages:  # the same attack at the same eps as a stage of the chain
            handed = ran_on[key]
            assert not bool(handed[torch.tensor(rows, dtype=torch.long)].any()), key


def _plan(report: mlsec.AuditReport) -> list[mlsec.auditing.plan.PlannedAttack]:
    suite = mlsec.auditing.suite.load_suite("default")
    return list(mlsec.auditing.plan.make_plan(suite).stages)


def test_square_gain_in_the_chain_is_read_not_rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    # A model that masks gradients: PGD fails, Square (after it in the chain) breaks many.
    class StepMask(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(torch.round(x * 8) / 8)

    seen: list[str] = []
    original = ChainView.attack

    def recording(self: ChainView, attack: Attack, pool: torch.Tensor) -> tuple[int, int]:
        seen.append(attack.name)
        return original(self, attack, pool)

    monkeypatch.setattr(ChainView, "attack", recording)
    x, y = mlsec.datasets.mnist_sample()
    suite = mlsec.auditing.suite.Suite.from_attacks(["pgd", "square"]).with_overrides(
        eps=[0.3], params={"steps": 10, "queries": 300}
    )
    report = mlsec.audit(
        StepMask(mlsec.zoo.load("mnist-cnn")).eval(), (x[:60], y[:60]), suite=suite
    )
    assert any("black-box attack square does better" in w for w in report.warnings)
    assert "square" not in seen  # the warning came from the chain's masks alone
    gain = report.robust_accuracy("pgd", 0.3) - report.robust_accuracy("square", 0.3)
    warning = next(w for w in report.warnings if "black-box attack square" in w)
    assert f"{100 * gain:.1f}" in warning
    assert gain > chain_checks.BLACK_BOX_GAIN
