"""CI thresholds: ``pgd@0.3=0.80`` (robust accuracy at least 0.80) and the max-drop form.

``--fail-under ATTACK@EPS=MIN`` requires robust accuracy after ATTACK at EPS of at least MIN;
``--max-drop ATTACK@EPS=DROP`` requires clean accuracy minus that robust accuracy of at most DROP.
ATTACK is an attack's label in the suite, ``worst`` for the per-sample worst case, or ``certified``
for the certified accuracy of an audit that certifies (a lower bound). Several
thresholds may be given, separated by commas or by repeating the option.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from mlsec.auditing.report import ThresholdResult
from mlsec.auditing.suite import Suite
from mlsec.errors import InputError

__all__ = ["Threshold", "evaluate", "parse_thresholds"]

# ATTACK is any suite label (anything but "@", "=" and ","), EPS may be a fraction such as 8/255.
_SPEC = re.compile(r"^\s*([^@=,]+?)\s*@\s*([0-9.eE+\-/]+)\s*=\s*([0-9.eE+\-]+)\s*$")


@dataclass(frozen=True, kw_only=True)
class Threshold:
    """A parsed threshold."""

    spec: str
    kind: Literal["min-accuracy", "max-drop"]
    attack: str
    eps: float
    limit: float


def _number(text: str) -> float:
    if "/" in text:
        top, _, bottom = text.partition("/")
        return float(top) / float(bottom)
    return float(text)


def parse_thresholds(
    texts: Iterable[str], kind: Literal["min-accuracy", "max-drop"]
) -> list[Threshold]:
    """Parse threshold options; bad syntax or values raise :class:`InputError`."""
    option = "fail_under" if kind == "min-accuracy" else "max_drop"
    parsed = []
    for text in texts:
        for part in (p for p in text.split(",") if p.strip()):
            match = _SPEC.match(part)
            if match is None:
                raise InputError(
                    f"{part.strip()!r} is not ATTACK@EPS=VALUE (e.g. pgd@0.3=0.80)", subject=option
                )
            try:
                eps, limit = _number(match.group(2)), float(match.group(3))
            except (ValueError, ZeroDivisionError):
                raise InputError(
                    f"{part.strip()!r} has a value that is not a number", subject=option
                ) from None
            if not 0.0 <= limit <= 1.0 or not math.isfinite(eps) or eps < 0:
                raise InputError(
                    f"{part.strip()!r}: the value must lie in [0, 1] (a fraction, "
                    "not a percentage) and eps must be >= 0",
                    subject=option,
                )
            parsed.append(
                Threshold(spec=part.strip(), kind=kind, attack=match.group(1), eps=eps, limit=limit)
            )
    return parsed


def check_against(
    thresholds: Iterable[Threshold], suite: Suite, *, rows: tuple[str, ...] = ("worst",)
) -> None:
    """Refuse thresholds naming an attack or eps the suite does not run (before any work).

    ``rows``: the rows beside the attacks' that a threshold may name (``worst``, and
    ``certified`` when the audit certifies); they run at every eps of the suite.
    """
    labels = [entry.label for entry in suite.entries]
    for t in thresholds:
        if t.attack not in rows and t.attack not in labels:
            raise InputError(
                f"threshold {t.spec!r}: no attack {t.attack!r} in the suite; "
                f"use one of {', '.join([*labels, *rows])}"
            )
        grid = (
            suite.eps
            if t.attack in rows
            else next(list(e.eps) for e in suite.entries if e.label == t.attack)
        )
        if not any(math.isclose(t.eps, value) for value in grid):
            raise InputError(
                f"threshold {t.spec!r}: {t.attack} does not run at eps {t.eps:g} "
                f"(its grid: {', '.join(f'{v:g}' for v in grid)})"
            )


def evaluate(
    thresholds: Iterable[Threshold], clean_accuracy: float, accuracy: dict[tuple[str, float], float]
) -> list[ThresholdResult]:
    """Verdicts of ``thresholds`` given ``accuracy[(attack, eps)]`` (``attack`` may be "worst")."""
    results = []
    for t in thresholds:
        value = next(
            acc
            for (name, eps), acc in accuracy.items()
            if name == t.attack and math.isclose(eps, t.eps)
        )
        if t.kind == "max-drop":
            value = clean_accuracy - value
            passed = value <= t.limit + 1e-12
        else:
            passed = value >= t.limit - 1e-12
        results.append(
            ThresholdResult(
                spec=t.spec,
                kind=t.kind,
                attack=t.attack,
                eps=t.eps,
                limit=t.limit,
                value=value,
                passed=passed,
            )
        )
    return results
