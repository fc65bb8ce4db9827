"""The audit runner: chain of attacks on survivors, per-sample worst case, thresholds, resume."""

from __future__ import annotations

import itertools
import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

import mlsec
from mlsec.attacks import FGSM, PGD
from mlsec.auditing.resume import BatchRecord, Checkpoint
from mlsec.auditing.suite import Suite, SuiteEntry
from mlsec.auditing.thresholds import parse_thresholds
from mlsec.errors import InputError
from mlsec.testing import assert_robust

Data = tuple[torch.Tensor, torch.Tensor]
# Deterministic attacks: their result for a sample does not depend on which other samples share
# its batch, so the survivors-only run and the naive run must agree sample for sample.
DETERMINISTIC = [FGSM(eps=0.0), PGD(eps=0.0, steps=5, step_size=0.04, random_start=False)]
GRID = [0.05, 0.1, 0.2]


def naive(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[tuple[str, float], torch.Tensor]:
    """Every attack on every sample at every eps, one call each; then the same bookkeeping."""
    with torch.no_grad():
        alive = model(x).argmax(1) == y
    standing = {}
    for eps in GRID:
        for attack in DETERMINISTIC:
            broken = (
                mlsec.attacks.create(attack.name, **{**attack.params(), "eps": eps})
                .run(model, x, y)
                .success
            )
            alive = alive & ~broken
            standing[(attack.name, eps)] = alive.clone()
    return standing


def test_survivors_equal_the_naive_run(mnist: Data, cnn: nn.Module) -> None:
    x, y = mnist[0][:400], mnist[1][:400]
    report = mlsec.audit(
        cnn, (x, y), attacks=DETERMINISTIC, eps=GRID, batch_size=128, sanity_checks=False
    )
    expected = naive(cnn, x, y)
    for (name, eps), mask in expected.items():
        assert torch.equal(report.robust[(name, eps)], mask), (name, eps)
        assert report.robust_accuracy(name, eps) == pytest.approx(mask.float().mean().item())
    for eps in GRID:
        assert report.worst_case[eps] == pytest.approx(expected[("pgd", eps)].float().mean().item())
    # And survivors-only really skipped work: later stages attacked fewer samples.
    attacked = [o.attacked for o in report.outcomes]
    assert attacked[0] == int(report.correct.sum())
    assert all(later < attacked[0] for later in attacked[1:])
    full = mlsec.audit(
        cnn,
        (x, y),
        attacks=DETERMINISTIC,
        eps=GRID,
        batch_size=128,
        sanity_checks=False,
        survivors=False,
    )
    assert full.worst_case == report.worst_case
    assert all(o.attacked == 400 for o in full.outcomes)


def test_rows_are_cumulative_and_never_rise(mnist: Data, cnn: nn.Module) -> None:
    x, y = mnist[0][:200], mnist[1][:200]
    report = mlsec.audit(
        cnn, (x, y), attacks=DETERMINISTIC, eps=[0.3, 0.05, 0.15], sanity_checks=False
    )
    assert report.eps == [0.05, 0.15, 0.3]
    sequence = [o.robust_accuracy for o in report.outcomes]
    assert sequence == sorted(sequence, reverse=True)
    assert sequence[0] < report.clean_accuracy
    for outcome in report.outcomes:
        assert outcome.broken <= outcome.attacked
    # Each stage broke exactly the difference between consecutive counts.
    counts = [round(report.clean_accuracy * 200)] + [round(a * 200) for a in sequence]
    assert [o.broken for o in report.outcomes] == [a - b for a, b in itertools.pairwise(counts)]


def test_audit_leaves_the_model_as_it_was(mnist: Data, cnn: nn.Module) -> None:
    cnn.train()
    mlsec.audit(
        cnn, (mnist[0][:20], mnist[1][:20]), attacks=["fgsm"], eps=[0.1], sanity_checks=False
    )
    assert cnn.training
    assert all(p.requires_grad for p in cnn.parameters())


def test_report_json_and_examples(mnist: Data, cnn: nn.Module) -> None:
    report = mlsec.audit(
        cnn, (mnist[0][:60], mnist[1][:60]), attacks=["fgsm", "pgd"], eps=[0.1, 0.3]
    )
    data = json.loads(report.to_json())
    assert data["schema_version"] == 3
    assert data["n"] == 60
    assert data["clean_accuracy"] == report.clean_accuracy
    assert [r["attack"] for r in data["results"]] == ["fgsm", "pgd", "fgsm", "pgd"]
    assert data["config"]["suite"]["attack"][1]["name"] == "pgd"
    assert report.examples, "a broken sample must yield an example"
    for example in report.examples:
        assert example.adversarial_prediction != example.label  # a real adversarial example
        assert (example.adversarial - example.clean).abs().max().item() <= example.eps + 1e-6
        with torch.no_grad():
            assert int(cnn(example.adversarial[None]).argmax()) == example.adversarial_prediction
        assert example.label == int(mnist[1][example.index])
    with pytest.raises(KeyError):
        report.robust_accuracy("fgsm", 0.2)


def test_thresholds_are_judged(mnist: Data, cnn: nn.Module) -> None:
    x, y = mnist[0][:100], mnist[1][:100]
    thresholds = parse_thresholds(
        ["fgsm@0.1=0.3,worst@0.3=0.5"], "min-accuracy"
    ) + parse_thresholds(["fgsm@0.1=0.05"], "max-drop")
    report = mlsec.audit(
        cnn, (x, y), attacks=["fgsm", "pgd"], eps=[0.1, 0.3], thresholds=thresholds
    )
    verdicts = {t.spec: t for t in report.thresholds}
    fgsm = report.robust_accuracy("fgsm", 0.1)
    assert verdicts["fgsm@0.1=0.3"].passed == (fgsm >= 0.3)
    assert verdicts["fgsm@0.1=0.3"].value == fgsm
    assert not verdicts["worst@0.3=0.5"].passed
    drop = verdicts["fgsm@0.1=0.05"]
    assert drop.value == pytest.approx(report.clean_accuracy - fgsm)
    assert not drop.passed
    assert not report.passed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cw@0.1=0.5", "no attack 'cw'"),
        ("pgd@0.25=0.5", "does not run at eps 0.25"),
        ("pgd@0.1=80", "must lie in \\[0, 1\\]"),
        ("pgd=0.5", "is not ATTACK@EPS=VALUE"),
    ],
)
def test_bad_thresholds(spec: str, message: str, mnist: Data, cnn: nn.Module) -> None:
    with pytest.raises(InputError, match=message):
        mlsec.audit(
            cnn,
            (mnist[0][:10], mnist[1][:10]),
            attacks=["pgd"],
            eps=[0.1],
            thresholds=parse_thresholds([spec], "min-accuracy"),
        )


def test_assert_robust(mnist: Data, cnn: nn.Module) -> None:
    x, y = mnist[0][:100], mnist[1][:100]
    report = assert_robust(cnn, (x, y), attack="fgsm", eps=0.02, min_accuracy=0.9)
    assert report.worst_case[0.02] >= 0.9
    with pytest.raises(AssertionError, match=r"robust accuracy under pgd at eps 0\.3 is 0\.0000"):
        assert_robust(cnn, (x, y), attack="pgd", eps=0.3, min_accuracy=0.5, steps=10)


def test_checkpoint_replays_without_attacking(
    mnist: Data, cnn: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = mnist[0][:200], mnist[1][:200]
    kwargs: dict[str, Any] = {
        "attacks": ["fgsm", "pgd"],
        "eps": [0.1, 0.2],
        "batch_size": 64,
        "sanity_checks": False,
    }
    first = mlsec.audit(cnn, (x, y), checkpoint=tmp_path / "ck", **kwargs)
    lines = (tmp_path / "ck" / "batches.jsonl").read_text().splitlines()
    assert len(lines) == sum(-(-o.attacked // 64) for o in first.outcomes)

    # The replay must not attack: only the small calls that draw the report's examples run.
    calls: list[int] = []
    real_run = mlsec.attacks.Attack.run

    def spy(
        self: mlsec.Attack, model: nn.Module, xb: torch.Tensor, *args: object, **kw: object
    ) -> object:
        calls.append(xb.shape[0])
        return real_run(self, model, xb, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(mlsec.attacks.Attack, "run", spy)
    replay = mlsec.audit(cnn, (x, y), checkpoint=tmp_path / "ck", **kwargs)
    # Examples: one batch per stage of at most twice its share of the 8 (2 per stage here).
    assert calls, "examples are drawn by attacking a few samples again"
    assert len(calls) <= len(first.outcomes) and max(calls) <= 4
    assert replay.worst_case == first.worst_case
    assert [o.robust_accuracy for o in replay.outcomes] == [
        o.robust_accuracy for o in first.outcomes
    ]
    assert [o.seconds for o in replay.outcomes] == [o.seconds for o in first.outcomes]
    other = mlsec.zoo.load("mnist-cnn")
    with torch.no_grad():
        list(other.parameters())[-1].add_(0.01)  # the last layer's bias
    with pytest.raises(
        InputError, match=r"belongs to a different audit: the model's weights changed"
    ):
        mlsec.audit(other, (x, y), checkpoint=tmp_path / "ck", **kwargs)
    with pytest.raises(InputError, match=r"belongs to a different audit: the attacks"):
        mlsec.audit(cnn, (x, y), checkpoint=tmp_path / "ck", **{**kwargs, "eps": [0.1, 0.3]})


def test_checkpoint_discards_a_torn_last_line(tmp_path: Path) -> None:
    store = Checkpoint(tmp_path, {"model": "m"})
    store.append(BatchRecord(stage=0, batch=0, indices=[1, 2], broken=[2], seconds=0.1))
    with (tmp_path / "batches.jsonl").open("ab") as fh:
        fh.write(b'{"stage": 0, "batch": 1, "ind')
    again = Checkpoint(tmp_path, {"model": "m"})
    assert list(again.records) == [(0, 0)]
    assert (tmp_path / "batches.jsonl").read_bytes().endswith(b"\n")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": []}, "at least one eps"),
        ({"eps": [0.1, 0.1]}, "distinct"),
        ({"eps": [-0.1]}, "eps must be"),
        ({"attacks": []}, "at least one attack"),
        ({"attacks": ["nope"]}, "unknown attack"),
        ({"batch_size": 0}, "batch size"),
        ({"suite": "paranoid"}, "neither a built-in suite"),
    ],
)
def test_bad_audit_arguments(kwargs: dict, message: str, mnist: Data, cnn: nn.Module) -> None:
    with pytest.raises(InputError, match=message):
        mlsec.audit(cnn, (mnist[0][:10], mnist[1][:10]), **kwargs)


def test_suite_objects_and_names(mnist: Data, cnn: nn.Module) -> None:
    suite = Suite(name="one", entries=(SuiteEntry(label="fast", attack=FGSM(eps=0.0), eps=(0.1,)),))
    report = mlsec.audit(cnn, (mnist[0][:30], mnist[1][:30]), suite=suite, sanity_checks=False)
    assert report.attacks == ["fast"]
    quick = mlsec.audit(
        cnn, (mnist[0][:30], mnist[1][:30]), suite="quick", eps=[0.3], sanity_checks=False
    )
    assert quick.outcomes[1].params["steps"] == 20


def test_a_wrong_checkpoint_is_refused_in_the_librarys_terms(
    mnist: Data, cnn: nn.Module, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"^checkpoint: .* is not a folder") as error:
        mlsec.audit(
            cnn, (mnist[0][:5], mnist[1][:5]), attacks=["fgsm"], checkpoint=tmp_path / "file"
        )
    assert error.value.subject == "checkpoint" and "--" not in str(error.value)


def test_defended_records_round_trip_and_plain_ones_stay_as_before(tmp_path: Path) -> None:
    store = Checkpoint(tmp_path, {"model": "m"}, samples=10)
    store.append(BatchRecord(stage=0, batch=1, indices=[1, 2], broken=[2], seconds=0.1))
    extended = BatchRecord(
        stage=0, batch=3, indices=[3, 4], broken=[], seconds=0.1, also_broken=[[4]]
    )
    store.append(extended)
    plain_line, extended_line = (tmp_path / "batches.jsonl").read_text().splitlines()
    assert "also_broken" not in plain_line
    assert Checkpoint(tmp_path, {"model": "m"}, samples=10).records[(0, 3)] == extended
    # A forged judge's result fails the checksum; a bad value fails the record's checks.
    lines = plain_line + "\n" + extended_line.replace('"also_broken":[[4]]', '"also_broken":[[3]]')
    (tmp_path / "batches.jsonl").write_text(lines + "\n")
    with pytest.raises(InputError, match="line 2 is not a valid record: its checksum"):
        Checkpoint(tmp_path, {"model": "m"}, samples=10)
    bad = extended_line.replace('"also_broken":[[4]]', '"also_broken":[[9]]')
    (tmp_path / "batches.jsonl").write_text(bad + "\n")
    with pytest.raises(InputError, match="also_broken must be lists of attacked sample indices"):
        Checkpoint(tmp_path, {"model": "m"}, samples=10)


def test_a_sample_recorded_twice_in_a_stage_is_refused(tmp_path: Path) -> None:
    store = Checkpoint(tmp_path, {"model": "m"}, samples=10)
    store.append(BatchRecord(stage=0, batch=1, indices=[1, 2], broken=[2], seconds=0.1))
    with pytest.raises(InputError, match="records sample 2 of stage 0 a second time"):
        store.append(BatchRecord(stage=0, batch=2, indices=[2, 3], broken=[], seconds=0.1))
    # Another rank's log that repeats a sample of rank 0's log is refused on reading.
    other = Checkpoint(tmp_path, {"model": "m"}, samples=10, rank=1)
    other.append(BatchRecord(stage=0, batch=5, indices=[5], broken=[], seconds=0.1))
    assert sorted(Checkpoint(tmp_path, {"model": "m"}, samples=10).records) == [(0, 1), (0, 5)]
    store.append(BatchRecord(stage=1, batch=5, indices=[5], broken=[5], seconds=0.1))
    # A log made elsewhere for the same audit, placed beside them as rank 2's.
    forged = Checkpoint(tmp_path / "elsewhere", {"model": "m"}, samples=10)
    forged.append(BatchRecord(stage=1, batch=4, indices=[4, 5], broken=[], seconds=0.1))
    (tmp_path / "batches.2.jsonl").write_bytes(
        (tmp_path / "elsewhere" / "batches.jsonl").read_bytes()
    )
    with pytest.raises(InputError, match="sample 5 of stage 1 a second time"):
        Checkpoint(tmp_path, {"model": "m"}, samples=10)


def test_strength_note_in_the_report(mnist: Data, cnn: nn.Module) -> None:
    data = (mnist[0][:20], mnist[1][:20])
    weak = mlsec.audit(cnn, data, eps=[0.1], sanity_checks=False)
    assert weak.strength_note is not None
    assert weak.strength_note.startswith("weaker than the standard suite (no APGD-CE")
    assert json.loads(weak.to_json())["strength_note"] == weak.strength_note
    square = mlsec.attacks.Square(eps=0.0, queries=5000)
    strong = mlsec.audit(
        cnn, data, attacks=["apgd", "apgd-t", square], eps=[0.1], sanity_checks=False
    )
    assert strong.strength_note is None


def test_progress_off_a_terminal_is_one_line_per_stage(mnist: Data, cnn: nn.Module) -> None:
    out = StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    mlsec.audit(
        cnn,
        (mnist[0][:20], mnist[1][:20]),
        attacks=["fgsm"],
        eps=[0.1, 0.3],
        sanity_checks=False,
        progress=True,
        console=console,
    )
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["clean", "fgsm eps=0.1", "fgsm eps=0.3"]
    assert lines[0].startswith("clean: 20/20 samples in ")
