"""The privacy audit's report, and its CI gate: ``lira@tpr0.001=0.02`` (leak at most 0.02).

A :class:`PrivacyReport` holds one :class:`~mlsec.attacks.inference.metrics.MembershipMetrics`
per membership-inference attack on one model, with the accuracy on members and non-members (the
generalisation gap the simplest attacks exploit). It renders to JSON (``schema_version``, documented
in ``docs/privacy.md``), Markdown, HTML (with a log-log ROC plot) and JUnit through
:data:`PRIVACY_FORMATS`, which :mod:`mlsec.reports` fills.

``--fail-over ATTACK@METRIC=MAX`` fails when METRIC of ATTACK exceeds MAX. METRIC is ``auc``,
``balanced-accuracy`` or ``tprFPR`` (``tpr0.001``; ``tpr@0.001`` also reads); ATTACK is an
attack's name or ``worst`` (the largest value over the attacks).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsec.attacks.inference.metrics import MembershipMetrics
from mlsec.core.registry import Registry
from mlsec.errors import InputError

__all__ = [
    "PRIVACY_FORMATS",
    "PRIVACY_SCHEMA_VERSION",
    "LeakThreshold",
    "LeakThresholdResult",
    "PrivacyReport",
    "evaluate_leaks",
    "parse_leak_thresholds",
]

PRIVACY_SCHEMA_VERSION = 1

# ATTACK@METRIC=MAX, METRIC being auc, balanced-accuracy or tpr@FPR.
_SPEC = re.compile(
    r"^\s*([^@=,]+?)\s*@\s*(auc|balanced-accuracy|tpr@?[0-9.eE+\-]+)\s*=\s*(\S+)\s*$", re.IGNORECASE
)
_USAGE = "ATTACK@METRIC=MAX, METRIC one of auc, balanced-accuracy, tprFPR (e.g. lira@tpr0.001=0.02)"


@dataclass(frozen=True, kw_only=True)
class LeakThreshold:
    """A parsed ``--fail-over`` threshold: METRIC of ATTACK must be at most ``limit``."""

    spec: str
    attack: str
    metric: str
    limit: float

    @property
    def fpr(self) -> float | None:
        """The false-positive rate of a ``tpr@FPR`` metric, else ``None``."""
        return float(self.metric[4:]) if self.metric.startswith("tpr@") else None


@dataclass(frozen=True, kw_only=True)
class LeakThresholdResult:
    """A threshold and whether it held on one model."""

    spec: str
    attack: str
    metric: str
    limit: float
    value: float
    passed: bool

    @property
    def message(self) -> str:
        """One line saying what was required and what was measured."""
        subject = "the leakiest attack" if self.attack == "worst" else self.attack
        verdict = "holds" if self.passed else "FAILS"
        return (
            f"{self.metric} of {subject} <= {self.limit:.4g}: measured {self.value:.4f} — {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, with the message."""
        return {
            "spec": self.spec,
            "attack": self.attack,
            "metric": self.metric,
            "limit": self.limit,
            "value": self.value,
            "passed": self.passed,
            "message": self.message,
        }


def parse_leak_thresholds(texts: Iterable[str]) -> list[LeakThreshold]:
    """Parse ``--fail-over`` options (comma-separated or repeated); bad ones raise InputError.

    Example:
        >>> [t.metric for t in parse_leak_thresholds(["lira@tpr0.001=0.02,loss@AUC=0.6"])]
        ['tpr@0.001', 'auc']

    """
    parsed = []
    for text in texts:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            match = _SPEC.match(part)
            if match is None:
                raise InputError(f"{part!r} is not {_USAGE}", subject="fail_over")
            try:
                limit = float(match.group(3))
                metric = match.group(2).lower()
                fpr = float(metric[3:].lstrip("@")) if metric.startswith("tpr") else 0.5
            except ValueError:
                raise InputError(
                    f"{part!r} has a value that is not a number", subject="fail_over"
                ) from None
            if not (0.0 <= limit <= 1.0 and 0.0 < fpr < 1.0):
                raise InputError(
                    f"{part!r}: MAX must lie in [0, 1] (a fraction, not a percentage) and the FPR "
                    "in (0, 1)",
                    subject="fail_over",
                )
            if metric.startswith("tpr"):
                metric = f"tpr@{fpr:g}"
            parsed.append(
                LeakThreshold(spec=part, attack=match.group(1).lower(), metric=metric, limit=limit)
            )
    return parsed


def evaluate_leaks(
    thresholds: Sequence[LeakThreshold], results: Sequence[MembershipMetrics]
) -> list[LeakThresholdResult]:
    """Each threshold's verdict on one model's results; an unknown attack or metric is refused."""
    by_name = {r.attack: r for r in results}
    verdicts = []
    for threshold in thresholds:
        if threshold.attack == "worst":
            chosen = list(results)
        elif threshold.attack in by_name:
            chosen = [by_name[threshold.attack]]
        else:
            known = ", ".join([*by_name, "worst"])
            raise InputError(
                f"{threshold.spec!r}: no attack {threshold.attack!r} ran (ran: {known})",
                subject="fail_over",
            )
        try:
            value = max(r.value(threshold.metric) for r in chosen)
        except KeyError as error:
            raise InputError(f"{threshold.spec!r}: {error.args[0]}", subject="fail_over") from None
        verdicts.append(
            LeakThresholdResult(
                spec=threshold.spec,
                attack=threshold.attack,
                metric=threshold.metric,
                limit=threshold.limit,
                value=value,
                passed=value <= threshold.limit,
            )
        )
    return verdicts


@dataclass(frozen=True, kw_only=True)
class PrivacyReport:
    """The result of :func:`mlsec.audit_privacy` on one model.

    Attributes:
        model: the model's name.
        members: the name of the data the model was trained on (the members).
        non_members: the name of the data it never saw.
        member_accuracy: accuracy on the members (training accuracy).
        non_member_accuracy: accuracy on the non-members (held-out accuracy).
        results: one :class:`MembershipMetrics` per attack, in the order they ran.
        shadows: how LiRA's shadow models were made (count, recipe, folder, seconds, whether they
            were trained now or reused), ``None`` without LiRA.
        warnings: what could make the numbers misleading (e.g. few non-members).
        thresholds: the ``--fail-over`` verdicts (empty when none were given).
        config: the settings of the run, as plain data.
        environment: versions, platform and device.
        seconds: wall time of the whole privacy audit of this model.

    """

    model: str
    members: str
    non_members: str
    member_accuracy: float
    non_member_accuracy: float
    results: list[MembershipMetrics]
    shadows: dict[str, Any] | None
    warnings: list[str]
    thresholds: list[LeakThresholdResult]
    config: dict[str, Any]
    environment: dict[str, str]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def attacks(self) -> list[str]:
        """The attacks' names, in the order they ran."""
        return [r.attack for r in self.results]

    @property
    def passed(self) -> bool:
        """Whether every threshold holds (True when there are none)."""
        return all(t.passed for t in self.thresholds)

    @property
    def n_members(self) -> int:
        """Members scored (the most any attack used)."""
        return max((r.members for r in self.results), default=0)

    @property
    def n_non_members(self) -> int:
        """Non-members scored (the most any attack used)."""
        return max((r.non_members for r in self.results), default=0)

    def result(self, attack: str) -> MembershipMetrics:
        """The metrics of ``attack``; ``KeyError`` if it did not run."""
        for r in self.results:
            if r.attack == attack:
                return r
        raise KeyError(f"no membership attack {attack!r} ran (ran: {', '.join(self.attacks)})")

    def with_thresholds(self, thresholds: Sequence[LeakThreshold]) -> PrivacyReport:
        """The report with ``thresholds`` evaluated on it."""
        fields = {**self.__dict__, "thresholds": evaluate_leaks(thresholds, self.results)}
        return PrivacyReport(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types."""
        return {
            "schema_version": PRIVACY_SCHEMA_VERSION,
            "kind": "privacy",
            "model": self.model,
            "members": self.members,
            "non_members": self.non_members,
            "n_members": self.n_members,
            "n_non_members": self.n_non_members,
            "member_accuracy": self.member_accuracy,
            "non_member_accuracy": self.non_member_accuracy,
            "results": [r.to_dict() for r in self.results],
            "shadows": self.shadows,
            "thresholds": [t.to_dict() for t in self.thresholds],
            "passed": self.passed,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "seconds": self.seconds,
            "config": self.config,
            "environment": dict(self.environment),
        }

    def to_json(self) -> str:
        """The report as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """A Markdown summary: the metrics table, thresholds and warnings."""
        return str(PRIVACY_FORMATS.get("markdown")(self))

    def to_html(self, path: str | Path | None = None) -> str:
        """A self-contained HTML report with a log-log ROC plot; written to ``path`` when given."""
        html = str(PRIVACY_FORMATS.get("html")(self))
        if path is not None:
            Path(path).write_text(html, encoding="utf-8")
        return html

    def to_junit(self) -> str:
        """JUnit XML: one test case per threshold (one passing case without thresholds)."""
        return str(PRIVACY_FORMATS.get("junit")(self))


# Renderers by name; mlsec.reports registers them (imported by ``import mlsec``).
PRIVACY_FORMATS: Registry[Callable[[PrivacyReport], str]] = Registry("privacy report format")
