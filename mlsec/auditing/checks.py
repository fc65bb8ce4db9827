"""Sanity checks for the known signs of gradient masking and other overstated robustness.

Each check returns warning sentences for the report. They follow Carlini et al. 2019 ("On
Evaluating Adversarial Robustness"), Athalye et al. 2018 ("Obfuscated Gradients Give a False Sense
of Security") and Croce & Hein 2020 (AutoAttack's ``checks.py``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from mlsec.attacks import FGSM, PGD, Attack
from mlsec.auditing.suite import Suite
from mlsec.core import model as _model

__all__ = ["attack_checks", "model_checks"]

GRADIENT_FRACTION = 0.05  # "more than a few percent" of samples with zero or NaN gradients
PROBE = 200  # samples the attack checks use


def model_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    logits: torch.Tensor,
    *,
    was_training: bool,
) -> list[str]:
    """Checks of the model alone: train mode, randomness, probability outputs, gradients."""
    warnings = []
    device = _model.device_of(model)
    dtype = _model.compute_dtype(model, x)
    if was_training:
        warnings.append(
            "the model was handed over in train mode (dropout or batch norm active); mlsec "
            "evaluated it in eval mode: make sure that is how it is deployed"
        )
    sums = logits.double().sum(dim=1)
    if bool((logits >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
        warnings.append(
            "the model's outputs look like probabilities (rows sum to 1): softmax outputs "
            "weaken gradients and can overstate robustness; audit the logits instead"
        )
    sample = x[:64].to(device=device, dtype=dtype)
    with _model.frozen(model), torch.no_grad():
        again = model(sample).float().cpu()
    first = logits[: len(sample)]
    if not torch.allclose(again, first, rtol=1e-4, atol=1e-4 * (1 + float(first.abs().max()))):
        warnings.append(
            "the model is random: two forward passes in eval mode differ; gradient attacks on a "
            "randomised model need expectation over transformation (EOT), or they overstate "
            "robustness"
        )
    batch = x[:256].to(device=device, dtype=dtype).requires_grad_(True)
    with _model.frozen(model), torch.enable_grad():
        out = model(batch)
        if out.requires_grad:
            loss = F.cross_entropy(out.float(), y[:256].to(device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, batch)
            flat = grad.flatten(1)
            bad = (flat == 0).all(dim=1) | ~torch.isfinite(flat).all(dim=1)
            fraction = float(bad.float().mean())
        else:
            fraction = 1.0
    if fraction > GRADIENT_FRACTION:
        warnings.append(
            f"input gradients are zero or NaN for {100 * fraction:.0f}% of samples checked: "
            "gradient attacks cannot work there (shattered or masked gradients); use BPDA or a "
            "black-box attack before trusting these numbers"
        )
    return warnings


def _standalone_accuracy(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor
) -> float:
    device = _model.device_of(model)
    result = attack.run(model, x.to(device), y.to(device))
    return float((~result.success).float().mean())


def attack_checks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, suite: Suite
) -> list[str]:
    """Checks of the attacks on a probe of correctly classified samples, each attack alone.

    Robust accuracy that rises with eps, an iterative attack that does worse than FGSM, a
    gradient-free attack (Square) that does better than every gradient attack, and accuracy above
    chance at a budget large enough to erase any input are signs that gradients mislead the
    attacks.
    """
    keep = correct.nonzero().flatten()[:PROBE]
    if len(keep) == 0:
        return []
    px, py = x[keep], y[keep]
    slack = 1.5 / len(keep)  # more than one sample
    warnings = []
    reference: dict[float, float] = {}
    white: dict[float, float] = {}  # the best gradient attack's accuracy per eps
    black: dict[float, tuple[str, float]] = {}  # the best gradient-free attack's
    for entry in suite.entries:
        previous: tuple[float, float] | None = None
        for eps in entry.eps:
            attack = dataclasses.replace(entry.attack, eps=eps)
            accuracy = _standalone_accuracy(model, attack, px, py)
            if entry.attack.gradient_free:
                if eps not in black or accuracy < black[eps][1]:
                    black[eps] = (entry.label, accuracy)
            else:
                white[eps] = min(accuracy, white.get(eps, 1.0))
            if previous is not None and accuracy > previous[1] + slack:
                warnings.append(
                    f"robust accuracy under {entry.label} rises with eps ({100 * previous[1]:.1f}% "
                    f"at eps {previous[0]:g}, {100 * accuracy:.1f}% at eps {eps:g}): the attack "
                    "is not finding examples that exist"
                )
            previous = (eps, accuracy)
            if getattr(entry.attack, "steps", 1) > 1:
                if eps not in reference:
                    fgsm = FGSM(eps=eps, norm=entry.attack.norm, bounds=entry.attack.bounds)
                    reference[eps] = _standalone_accuracy(model, fgsm, px, py)
                if accuracy > reference[eps] + slack:
                    warnings.append(
                        f"the iterative attack {entry.label} does worse than single-step FGSM at "
                        f"eps {eps:g} ({100 * accuracy:.1f}% against {100 * reference[eps]:.1f}%): "
                        "a sign of gradient masking"
                    )
    for eps, (label, accuracy) in sorted(black.items()):
        # More than 5 points (or the probe's noise): a black-box search can edge out a gradient
        # attack on a robust model by a sample or two without any masking.
        if eps in white and accuracy < white[eps] - max(slack, 0.05):
            warnings.append(
                f"the black-box attack {label} does better than every gradient attack at eps "
                f"{eps:g} ({100 * accuracy:.1f}% against {100 * white[eps]:.1f}%): the gradients "
                "mislead the white-box attacks (gradient masking); trust the lower number"
            )
    iterative = [e for e in suite.entries if isinstance(e.attack, PGD)]
    base: Attack = (
        iterative[-1].attack if iterative else PGD(eps=0.0, steps=20, bounds=suite.bounds)
    )
    low, high = base.bounds
    huge = 0.5 * (high - low) if base.norm == "linf" else (high - low) * math.sqrt(px[0].numel())
    attack = dataclasses.replace(base, eps=huge)
    if isinstance(attack, PGD):  # one start; the default step scales with the huge eps
        attack = dataclasses.replace(attack, restarts=1, step_size=None)
    accuracy = _standalone_accuracy(model, attack, px, py)
    with torch.no_grad():
        classes = model(px[:1].to(_model.device_of(model), _model.compute_dtype(model, px))).shape[
            1
        ]
    if accuracy > 1.0 / classes + slack:
        warnings.append(
            f"accuracy stays at {100 * accuracy:.1f}% under {base.name} at eps {huge:g}, a budget "
            f"that can erase any input (chance is {100 / classes:.0f}%): the attack is blocked, "
            "not the threat"
        )
    return warnings
