"""How well membership scores separate members from non-members, as the field reports it.

Carlini et al. (2022) argue that an attack's average success (accuracy, AUC) hides what matters
for privacy: whether it identifies *some* members with near certainty. So besides the ROC AUC and
the balanced accuracy this reports the true-positive rate at a low false-positive rate (0.1% and 1%
by default), and the lowest false-positive rate the non-members can measure at all (one false
positive among them): a TPR at an FPR below that would be a guess, and is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from mlsec.errors import InputError

__all__ = ["DEFAULT_FPRS", "MembershipMetrics", "check_fprs", "membership_metrics", "roc_curve"]

# The false-positive rates a membership audit reports a true-positive rate at.
DEFAULT_FPRS = (0.001, 0.01)
# Points of the ROC curve a report keeps (log-spaced in FPR, so the low-FPR end is not lost).
ROC_POINTS = 120


@dataclass(frozen=True, kw_only=True)
class MembershipMetrics:
    """One membership-inference attack's success on one model.

    Attributes:
        attack: the attack's name (``loss``, ``confidence``, ``entropy``, ``art-blackbox``,
            ``lira``).
        auc: area under the ROC curve (0.5: no better than a coin).
        balanced_accuracy: the best mean of TPR and TNR over all thresholds.
        tpr_at_fpr: false-positive rate -> the highest true-positive rate at or below it.
        members: members the attack was scored on.
        non_members: non-members the attack was scored on; ``1 / non_members`` is the lowest FPR
            that can be measured.
        roc: ``(fpr, tpr)``, the ROC curve thinned to at most about 120 points, log-spaced in FPR.
        seconds: wall time of the attack (shadow training excluded).
        notes: what the reader should know about this attack's numbers (e.g. scored on a half).

    """

    attack: str
    auc: float
    balanced_accuracy: float
    tpr_at_fpr: dict[float, float]
    members: int
    non_members: int
    roc: tuple[list[float], list[float]] = field(repr=False)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def lowest_fpr(self) -> float:
        """The lowest false-positive rate the non-members can measure: one false positive."""
        return 1.0 / self.non_members

    def value(self, metric: str) -> float:
        """``auc``, ``balanced-accuracy`` or ``tpr@F`` (F a reported FPR, e.g. ``tpr@0.001``).

        Example:
            >>> m = membership_metrics("loss", [3.0, 2.0, 0.5], [1.0, 0.0, -1.0, 0.4], [0.25])
            >>> round(m.value("auc"), 4), m.value("tpr@0.25")
            (0.9167, 1.0)

        """
        if metric == "auc":
            return self.auc
        if metric == "balanced-accuracy":
            return self.balanced_accuracy
        if metric.startswith("tpr@"):
            fpr = _parse_fpr(metric[4:])
            for known, tpr in self.tpr_at_fpr.items():
                if math.isclose(known, fpr, rel_tol=1e-9):
                    return tpr
            reported = ", ".join(f"tpr@{f:g}" for f in self.tpr_at_fpr)
            raise KeyError(f"{metric} was not measured (measured: {reported})")
        raise KeyError(f"unknown metric {metric!r}; use auc, balanced-accuracy or tpr@FPR")

    def standard_error(self, metric: str) -> float:
        """An approximate standard error of :meth:`value` from the sample counts.

        AUC: Hanley & McNeil (1982). TPR at an FPR: binomial over the members (the threshold's
        own noise is left out, so it is a lower estimate). Balanced accuracy: binomial over both
        sets at the best threshold. Two models differ by a metric only when the gap exceeds about
        twice the combined error.

        Example:
            >>> m = membership_metrics("loss", [3.0, 2.0, 0.5], [1.0, 0.0, -1.0, 0.4], [0.25])
            >>> round(m.standard_error("auc"), 3)
            0.128

        """
        value, m, n = self.value(metric), self.members, self.non_members
        if metric == "auc":
            q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
            var = value * (1 - value) + (m - 1) * (q1 - value**2) + (n - 1) * (q2 - value**2)
            return math.sqrt(max(var, 0.0) / (m * n))
        if metric == "balanced-accuracy":
            return math.sqrt(value * (1 - value) * (1 / m + 1 / n) / 2)
        return math.sqrt(value * (1 - value) / m)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; ``tpr_at_fpr`` as a list of ``{fpr, tpr}``."""
        return {
            "attack": self.attack,
            "auc": self.auc,
            "balanced_accuracy": self.balanced_accuracy,
            "tpr_at_fpr": [{"fpr": f, "tpr": t} for f, t in self.tpr_at_fpr.items()],
            "members": self.members,
            "non_members": self.non_members,
            "lowest_fpr": self.lowest_fpr,
            "roc": {"fpr": list(self.roc[0]), "tpr": list(self.roc[1])},
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


def _parse_fpr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise KeyError(f"false-positive rate {text!r} is not a number") from None
    return value


def check_fprs(fprs: Sequence[float], non_members: int) -> tuple[float, ...]:
    """The false-positive rates, sorted, each in (0, 1) and measurable with ``non_members``.

    Example:
        >>> check_fprs([0.01, 0.001], 2000)
        (0.001, 0.01)

    """
    if non_members < 1:
        raise InputError("membership inference needs at least one non-member")
    checked = []
    for fpr in fprs:
        if not (isinstance(fpr, int | float) and 0.0 < fpr < 1.0):
            raise InputError(f"false-positive rates must lie in (0, 1) (got {fpr!r})")
        if fpr * non_members < 1.0 - 1e-9:
            need = math.ceil(1.0 / fpr - 1e-9)
            raise InputError(
                f"a TPR at FPR {fpr:g} needs at least {need:,} non-members (have "
                f"{non_members:,}): with fewer, one false positive is already a larger FPR; "
                "give more non-members or ask for a larger FPR"
            )
        checked.append(float(fpr))
    return tuple(sorted(set(checked)))


def roc_curve(members: Any, non_members: Any) -> tuple[np.ndarray, np.ndarray]:
    """The full ROC curve of scores (higher: more likely a member): ``(fpr, tpr)``, from (0, 0).

    One point per distinct score, thresholds descending: a sample is called a member when its
    score is at least the threshold.

    Example:
        >>> fpr, tpr = roc_curve([3.0, 2.0], [1.0, 2.0])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])

    """
    m, n = _scores(members, "members"), _scores(non_members, "non-members")
    scores = np.concatenate([m, n])
    is_member = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    # The last index of each run of equal scores: a threshold admits a whole run or none of it.
    ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    tp = np.cumsum(is_member)[ends]
    fp = (ends + 1) - tp
    return np.r_[0.0, fp / len(n)], np.r_[0.0, tp / len(m)]


def membership_metrics(
    attack: str,
    members: Any,
    non_members: Any,
    fprs: Sequence[float] = DEFAULT_FPRS,
    *,
    seconds: float = 0.0,
    notes: Sequence[str] = (),
) -> MembershipMetrics:
    """Score an attack: its scores on members and on non-members (higher: more likely a member).

    Args:
        attack: the attack's name, for the report.
        members: one score per member (a tensor or array).
        non_members: one score per non-member.
        fprs: the false-positive rates to report a TPR at; each must be measurable
            (:func:`check_fprs`).
        seconds: the attack's wall time, for the report.
        notes: lines the report shows beside the numbers.

    Example:
        >>> m = membership_metrics("loss", [3.0, 2.0, 0.5], [1.0, 0.0, -1.0, 0.4], fprs=[0.25])
        >>> round(m.auc, 4), m.balanced_accuracy, m.tpr_at_fpr
        (0.9167, 0.875, {0.25: 1.0})

    """
    m, n = _scores(members, "members"), _scores(non_members, "non-members")
    if len(m) == 0:
        raise InputError("membership inference needs at least one member")
    fprs = check_fprs(fprs, len(n))
    ranks = stats.rankdata(np.concatenate([m, n]))  # ties share their mean rank: AUC counts 1/2
    auc = (ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2) / (len(m) * len(n))
    fpr, tpr = roc_curve(m, n)
    balanced = float(np.max((tpr + 1.0 - fpr) / 2.0))
    tpr_at = {f: float(tpr[fpr <= f + 1e-12].max()) for f in fprs}
    return MembershipMetrics(
        attack=attack,
        auc=float(auc),
        balanced_accuracy=balanced,
        tpr_at_fpr=tpr_at,
        members=len(m),
        non_members=len(n),
        roc=_thin(fpr, tpr, len(n)),
        seconds=seconds,
        notes=list(notes),
    )


def _scores(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(array).all():
        raise InputError(f"membership scores of the {what} contain NaN or infinity")
    return array


def _thin(fpr: np.ndarray, tpr: np.ndarray, non_members: int) -> tuple[list[float], list[float]]:
    """At most about ROC_POINTS points: the best TPR at log-spaced FPRs from 1/n to 1."""
    grid = np.unique(np.r_[0.0, np.geomspace(1.0 / non_members, 1.0, ROC_POINTS - 1)])
    # The highest TPR at or below each grid FPR (fpr is non-decreasing, tpr with it).
    at = np.searchsorted(fpr, grid + 1e-12, side="right") - 1
    return [float(f) for f in grid], [float(t) for t in tpr[at]]
