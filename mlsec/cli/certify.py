"""``mlsec audit --certify ibp|smoothing``: the options, their defaults, and what they resolve to.

Certified accuracy (a lower bound) goes beside the attacks' rows. ``ibp`` certifies linf with
interval bounds; ``smoothing`` certifies l2 radii of the smoothed classifier, and the attacks then
run against that classifier too. Without ``--model`` the bundled models trained for each
certificate are audited; on the CPU, smoothing picks smaller defaults and the report says so.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from scipy import stats

from mlsec.auditing.report import AuditReport
from mlsec.auditing.suite import Suite
from mlsec.cli.common import positive_int
from mlsec.core.threat import CERTIFIED_NORMS
from mlsec.defenses.certified.smoothing import Smoothing
from mlsec.errors import InputError
from mlsec.zoo import MODELS

__all__ = [
    "CertifyPlan",
    "add_certify_options",
    "certify_plan",
    "cpu_limit",
    "default_models",
    "smoothing_suite",
    "with_notes",
]

# What a plain ``mlsec audit --certify METHOD`` audits: an attack-trained model beside one trained
# for the certificate (the gap between the rows is the point), or the smoothing model alone.
DEFAULT_MODELS = {"ibp": ("mnist-cnn-pgd", "mnist-cnn-ibp"), "smoothing": ("mnist-cnn-smooth",)}
# The l2 radii a smoothing audit reports unless --eps says otherwise (Cohen et al.'s MNIST grid).
SMOOTHING_EPS = (0.25, 0.5, 0.75)
# The paper's draws, and the smaller count (and sample count) a CPU run picks by default.
PAPER_N = 100_000
CPU_N = 1_000
CPU_LIMIT = 100


def add_certify_options(group: Any) -> None:
    """The ``certification`` argument group of ``mlsec audit``."""
    group.add_argument(
        "--certify",
        choices=sorted(CERTIFIED_NORMS),
        default=None,
        help="add certified accuracy (a lower bound) at every eps: ibp (interval bounds, linf) "
        "or smoothing (randomized smoothing, l2; attacks then target the smoothed classifier)",
    )
    group.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="smoothing: the noise level (default: the bundled model's, 0.25 for mnist-cnn-smooth)",
    )
    group.add_argument(
        "--n0", type=positive_int, default=None, help="smoothing: selection draws (default 100)"
    )
    group.add_argument(
        "--n",
        type=positive_int,
        default=None,
        help=f"smoothing: estimation draws (default {PAPER_N:,} on a GPU, {CPU_N:,} on the CPU)",
    )
    group.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="smoothing: the certificate fails with probability at most alpha (default 0.001)",
    )
    group.add_argument(
        "--noise-samples",
        type=positive_int,
        default=None,
        help="smoothing: noisy copies each attack step averages (Monte Carlo gradients; default 8)",
    )


_SMOOTHING_ONLY = ("sigma", "n0", "n", "alpha", "noise_samples")


def default_models(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The bundled models a ``--certify`` run audits without ``--model``; ``None`` without it."""
    return None if args.certify is None else DEFAULT_MODELS[args.certify]


@dataclass(frozen=True)
class CertifyPlan:
    """What ``--certify`` resolved to for one model, and the note the report carries."""

    certify: str | Smoothing | None
    noise_samples: int
    note: str | None


def certify_plan(args: argparse.Namespace, model_name: str, device: torch.device) -> CertifyPlan:
    """The certificate for ``model_name`` (a Smoothing needs its sigma), checked before any work."""
    if args.certify != "smoothing":
        for option in _SMOOTHING_ONLY:
            if getattr(args, option) is not None:
                raise InputError(f"--{option.replace('_', '-')} needs --certify smoothing")
        return CertifyPlan(args.certify, 8, None)
    sigma = args.sigma if args.sigma is not None else _bundled_sigma(model_name)
    if sigma is None:
        raise InputError(
            f"--certify smoothing needs --sigma for {model_name}: the noise level the model was "
            "trained with (e.g. --sigma 0.25)"
        )
    cpu = device.type == "cpu"
    n = args.n if args.n is not None else CPU_N if cpu else PAPER_N
    smoothing = Smoothing(
        sigma=sigma,
        n0=100 if args.n0 is None else args.n0,
        n=n,
        alpha=0.001 if args.alpha is None else args.alpha,
    )
    note = None
    if cpu and args.n is None:
        note = (
            f"randomized smoothing with n = {CPU_N:,} draws, the CPU default (Cohen et al. use "
            f"{PAPER_N:,}; give --n): radii above {_largest_radius(smoothing):.2f} cannot be "
            "certified with so few"
        )
    noise = 8 if args.noise_samples is None else args.noise_samples
    return CertifyPlan(smoothing, noise, note)


def cpu_limit(args: argparse.Namespace, device: torch.device) -> tuple[int | None, str | None]:
    """The ``--limit`` a smoothing audit on the CPU takes by default, and the note saying so."""
    if args.certify != "smoothing" or args.limit is not None or device.type != "cpu":
        return args.limit, None
    return CPU_LIMIT, (
        f"--certify smoothing on the CPU audits the first {CPU_LIMIT} samples unless --limit "
        "says otherwise (each sample costs thousands of forward passes)"
    )


def smoothing_suite(args: argparse.Namespace, suite: Suite) -> Suite:
    """With ``--certify smoothing`` and no ``--norm``/``--eps``: the l2 norm and radii grid."""
    if args.certify != "smoothing":
        return suite
    return suite.with_overrides(
        norm=CERTIFIED_NORMS["smoothing"] if args.norm is None else None,
        eps=list(SMOOTHING_EPS) if args.eps is None else None,
    )


def _bundled_sigma(model_name: str) -> float | None:
    if model_name not in MODELS:
        return None
    return MODELS.get(model_name).sigma


def _largest_radius(smoothing: Smoothing) -> float:
    """The largest radius ``n`` draws can certify: every draw votes for the class."""
    p_lower = smoothing.alpha ** (1.0 / smoothing.n)
    return float(smoothing.sigma * stats.norm.ppf(p_lower))


def with_notes(report: AuditReport, notes: list[str]) -> AuditReport:
    """``report`` with ``notes`` (what the command chose for the user) in its ``config``."""
    if not notes:
        return report
    return dataclasses.replace(report, config={**report.config, "notes": notes})
