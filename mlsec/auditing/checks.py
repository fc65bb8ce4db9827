"""Sanity checks of the model alone, for the known signs of gradient masking.

Each check is one small function returning warning sentences for the report. They follow Carlini
et al. 2019 ("On Evaluating Adversarial Robustness"), Athalye et al. 2018 ("Obfuscated Gradients
Give a False Sense of Security") and Croce & Hein 2020 (AutoAttack's ``checks.py``). They read the
clean pass's logits and run at most one forward pass (randomness) and one backward pass
(gradients) on a few hundred samples; the checks of the attacks read the survivors chain
(:mod:`~mlsec.auditing.chain_checks`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlsec.core import model as _model

__all__ = [
    "CheckRun",
    "masked_gradients",
    "model_checks",
    "probability_outputs",
    "random_model",
    "train_mode",
]

GRADIENT_FRACTION = 0.05  # "more than a few percent" of samples with zero or NaN gradients
RANDOM_PROBE = 64  # samples passed again to see whether the model is random
GRADIENT_PROBE = 256  # samples whose input gradients are checked


@dataclass(frozen=True)
class CheckRun:
    """What one check cost.

    Attributes:
        check: its name.
        samples: samples it ran the model or an attack on (0: it only read what the audit had).
        seconds: wall-clock time.
        source: ``"clean pass"`` or ``"chain"`` (it only read those), or ``"probe"`` (it ran
            the model or an attack on ``samples`` samples).

    """

    check: str
    samples: int
    seconds: float
    source: str


def timed(
    runs: list[CheckRun], check: str, source: str, work: Callable[[], tuple[list[str], int]]
) -> list[str]:
    """Run ``work`` (returning its warnings and the samples it ran on), recording its cost."""
    begin = time.perf_counter()
    warnings, samples = work()
    runs.append(CheckRun(check, samples, time.perf_counter() - begin, source))
    return warnings


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
    device, dtype = _model.device_of(model), _model.compute_dtype(model, x)
    sample = x[:RANDOM_PROBE].to(device=device, dtype=dtype)
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
    batch = x[:GRADIENT_PROBE].to(device=device, dtype=_model.compute_dtype(model, x))
    batch.requires_grad_(True)
    with _model.frozen(model), torch.enable_grad():
        out = model(batch)
        if out.requires_grad:
            loss = F.cross_entropy(out.float(), y[:GRADIENT_PROBE].to(device), reduction="sum")
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
    runs: list[CheckRun] | None = None,
) -> list[str]:
    """Checks of the model alone: train mode, probability outputs, randomness, gradients.

    ``random_by_design``: the model is random on purpose and every forward pass averages its own
    noise (a smoothed classifier); its randomness is not checked. ``runs`` collects each check's
    cost.
    """
    runs = [] if runs is None else runs
    sample = min(len(x), RANDOM_PROBE)
    warnings = timed(runs, "train mode", "clean pass", lambda: (train_mode(was_training), 0))
    warnings += timed(
        runs, "probability outputs", "clean pass", lambda: (probability_outputs(logits), 0)
    )
    if not random_by_design:
        warnings += timed(
            runs, "random model", "probe", lambda: (random_model(model, x, logits), sample)
        )
    gradients = min(len(x), GRADIENT_PROBE)
    warnings += timed(
        runs, "zero or NaN gradients", "probe", lambda: (masked_gradients(model, x, y), gradients)
    )
    return warnings
