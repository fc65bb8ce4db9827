"""Sanity checks for the known signs of gradient masking and other overstated robustness.

Each check is one small function returning warning sentences for the report. They follow Carlini
et al. 2019 ("On Evaluating Adversarial Robustness"), Athalye et al. 2018 ("Obfuscated Gradients
Give a False Sense of Security") and Croce & Hein 2020 (AutoAttack's ``checks.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mlsec.attacks import FGSM, PGD, Attack
from mlsec.auditing.suite import Suite
from mlsec.core import model as _model
from mlsec.core.text import percent
from mlsec.core.threat import geometry

__all__ = [
    "attack_checks",
    "black_box_beats_gradients",
    "blocked_at_an_erasing_budget",
    "iterative_below_fgsm",
    "masked_gradients",
    "model_checks",
    "probability_outputs",
    "random_model",
    "rising_with_eps",
    "train_mode",
]

GRADIENT_FRACTION = 0.05  # "more than a few percent" of samples with zero or NaN gradients
PROBE = 200  # samples the attack checks use


# --- the model alone ---------------------------------------------------------------------------


def train_mode(was_training: bool) -> list[str]:
    """The model came in train mode (dropout, batch norm): the audit used eval mode."""
    if not was_training:
        return []
    return [
        "the model was handed over in train mode (dropout or batch norm active); mlsec "
        "evaluated it in eval mode: make sure that is how it is deployed"
    ]


def probability_outputs(logits: torch.Tensor) -> list[str]:
    """Rows of non-negative outputs summing to 1: softmax outputs weaken gradients."""
    sums = logits.double().sum(dim=1)
    if bool((logits >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
        return [
            "the model's outputs look like probabilities (rows sum to 1): softmax outputs "
            "weaken gradients and can overstate robustness; audit the logits instead"
        ]
    return []


def random_model(model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> list[str]:
    """Two eval-mode forward passes that differ: the attacks need EOT."""
    sample = x[:64].to(device=_model.device_of(model), dtype=_model.compute_dtype(model, x))
    with _model.frozen(model), torch.no_grad():
        again = model(sample).float().cpu()
    first = logits[: len(sample)]
    if torch.allclose(again, first, rtol=1e-4, atol=1e-4 * (1 + float(first.abs().max()))):
        return []
    return [
        "the model is random: two forward passes in eval mode differ; gradient attacks on a "
        "randomised model need expectation over transformation (EOT), or they overstate "
        "robustness"
    ]


def masked_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Input gradients that are zero or NaN for more than a few percent of samples."""
    device = _model.device_of(model)
    batch = x[:256].to(device=device, dtype=_model.compute_dtype(model, x)).requires_grad_(True)
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
    if fraction <= GRADIENT_FRACTION:
        return []
    return [
        f"input gradients are zero or NaN for {100 * fraction:.0f}% of samples checked: "
        "gradient attacks cannot work there (shattered or masked gradients); use BPDA or a "
        "black-box attack before trusting these numbers"
    ]


def model_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    logits: torch.Tensor,
    *,
    was_training: bool,
    random_by_design: bool = False,
) -> list[str]:
    """Checks of the model alone: train mode, probability outputs, randomness, gradients.

    ``random_by_design``: the model is random on purpose and every forward pass averages its own
    noise (a smoothed classifier); its randomness is not checked.
    """
    return [
        *train_mode(was_training),
        *probability_outputs(logits),
        *([] if random_by_design else random_model(model, x, logits)),
        *masked_gradients(model, x, y),
    ]


# --- the attacks, each alone on a probe ----------------------------------------------------------


@dataclass
class Probe:
    """Correctly classified samples and each attack's accuracy on them, alone, per eps."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    accuracy: dict[str, dict[float, float]] = field(default_factory=dict)
    fgsm: dict[float, float] = field(default_factory=dict)  # the FGSM reference per eps

    @property
    def slack(self) -> float:
        """More than one sample's worth of accuracy."""
        return 1.5 / len(self.y)

    def measure(self, attack: Attack) -> float:
        """Accuracy on the probe under ``attack`` alone."""
        device = _model.device_of(self.model)
        result = attack.run(self.model, self.x.to(device), self.y.to(device))
        return float((~result.success).float().mean())


def rising_with_eps(label: str, accuracy: dict[float, float], slack: float) -> list[str]:
    """Robust accuracy that rises with eps: the attack misses examples that exist."""
    warnings = []
    grid = sorted(accuracy)
    for small, large in itertools.pairwise(grid):
        if accuracy[large] > accuracy[small] + slack:
            warnings.append(
                f"robust accuracy under {label} rises with eps ({percent(accuracy[small])} "
                f"at eps {small:g}, {percent(accuracy[large])} at eps {large:g}): the attack "
                "is not finding examples that exist"
            )
    return warnings


def iterative_below_fgsm(
    probe: Probe, label: str, attack: Attack, accuracy: dict[float, float]
) -> list[str]:
    """An iterative attack that does worse than single-step FGSM at the same eps."""
    if getattr(attack, "steps", 1) <= 1:
        return []
    warnings = []
    for eps, acc in accuracy.items():
        if eps not in probe.fgsm:
            reference = FGSM(eps=eps, norm=attack.norm, bounds=attack.bounds)
            probe.fgsm[eps] = probe.measure(reference)
        fgsm = probe.fgsm[eps]
        if acc > fgsm + probe.slack:
            warnings.append(
                f"the iterative attack {label} does worse than single-step FGSM at eps {eps:g} "
                f"({percent(acc)} against {percent(fgsm)}): a sign of gradient masking"
            )
    return warnings


def black_box_beats_gradients(probe: Probe, suite: Suite) -> list[str]:
    """A gradient-free attack clearly below every gradient attack: the gradients mislead."""
    white: dict[float, float] = {}
    black: dict[float, tuple[str, float]] = {}
    for entry in suite.entries:
        for eps, acc in probe.accuracy[entry.label].items():
            if entry.attack.gradient_free:
                if eps not in black or acc < black[eps][1]:
                    black[eps] = (entry.label, acc)
            else:
                white[eps] = min(acc, white.get(eps, 1.0))
    warnings = []
    for eps, (label, acc) in sorted(black.items()):
        # More than 5 points (or the probe's noise): a black-box search can edge out a gradient
        # attack on a robust model by a sample or two without any masking.
        if eps in white and acc < white[eps] - max(probe.slack, 0.05):
            warnings.append(
                f"the black-box attack {label} does better than every gradient attack at eps "
                f"{eps:g} ({percent(acc)} against {percent(white[eps])}): the gradients "
                "mislead the white-box attacks (gradient masking); trust the lower number"
            )
    return warnings


def blocked_at_an_erasing_budget(probe: Probe, suite: Suite) -> list[str]:
    """Accuracy above chance at a budget large enough to erase any input."""
    iterative = [e for e in suite.entries if isinstance(e.attack, PGD)]
    base: Attack = (
        iterative[-1].attack if iterative else PGD(eps=0.0, steps=20, bounds=suite.bounds)
    )
    low, high = base.bounds
    huge = geometry(base.norm).erasing_eps(low, high, probe.x[0].numel())
    attack = dataclasses.replace(base, eps=huge)
    if isinstance(attack, PGD):  # one start; the default step scales with the huge eps
        attack = dataclasses.replace(attack, restarts=1, step_size=None)
    accuracy = probe.measure(attack)
    device = _model.device_of(probe.model)
    with torch.no_grad():
        first = probe.x[:1].to(device, _model.compute_dtype(probe.model, probe.x))
        classes = probe.model(first).shape[1]
    if accuracy <= 1.0 / classes + probe.slack:
        return []
    return [
        f"accuracy stays at {percent(accuracy)} under {base.name} at eps {huge:g}, a budget "
        f"that can erase any input (chance is {100 / classes:.0f}%): the attack is blocked, "
        "not the threat"
    ]


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
    probe = Probe(model, x[keep], y[keep])
    warnings = []
    for entry in suite.entries:
        accuracy = {
            eps: probe.measure(dataclasses.replace(entry.attack, eps=eps)) for eps in entry.eps
        }
        probe.accuracy[entry.label] = accuracy
        warnings += rising_with_eps(entry.label, accuracy, probe.slack)
        warnings += iterative_below_fgsm(probe, entry.label, entry.attack, accuracy)
    warnings += black_box_beats_gradients(probe, suite)
    warnings += blocked_at_an_erasing_budget(probe, suite)
    return warnings
