"""Membership metrics against scikit-learn, the ``--fail-over`` gate, and the privacy renderers."""

from __future__ import annotations

import itertools
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk  # type: ignore[import-untyped]

from mlsec.attacks.inference.metrics import check_fprs, membership_metrics, roc_curve
from mlsec.auditing.privacy_report import (
    PrivacyReport,
    evaluate_leaks,
    parse_leak_thresholds,
)
from mlsec.cli.privacy import leakier
from mlsec.errors import InputError


def _scores(
    seed: int, shift: float, members: int = 3000, non_members: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Rounded, so that ties between members and non-members occur and must count one half.
    return (
        np.round(rng.normal(shift, 1.0, members), 1),
        np.round(rng.normal(0.0, 1.0, non_members), 1),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_roc_equal_scikit_learn(seed: int) -> None:
    m, n = _scores(seed, 0.7)
    truth = np.r_[np.ones(len(m)), np.zeros(len(n))]
    result = membership_metrics("x", m, n, fprs=[0.001, 0.01, 0.1])
    assert result.auc == pytest.approx(sk.roc_auc_score(truth, np.r_[m, n]), abs=1e-12)
    fpr, tpr, _ = sk.roc_curve(truth, np.r_[m, n], drop_intermediate=False)
    ours_fpr, ours_tpr = roc_curve(m, n)
    np.testing.assert_allclose(ours_fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(ours_tpr, tpr, atol=1e-12)
    for target in (0.001, 0.01, 0.1):
        # Carlini et al.'s definition: the best TPR among thresholds whose FPR is at most target.
        assert result.tpr_at_fpr[target] == pytest.approx(tpr[fpr <= target].max())
    assert result.balanced_accuracy == pytest.approx(np.max((tpr + 1 - fpr) / 2))


def test_gaussian_shift_gives_the_closed_form_auc() -> None:
    # Members N(d, 1), non-members N(0, 1): AUC = Phi(d / sqrt 2); with 20,000 + 20,000 samples
    # the standard error is about 0.003.
    rng = np.random.default_rng(5)
    d = 1.0
    result = membership_metrics("x", rng.normal(d, 1, 20_000), rng.normal(0, 1, 20_000))
    assert result.auc == pytest.approx(stats.norm.cdf(d / math.sqrt(2)), abs=0.01)
    # TPR at FPR f: P(N(d,1) > z_{1-f}) = Phi(d - z_{1-f}).
    for f in (0.001, 0.01):
        expected = stats.norm.sf(stats.norm.isf(f) - d)
        assert result.tpr_at_fpr[f] == pytest.approx(expected, abs=0.25 * expected + 0.003)


def test_identical_distributions_sit_at_chance() -> None:
    rng = np.random.default_rng(9)
    result = membership_metrics("x", rng.normal(0, 1, 5000), rng.normal(0, 1, 5000))
    assert abs(result.auc - 0.5) < 0.02
    assert result.balanced_accuracy < 0.53
    assert result.tpr_at_fpr[0.01] < 0.03


def test_fprs_the_non_members_cannot_measure_are_refused() -> None:
    assert check_fprs([0.001], 1000) == (0.001,)
    with pytest.raises(
        InputError, match=r"FPR 0.001 needs at least 1,000 non-members \(have 999\)"
    ):
        check_fprs([0.001], 999)
    with pytest.raises(InputError, match=r"must lie in \(0, 1\)"):
        check_fprs([1.5], 1000)
    with pytest.raises(InputError, match="NaN"):
        membership_metrics("x", [float("nan"), 1.0], [0.0, 1.0], fprs=[0.5])


def test_roc_is_thinned_but_keeps_the_low_fpr_end() -> None:
    m, n = _scores(3, 1.0, 10_000, 10_000)
    result = membership_metrics("x", m, n)
    fpr, tpr = result.roc
    assert len(fpr) <= 130
    assert fpr[1] == pytest.approx(1e-4)  # the first point after 0: one false positive
    assert all(b >= a for a, b in itertools.pairwise(tpr))
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0


def _report(**changes: object) -> PrivacyReport:
    rng = np.random.default_rng(0)
    results = [
        membership_metrics("loss", rng.normal(0.2, 1, 4000), rng.normal(0, 1, 2000)),
        membership_metrics("lira", rng.normal(1.0, 1, 4000), rng.normal(0, 1, 2000)),
    ]
    fields: dict[str, object] = {
        "model": "net<script>",
        "members": "train.npz",
        "non_members": "held|out",
        "member_accuracy": 0.995,
        "non_member_accuracy": 0.97,
        "results": results,
        "shadows": None,
        "warnings": ["few & far"],
        "thresholds": [],
        "config": {"attacks": ["loss", "lira"]},
        "environment": {"torch": "2"},
    }
    fields.update(changes)
    return PrivacyReport(**fields)  # type: ignore[arg-type]


def test_thresholds_parse_and_judge_each_metric() -> None:
    report = _report()
    lira = report.result("lira")
    specs = parse_leak_thresholds(
        [f"lira@tpr0.001={lira.tpr_at_fpr[0.001] + 0.01:.4f}", "worst@auc=0.6,loss@AUC=0.9"]
    )
    assert [(t.attack, t.metric) for t in specs] == [
        ("lira", "tpr@0.001"),
        ("worst", "auc"),
        ("loss", "auc"),
    ]
    verdicts = evaluate_leaks(specs, report.results)
    assert [v.passed for v in verdicts] == [True, False, True]
    # worst: the largest value over the attacks.
    assert verdicts[1].value == pytest.approx(max(r.auc for r in report.results))
    assert parse_leak_thresholds(["lira@tpr@0.01=0.5"])[0].metric == "tpr@0.01"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lira@tpr0.001", "is not ATTACK@METRIC=MAX"),
        ("lira@recall=0.1", "is not ATTACK@METRIC=MAX"),
        ("lira@auc=60", r"MAX must lie in \[0, 1\]"),
        ("lira@tpr2=0.1", r"FPR in \(0, 1\)"),
    ],
)
def test_bad_thresholds_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        parse_leak_thresholds([spec])
    assert "\n" not in str(caught.value)


def test_thresholds_on_what_did_not_run_are_refused() -> None:
    report = _report()
    with pytest.raises(InputError, match="no attack 'entropy' ran"):
        evaluate_leaks(parse_leak_thresholds(["entropy@auc=0.5"]), report.results)
    with pytest.raises(InputError, match=r"tpr@0\.05 was not measured"):
        evaluate_leaks(parse_leak_thresholds(["lira@tpr0.05=0.5"]), report.results)


def test_every_format_carries_the_numbers_and_escapes_names() -> None:
    report = _report().with_thresholds(parse_leak_thresholds(["worst@auc=0.6"]))
    lira = report.result("lira")
    as_dict = report.to_dict()
    assert as_dict["kind"] == "privacy" and as_dict["passed"] is False
    assert as_dict["results"][1]["auc"] == lira.auc
    assert as_dict["results"][1]["lowest_fpr"] == 1 / 2000
    markdown = report.to_markdown()
    assert f"{100 * lira.auc:.2f}%" in markdown and "**FAIL**" in markdown
    assert "held\\|out" in markdown
    html = report.to_html()
    assert "<script>" not in html and "net&lt;script&gt;" in html
    assert html.count('class="roc"') == 2 and 'id="roc-plot"' in html
    root = ET.fromstring(report.to_junit())
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert float(properties["lira@auc"] or "nan") == pytest.approx(lira.auc, abs=1e-6)


def test_the_roc_plot_is_log_log() -> None:
    html = _report().to_html()
    svg = re.search(r"<svg id=\"roc-plot\".*?</svg>", html, re.S)
    assert svg is not None
    # Decade ticks from 1e-4 (below the lowest measurable FPR, 1/2000) to 1, equally spaced.
    ticks = [float(v) for v in re.findall(r'<line x1="([0-9.]+)" y1="20" ', svg.group(0))]
    assert len(ticks) == 5
    gaps = np.diff(ticks)
    assert np.allclose(gaps, gaps[0], atol=0.2)


def test_the_auc_error_matches_the_spread_over_repeated_draws() -> None:
    # Hanley & McNeil's standard error against the standard deviation of the AUC over 200
    # independent draws of the same two Gaussians (300 members, 200 non-members).
    rng = np.random.default_rng(11)
    aucs, errors = [], []
    for _ in range(200):
        result = membership_metrics("x", rng.normal(0.5, 1, 300), rng.normal(0, 1, 200), [0.01])
        aucs.append(result.auc)
        errors.append(result.standard_error("auc"))
    assert float(np.mean(errors)) == pytest.approx(float(np.std(aucs)), rel=0.2)


def test_a_model_leaks_more_only_beyond_the_noise() -> None:
    rng = np.random.default_rng(12)
    weak = membership_metrics("x", rng.normal(0.1, 1, 2000), rng.normal(0, 1, 2000), [0.01])
    same = membership_metrics("x", rng.normal(0.1, 1, 2000), rng.normal(0, 1, 2000), [0.01])
    strong = membership_metrics("x", rng.normal(0.8, 1, 2000), rng.normal(0, 1, 2000), [0.01])
    assert leakier([weak, strong], "auc") == 1
    assert leakier([strong, weak], "tpr@0.01") == 0
    assert leakier([weak, same], "auc") is None
