"""Certified rows in the audit: a lower bound beside the attacks, checked against them every run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import mlsec
from mlsec.auditing import certified as certified_module
from mlsec.cli import main
from mlsec.defenses.certified.intervals import verified
from mlsec.defenses.certified.smoothing import Smoothing
from mlsec.errors import InputError, SoundnessError
from mlsec.reports.plot import _plot_svg, plot_series


def run_cli(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mlsec.datasets.mnist_sample()
    return x[:60], y[:60]


@pytest.fixture(scope="module")
def ibp_report(data: tuple[torch.Tensor, torch.Tensor]) -> mlsec.AuditReport:
    model = mlsec.zoo.load("mnist-cnn-ibp")
    return mlsec.audit(
        model, data, attacks=["fgsm", "pgd"], eps=[0.1, 0.3], certify="ibp", sanity_checks=False
    )


def test_ibp_rows_lie_below_the_attacks_and_match_the_bounds_sample_by_sample(
    ibp_report: mlsec.AuditReport, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    cert = ibp_report.certification
    assert cert is not None and cert.method == "ibp" and cert.eps == [0.1, 0.3]
    model = mlsec.zoo.load("mnist-cnn-ibp")
    for eps in (0.1, 0.3):
        # The audit's mask is the bounds' own verdict on every sample.
        expected = verified(model, data[0], data[1], eps)
        assert torch.equal(cert.masks[eps], expected.cpu())
        # A lower bound: certified samples are a subset of those every attack left standing.
        standing = ibp_report.robust[("pgd", eps)]
        assert bool((cert.masks[eps] & ~standing).sum() == 0)
        assert cert.accuracy(eps) <= ibp_report.robust_accuracy("worst", eps)
    assert cert.accuracy(0.1) >= 0.7  # the bundled IBP model: 85%+ on the first 500
    assert cert.accuracy(0.3) <= cert.accuracy(0.1)
    assert cert.soundness == {"checked": True, "violations": 0}


def test_every_report_format_carries_the_certified_row(ibp_report: mlsec.AuditReport) -> None:
    as_json = json.loads(ibp_report.to_json())
    rows = as_json["certification"]["results"]
    assert [r["eps"] for r in rows] == [0.1, 0.3]
    assert rows[0]["certified"] == int(ibp_report.certification.masks[0.1].sum())  # type: ignore[union-attr]
    assert "*certified (interval bounds)*" in ibp_report.to_markdown()
    html = ibp_report.to_html()
    assert 'class="certified"' in html and "certified (interval bounds)" in html
    assert "certified_ibp@0.1" in ibp_report.to_junit()
    # A plain audit has none of it.
    x, y = mlsec.datasets.mnist_sample()
    plain = mlsec.audit(mlsec.zoo.load("mnist-cnn"), (x[:20], y[:20]), attacks=["fgsm"],
                        eps=[0.1], sanity_checks=False)  # fmt: skip
    assert json.loads(plain.to_json())["certification"] is None
    assert "certified" not in plain.to_markdown()


def test_the_plot_shades_the_band_between_certified_and_attacked(
    ibp_report: mlsec.AuditReport,
) -> None:
    series = plot_series(ibp_report)
    certified = next(s for s in series if s.certified)
    worst = next(s for s in series if s.worst)
    assert certified.eps == worst.eps
    # The lower line never crosses the upper one.
    assert all(c <= w for c, w in zip(certified.accuracy, worst.accuracy, strict=True))
    svg = _plot_svg(series)  # the plot without matplotlib
    assert svg.count('class="certified-band"') == 1 and ">certified</text>" in svg


def test_a_certifier_that_lies_is_caught_by_the_attacks(
    data: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plant a bug: interval bounds that "verify" every sample. PGD breaks some of them on the
    # standard model, and the audit must stop rather than report a certificate an attack refutes.
    def everything(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, **_: object
    ) -> torch.Tensor:
        return torch.ones(len(y), dtype=torch.bool, device=x.device)

    monkeypatch.setattr(certified_module, "verified", everything)
    with pytest.raises(SoundnessError, match=r"sample \d+ is certified by interval bounds"):
        mlsec.audit(mlsec.zoo.load("mnist-cnn"), data, attacks=["pgd"], eps=[0.3],
                    certify="ibp", sanity_checks=False)  # fmt: skip


def test_the_cli_exits_3_in_one_line_when_a_certificate_is_refuted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        certified_module,
        "verified",
        lambda model, x, y, eps, **_: torch.ones(len(y), dtype=torch.bool),
    )
    code = run_cli(["audit", "--model", "mnist-cnn", "--certify", "ibp", "--attacks", "pgd",
                    "--eps", "0.3", "--limit", "30", "-q", "--no-checks"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and err[0].startswith("mlsec: soundness check failed: sample ")
    assert "Traceback" not in err[0]


def test_cli_certify_ibp_writes_the_rows_and_gates_on_them(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    argv = ["audit", "--model", "mnist-cnn-ibp", "--certify", "ibp", "--attacks", "fgsm",
            "--eps", "0.1", "--limit", "40", "-q", "--no-checks", "--json", str(out)]  # fmt: skip
    assert run_cli([*argv, "--fail-under", "certified@0.1=0.01"]) == 0
    report = json.loads(out.read_text())
    row = report["certification"]["results"][0]
    assert row["eps"] == 0.1 and row["certified_accuracy"] == row["certified"] / 40
    assert report["thresholds"][0]["value"] == row["certified_accuracy"]
    # An impossible certified threshold fails the gate.
    everything = row["certified_accuracy"] == 1.0
    assert run_cli([*argv, "--fail-under", "certified@0.1=1.0"]) == (0 if everything else 1)
    assert json.loads(out.read_text())["passed"] is everything


@pytest.mark.parametrize(
    ("args", "part"),
    [
        (["--certify", "smoothing", "--norm", "linf", "--sigma", "0.25"], "smoothing certifies l2"),
        (["--certify", "ibp", "--norm", "l2"], "ibp certifies linf"),
        (["--certify", "smoothing", "--sigma", "-1"], "sigma"),
        (["--certify", "smoothing", "--sigma", "0.25", "--alpha", "1.5"], "alpha"),
        (["--sigma", "0.25"], "--sigma needs --certify smoothing"),
        (["--certify", "smoothing"], "needs --sigma for mnist-cnn"),
        (["--fail-under", "certified@0.1=0.5"], "no attack 'certified'"),
    ],
)
def test_bad_certify_options_exit_2_with_one_line(
    args: list[str], part: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["audit", "--model", "mnist-cnn", "--limit", "5", "-q", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and part in err[0], err


def test_a_layer_interval_bounds_cannot_pass_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Dropout(0.1), nn.Linear(32, 10))
    x, y = mlsec.datasets.mnist_sample()
    with pytest.raises(InputError, match="Dropout"):
        mlsec.audit(model.eval(), (x[:8], y[:8]), attacks=["fgsm"], eps=[0.1], certify="ibp")
    with pytest.raises(InputError, match="Smoothing\\(sigma="):
        mlsec.audit(model.eval(), (x[:8], y[:8]), attacks=["fgsm"], eps=[0.1], certify="smoothing")


def test_certify_api_is_independent_of_the_batch_size(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    smoothing = Smoothing(sigma=0.25, n0=20, n=100, seed=3)
    model = mlsec.zoo.load("mnist-cnn-smooth")
    x, y = data[0][:24], data[1][:24]
    small = mlsec.certify(model, (x, y), method=smoothing, eps=[0.25, 0.5], batch_size=5)
    whole = mlsec.certify(model, (x, y), method=smoothing, eps=[0.5, 0.25], batch_size=24)
    assert small.eps == whole.eps == [0.25, 0.5]
    assert torch.equal(small.radius, whole.radius)  # type: ignore[arg-type]
    # The rows equal the certificates Smoothing.certify gives for the samples directly.
    direct = smoothing.certify(model, x, index=torch.arange(24))
    right = direct.prediction == y
    assert torch.equal(small.masks[0.5], right & (direct.radius >= 0.5))


def test_smoothing_audit_attacks_the_smoothed_classifier_and_checks_its_certificates(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = data[0][:30], data[1][:30]
    smoothing = Smoothing(sigma=0.25, n0=20, n=200)
    report = mlsec.audit(
        mlsec.zoo.load("mnist-cnn-smooth"),
        (x, y),
        attacks=["pgd"],
        eps=[0.25, 0.5],
        norm="l2",
        certify=smoothing,
        noise_samples=4,
        sanity_checks=False,
    )
    cert = report.certification
    assert cert is not None and cert.method == "smoothing"
    assert report.clean_accuracy >= 0.9  # the smoothed classifier on clean inputs
    rows = cert.soundness["per_eps"]
    for row in rows:
        # Every confirmed contradiction is counted against what alpha allows.
        assert row["confirmed"] <= row["contradicted"]
        assert row["confirmed"] <= row["allowed"]
    for eps in (0.25, 0.5):
        assert cert.accuracy(eps) <= report.robust_accuracy("worst", eps) + 0.1
    assert report.config["noise_samples"] == 4
    # The attack ran on the smoothed classifier: a l2 PGD with Monte Carlo gradients.
    assert report.outcome("pgd", 0.5).params["norm"] == "l2"
