"""The audit report: what an audit measured, as a value that renders to JSON, Markdown, HTML, JUnit.

Robust accuracy along a chain of attacks is cumulative: the row of the k-th attack at eps is the
fraction of all samples that are classified correctly and survive attacks 1..k at every eps up to
this one. The last attack's row is therefore the per-sample worst case.

The JSON form is versioned (``schema_version``) and documented in ``docs/report-schema.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from mlsec.auditing.certified import Certification
from mlsec.auditing.checks import CheckRun
from mlsec.core.registry import Registry

__all__ = [
    "FORMATS",
    "SCHEMA_VERSION",
    "AttackOutcome",
    "AuditReport",
    "Example",
    "ThresholdResult",
]

SCHEMA_VERSION = 3


@dataclass(frozen=True, kw_only=True)
class AttackOutcome:
    """Robust accuracy after one attack of the chain at one eps.

    Attributes:
        attack: the attack's label in the suite (its registry name, made unique).
        eps: the budget.
        robust_accuracy: fraction of all samples still standing after this attack (cumulative
            over the chain and over the smaller eps).
        attacked: samples this attack actually ran on (the survivors it was handed).
        broken: samples this attack broke.
        seconds: wall-clock time this attack spent at this eps.
        params: the attack's hyperparameters except eps.

    """

    attack: str
    eps: float
    robust_accuracy: float
    attacked: int
    broken: int
    seconds: float
    params: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ThresholdResult:
    """One CI threshold and whether it held.

    ``kind == "min-accuracy"``: robust accuracy of ``attack`` at ``eps`` must be >= ``limit``.
    ``kind == "max-drop"``: clean accuracy minus that robust accuracy must be <= ``limit``.
    ``attack == "worst"`` means the per-sample worst case over the chain.
    """

    spec: str
    kind: Literal["min-accuracy", "max-drop"]
    attack: str
    eps: float
    limit: float
    value: float
    passed: bool

    @property
    def message(self) -> str:
        """One line saying what was required and what was measured."""
        subject = "the worst case" if self.attack == "worst" else self.attack
        if self.kind == "min-accuracy":
            need = f"robust accuracy of {subject} at eps {self.eps:g} >= {self.limit:.4g}"
        else:
            need = f"drop from clean accuracy of {subject} at eps {self.eps:g} <= {self.limit:.4g}"
        verdict = "holds" if self.passed else "FAILS"
        return f"{need}: measured {self.value:.4f} — {verdict}"


@dataclass(frozen=True, kw_only=True)
class Example:
    """One sample for the report's image grid: clean and adversarial input with predictions."""

    index: int
    label: int
    attack: str
    eps: float
    clean_prediction: int
    adversarial_prediction: int
    clean: torch.Tensor = field(repr=False)
    adversarial: torch.Tensor = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class AuditReport:
    """The result of :func:`mlsec.audit`.

    Attributes:
        model: name of the model.
        data: name of the data set.
        norm: the threat model's norm (``"mixed"`` if attacks differ).
        bounds: the input bounds.
        n: number of samples evaluated.
        clean_accuracy: accuracy on the unperturbed samples.
        outcomes: one :class:`AttackOutcome` per attack and eps, in the order they ran.
        worst_case: eps -> fraction of samples that survive every attack at that eps.
        warnings: signs that the evaluation may overstate robustness.
        thresholds: CI thresholds and their verdicts (empty when none were given).
        examples: a few clean and adversarial samples for the image grid.
        config: the fully resolved suite and settings, as plain data.
        environment: versions, platform and device.
        correct: bool ``[n]``, correctly classified clean samples.
        robust: ``(attack, eps)`` -> bool ``[n]``, samples standing after that attack.
        strength_note: one line when the suite is weaker than the ``standard`` suite (what it
            lacks and the command for the standard evaluation); ``None`` otherwise.
        certification: the certificates when the audit certified (a lower bound at each eps
            beside the attacks' upper bound), else ``None``.
        checks: which sanity checks ran, on how many samples, and what each cost (empty without
            sanity checks).

    """

    model: str
    data: str
    norm: str
    bounds: tuple[float, float]
    n: int
    clean_accuracy: float
    outcomes: list[AttackOutcome]
    worst_case: dict[float, float]
    warnings: list[str]
    thresholds: list[ThresholdResult]
    examples: list[Example]
    config: dict[str, Any]
    environment: dict[str, str]
    correct: torch.Tensor = field(repr=False)
    robust: dict[tuple[str, float], torch.Tensor] = field(repr=False)
    strength_note: str | None = None
    certification: Certification | None = None
    checks: list[CheckRun] = field(default_factory=list)

    @property
    def attacks(self) -> list[str]:
        """Attack labels in chain order."""
        return list(dict.fromkeys(outcome.attack for outcome in self.outcomes))

    @property
    def eps(self) -> list[float]:
        """The eps grid, ascending."""
        return sorted(self.worst_case)

    @property
    def passed(self) -> bool:
        """Whether every threshold holds (True when there are none)."""
        return all(t.passed for t in self.thresholds)

    def outcome(self, attack: str, eps: float) -> AttackOutcome:
        """The outcome of ``attack`` at ``eps``; ``KeyError`` if it did not run there."""
        for outcome in self.outcomes:
            if outcome.attack == attack and math.isclose(outcome.eps, eps):
                return outcome
        raise KeyError(f"no result for attack {attack!r} at eps {eps:g}")

    def robust_accuracy(self, attack: str, eps: float) -> float:
        """Robust accuracy after ``attack`` at ``eps``; ``attack="worst"`` gives the worst case.

        ``attack="certified"`` gives the certified accuracy of an audit that certified.
        """
        if attack == "certified" and self.certification is not None:
            return self.certification.accuracy(eps)
        if attack == "worst":
            for value, accuracy in self.worst_case.items():
                if math.isclose(value, eps):
                    return accuracy
            raise KeyError(f"no worst case at eps {eps:g}")
        return self.outcome(attack, eps).robust_accuracy

    def seconds(self, attack: str) -> float:
        """Total time spent on ``attack`` over the eps grid."""
        return sum(outcome.seconds for outcome in self.outcomes if outcome.attack == attack)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-sample masks and images, as plain JSON types."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "data": self.data,
            "norm": self.norm,
            "bounds": list(self.bounds),
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "results": [dataclasses.asdict(outcome) for outcome in self.outcomes],
            "worst_case": [
                {"eps": eps, "robust_accuracy": acc} for eps, acc in sorted(self.worst_case.items())
            ],
            "attack_seconds": {name: self.seconds(name) for name in self.attacks},
            "thresholds": [
                {**dataclasses.asdict(t), "message": t.message} for t in self.thresholds
            ],
            "passed": self.passed,
            "warnings": list(self.warnings),
            "checks": [dataclasses.asdict(run) for run in self.checks],
            "strength_note": self.strength_note,
            "certification": (None if self.certification is None else self.certification.to_dict()),
            "examples": [
                {
                    k: v
                    for k, v in dataclasses.asdict(example).items()
                    if k not in ("clean", "adversarial")
                }
                for example in self.examples
            ],
            "config": self.config,
            "environment": dict(self.environment),
        }

    def to_json(self) -> str:
        """The report as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """A Markdown summary: the table, thresholds and warnings."""
        return str(FORMATS.get("markdown")(self))

    def to_html(self, path: str | Path | None = None) -> str:
        """A self-contained HTML report; written to ``path`` when given. Returns the HTML."""
        html = str(FORMATS.get("html")(self))
        if path is not None:
            Path(path).write_text(html, encoding="utf-8")
        return html

    def to_junit(self) -> str:
        """JUnit XML with one test case per threshold."""
        return str(FORMATS.get("junit")(self))


# Report formats by name. The renderers in mlsec.reports register themselves here; ``import mlsec``
# imports them, so every report can render itself without auditing importing a layer above it.
FORMATS: Registry[Callable[[AuditReport], str]] = Registry("report format")
