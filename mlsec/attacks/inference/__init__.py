"""Membership inference: does a model give away which samples it was trained on."""

from mlsec.attacks.inference.art_blackbox import art_blackbox, balanced_halves
from mlsec.attacks.inference.lira import lira_offline
from mlsec.attacks.inference.metrics import (
    DEFAULT_FPRS,
    MembershipMetrics,
    check_fprs,
    membership_metrics,
    roc_curve,
)
from mlsec.attacks.inference.scores import (
    SCORES,
    confidence,
    entropy,
    logit_scaled,
    logits_of,
    loss,
)

__all__ = [
    "DEFAULT_FPRS",
    "SCORES",
    "MembershipMetrics",
    "art_blackbox",
    "balanced_halves",
    "check_fprs",
    "confidence",
    "entropy",
    "lira_offline",
    "logit_scaled",
    "logits_of",
    "loss",
    "membership_metrics",
    "roc_curve",
]
