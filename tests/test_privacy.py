"""Membership inference: the scores, offline LiRA, ART's black box and the privacy audit."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import input_error
from rich.console import Console
from scipy import stats
from torch import nn

import mlsec
from mlsec.attacks.inference.art_blackbox import art_blackbox, balanced_halves
from mlsec.attacks.inference.lira import lira_offline
from mlsec.attacks.inference.metrics import membership_metrics
from mlsec.attacks.inference.scores import confidence, entropy, logit_scaled, logits_of, loss
from mlsec.auditing.privacy import audit_privacy

Data = tuple[torch.Tensor, torch.Tensor]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def data() -> tuple[Data, Data]:
    """200 members (MNIST images 0-199) and 2,000 non-members (images 8000-9999)."""
    xm, ym = mlsec.datasets.mnist_members()
    return (xm[:200], ym[:200]), mlsec.datasets.mnist_sample()


@pytest.fixture(scope="module")
def overfit(data: tuple[Data, Data]) -> nn.Module:
    """An MLP trained to zero training loss on the 200 members: it memorises them."""
    torch.manual_seed(0)
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data[0]
    for _ in range(150):  # full batch: about 1 s at one thread
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


# -- the scores


def test_scores_match_hand_computed_values() -> None:
    """Two samples, each score written out from its definition with the math module."""
    z = [[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]
    y = [0, 1]
    logits, labels = torch.tensor(z), torch.tensor(y)
    for row, label, got in zip(z, y, range(2), strict=True):
        total = sum(math.exp(v) for v in row)
        p = [math.exp(v) / total for v in row]
        py = p[label]
        mentr = -(1 - py) * math.log(py) - sum(
            p[i] * math.log(1 - p[i]) for i in range(3) if i != label
        )
        others = math.log(sum(math.exp(v) for i, v in enumerate(row) if i != label))
        assert float(loss(logits, labels)[got]) == pytest.approx(math.log(py), abs=1e-12)
        assert float(confidence(logits, labels)[got]) == pytest.approx(py, abs=1e-12)
        assert float(entropy(logits, labels)[got]) == pytest.approx(-mentr, abs=1e-12)
        assert float(logit_scaled(logits, labels)[got]) == pytest.approx(
            math.log(py / (1 - py)), abs=1e-12
        )
        assert float(logit_scaled(logits, labels)[got]) == pytest.approx(row[label] - others)


def test_scores_stay_finite_for_certain_predictions() -> None:
    """Logits 200 apart: p_y rounds to 1 in float64, but phi is still z_y - z_other = 200."""
    logits, y = torch.tensor([[200.0, 0.0], [0.0, 200.0]]), torch.tensor([0, 0])
    assert logit_scaled(logits, y).tolist() == [200.0, -200.0]
    for score in (loss, confidence, entropy):
        assert bool(torch.isfinite(score(logits, y)).all()), score.__name__
    # A certain right answer beats a certain wrong one under every score.
    for score in (loss, confidence, entropy, logit_scaled):
        s = score(logits, y)
        assert float(s[0]) > float(s[1]), score.__name__


def test_logits_do_not_depend_on_the_batch(overfit: nn.Module, data: tuple[Data, Data]) -> None:
    x = data[1][0][:300]
    a, b = logits_of(overfit, x, batch_size=300), logits_of(overfit, x, batch_size=7)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_model_returning_probabilities_is_refused(data: tuple[Data, Data]) -> None:
    model = nn.Sequential(_mlp(), nn.Softmax(dim=1))
    input_error(lambda: logits_of(model, data[1][0][:10]), "probabilities", "softmax")
    flat = nn.Sequential(nn.Flatten(0))
    input_error(lambda: logits_of(flat, data[1][0][:10]), "logits [batch, classes]")


# -- offline LiRA


def test_lira_reaches_the_gaussian_auc_on_synthetic_phi() -> None:
    """Per-sample means spread wide (sd 3), members shifted by d = 1, noise sd 1 everywhere.

    The score is (phi - mu_out) / sigma with mu_out the mean of 16 OUT shadows, so a member's
    score minus a non-member's is Gaussian with mean d and variance 2 (1 + 1/16): AUC =
    Phi(d / sqrt(2.125)) = 0.754. Uncalibrated phi has variance 2 (9 + 1): AUC Phi(0.224) = 0.588.
    """
    gen = torch.Generator().manual_seed(0)
    n, shadows, d = 4000, 32, 1.0
    mu = 3.0 * torch.randn(n, generator=gen, dtype=torch.float64)
    member = torch.arange(n) < n // 2
    inside = torch.rand(shadows, n, generator=gen).argsort(0) < shadows // 2
    shadow_phi = mu + d * inside + torch.randn(shadows, n, generator=gen, dtype=torch.float64)
    target = mu + d * member + torch.randn(n, generator=gen, dtype=torch.float64)
    scores = lira_offline(target, shadow_phi, inside)
    auc = membership_metrics("lira", scores[member], scores[~member], [0.01]).auc
    expected = float(stats.norm.cdf(d / math.sqrt(2.125)))
    assert abs(auc - expected) < 0.02, (auc, expected)
    raw = membership_metrics("raw", target[member], target[~member], [0.01]).auc
    assert abs(raw - float(stats.norm.cdf(d / math.sqrt(20.0)))) < 0.02
    # sigma is the pooled OUT noise (sd 1): member scores average about d.
    assert float(scores[member].mean()) == pytest.approx(d, abs=0.1)


def test_lira_refuses_a_sample_without_out_shadows() -> None:
    inside = torch.tensor([[True, False], [True, True]])
    input_error(
        lambda: lira_offline(torch.zeros(2), torch.zeros(2, 2), inside),
        "sample 0 has no OUT shadow",
    )


# -- ART's black box


def test_balanced_halves_are_disjoint_and_seeded() -> None:
    fit_m, score_m, fit_n, score_n = balanced_halves(10, 7, seed=3)
    assert len(fit_m) == len(fit_n) == 3
    assert sorted([*fit_m.tolist(), *score_m.tolist()]) == list(range(10))
    assert sorted([*fit_n.tolist(), *score_n.tolist()]) == list(range(7))
    again = balanced_halves(10, 7, seed=3)
    first = (fit_m, score_m, fit_n, score_n)
    assert all(torch.equal(a, b) for a, b in zip(again, first, strict=True))
    assert not torch.equal(balanced_halves(10, 7, seed=4)[0], fit_m)


def test_art_blackbox_beats_chance_on_the_overfit_model(
    overfit: nn.Module, data: tuple[Data, Data]
) -> None:
    members, non_members = data
    m, n, note = art_blackbox(overfit, members, (non_members[0][:400], non_members[1][:400]))
    assert (len(m), len(n)) == (100, 300)
    assert "fitted on 100 members and 100 non-members" in note
    auc = membership_metrics("art", m, n, [0.01]).auc
    # Measured 0.80 (seed 0); 100 + 300 scored samples put chance within about +-0.07.
    assert auc > 0.65, auc
    again = art_blackbox(overfit, members, (non_members[0][:400], non_members[1][:400]))
    assert torch.equal(again[0], m)  # seeded


# -- the audit


def test_the_loss_attack_finds_the_members_of_an_overfit_model(
    overfit: nn.Module, data: tuple[Data, Data]
) -> None:
    report = audit_privacy(overfit, *data, attacks=("loss", "confidence", "entropy"))
    assert report.member_accuracy == 1.0
    fitted = confidence(logits_of(overfit, data[0][0]), data[0][1])
    assert float(fitted.min()) > 0.5  # the premise of the bound below
    assert report.non_member_accuracy < 0.95
    assert report.attacks == ["loss", "confidence", "entropy"]
    gap = report.member_accuracy - report.non_member_accuracy  # measured 0.21
    for result in report.results:
        # Every member is fitted (p_y > 1/2) and every misclassified non-member has p_y <= 1/2,
        # so one threshold calls all members members and all those non-members non-members:
        # the balanced accuracy is at least (1 + gap) / 2 (Yeom et al.'s bound).
        assert result.balanced_accuracy >= (1 + gap) / 2 - 1e-9, result
        # Measured AUC 0.69-0.70 (the non-members the model gets right are confident too).
        assert result.auc > 0.65, (result.attack, result.auc)
        assert (result.members, result.non_members) == (200, 2000)
    assert report.shadows is None
    assert report.config["attacks"] == ["loss", "confidence", "entropy"]
    assert any("differ a lot in number" in w for w in report.warnings)


def test_an_untrained_model_leaks_nothing(data: tuple[Data, Data]) -> None:
    torch.manual_seed(1)
    model = _mlp().eval()
    xm, ym = mlsec.datasets.mnist_members()
    report = audit_privacy(model, (xm[:2000], ym[:2000]), data[1], attacks=("loss", "entropy"))
    # The model never saw either set; 2,000 vs 2,000 puts the AUC's standard error near 0.009.
    for result in report.results:
        assert abs(result.auc - 0.5) < 0.05, (result.attack, result.auc)
    assert any("no more accurate on the members" in w for w in report.warnings)


def test_thresholds_are_evaluated(overfit: nn.Module, data: tuple[Data, Data]) -> None:
    thresholds = mlsec.auditing.privacy_report.parse_leak_thresholds(
        ["loss@auc=0.6", "loss@auc=0.99"]
    )
    report = audit_privacy(overfit, *data, attacks=("loss",), thresholds=thresholds)
    assert [t.passed for t in report.thresholds] == [False, True]
    assert not report.passed


def test_bad_input_is_refused(overfit: nn.Module, data: tuple[Data, Data]) -> None:
    members, non_members = data
    input_error(
        lambda: audit_privacy(
            overfit, members, (members[0][:50], members[1][:50]), attacks=("loss",), fprs=[0.1]
        ),
        "50 samples are in both",
    )
    input_error(
        lambda: audit_privacy(
            overfit, members, (non_members[0][:500], non_members[1][:500]), attacks=("loss",)
        ),
        "needs at least 1,000 non-members",
    )
    input_error(lambda: audit_privacy(overfit, members, non_members, attacks=("lsos",)), "loss")
    input_error(lambda: audit_privacy(overfit, members, non_members), "lira needs shadow models")
    input_error(
        lambda: audit_privacy(
            overfit, members, (non_members[0][:1], non_members[1][:1]), attacks=("loss",)
        ),
        "at least 2 samples",
    )
    softmax = nn.Sequential(overfit, nn.Softmax(dim=1))
    input_error(
        lambda: audit_privacy(softmax, members, non_members, attacks=("loss",)), "probabilities"
    )


def test_progress_logs_one_line_per_stage(overfit: nn.Module, data: tuple[Data, Data]) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    audit_privacy(overfit, *data, attacks=("loss", "entropy"), progress=True, console=console)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["logits", "loss", "entropy"]
    assert all("2200/2200 samples" in line for line in lines), lines
