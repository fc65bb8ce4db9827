"""The Python audit API: per-sample worst case, survivors, and leaving the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlsec
from mlsec.attacks import FGSM, PGD
from mlsec.errors import InputError


def test_worst_case_is_the_per_sample_minimum(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:300], mnist[1][:300]
    attacks = [FGSM(eps=0.0), PGD(eps=0.0, steps=5, step_size=0.05, random_start=False)]
    report = mlsec.audit(cnn, (x, y), attacks=attacks, eps=[0.1], batch_size=1000)

    # Independently: both attacks on the correctly classified samples, one batch each.
    with torch.no_grad():
        correct = cnn(x).argmax(1) == y
    keep = correct.nonzero().flatten()
    survives = correct.clone()
    per_attack = []
    for attack in (FGSM(eps=0.1), PGD(eps=0.1, steps=5, step_size=0.05, random_start=False)):
        alive = correct.clone()
        alive[keep] = ~attack.run(cnn, x[keep], y[keep]).success
        per_attack.append(alive.float().mean().item())
        survives &= alive
    assert report.robust_accuracy("fgsm", 0.1) == pytest.approx(per_attack[0])
    assert report.robust_accuracy("pgd", 0.1) == pytest.approx(per_attack[1])
    assert report.worst_case[0.1] == pytest.approx(survives.float().mean().item())
    assert report.worst_case[0.1] <= min(per_attack)
    assert report.clean_accuracy == pytest.approx(correct.float().mean().item())


def test_accuracy_never_rises_with_eps(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    x, y = mnist[0][:200], mnist[1][:200]
    report = mlsec.audit(cnn, (x, y), attacks=["fgsm"], eps=[0.3, 0.05, 0.15], batch_size=64)
    values = [report.robust_accuracy("fgsm", e) for e in (0.05, 0.15, 0.3)]
    assert report.eps == [0.05, 0.15, 0.3]
    assert values == sorted(values, reverse=True)
    assert values[0] < report.clean_accuracy
    # Survivors only: each larger eps attacks only what the smaller one left standing.
    attacked = [o.attacked for o in report.outcomes]
    assert attacked[1] == round(values[0] * 200) and attacked[2] == round(values[1] * 200)


def test_audit_leaves_the_model_as_it_was(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    cnn.train()
    mlsec.audit(cnn, (mnist[0][:20], mnist[1][:20]), attacks=["fgsm"], eps=[0.1])
    assert cnn.training
    assert all(p.requires_grad for p in cnn.parameters())


def test_report_json_round_trip(mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module) -> None:
    import json

    report = mlsec.audit(cnn, (mnist[0][:20], mnist[1][:20]), attacks=["fgsm", "pgd"], eps=[0.1])
    data = json.loads(report.to_json())
    assert data["n"] == 20 and data["clean_accuracy"] == report.clean_accuracy
    assert [r["attack"] for r in data["results"]] == ["fgsm", "pgd"]
    with pytest.raises(KeyError):
        report.robust_accuracy("fgsm", 0.2)


def test_duplicate_attack_names_get_distinct_labels(
    mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    attacks = [PGD(eps=0.0, steps=2), PGD(eps=0.0, steps=4)]
    report = mlsec.audit(cnn, (mnist[0][:20], mnist[1][:20]), attacks=attacks, eps=[0.1])
    assert report.attacks == ["pgd-1", "pgd-2"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": []}, "at least one eps"),
        ({"eps": [0.1, 0.1]}, "distinct"),
        ({"eps": [-0.1]}, "eps must be"),
        ({"attacks": []}, "at least one attack"),
        ({"attacks": ["nope"]}, "unknown attack"),
        ({"batch_size": 0}, "batch size"),
    ],
)
def test_bad_audit_arguments(
    kwargs: dict, message: str, mnist: tuple[torch.Tensor, torch.Tensor], cnn: nn.Module
) -> None:
    with pytest.raises(InputError, match=message):
        mlsec.audit(cnn, (mnist[0][:10], mnist[1][:10]), **kwargs)
