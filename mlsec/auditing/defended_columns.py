"""The defended audit's columns: per-sample masks in, the table, worst cases and reports out.

Each column is a plain :class:`~mlsec.auditing.report.AuditReport` whose rows are each attack
alone: ``undefended`` (the bare classifier), ``non_adaptive`` (examples made against the bare
classifier, judged behind the defense) and ``adaptive`` (made through the defense). The worst
cases are per sample: a sample counts only if it is correct clean and under every attack of the
column; the adaptive column also takes in the non-adaptive attacks, since an attacker who knows
the defense may still use a transfer attack where that one works better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from mlsec.auditing.chain import StageResult
from mlsec.auditing.defended_report import COLUMNS, DefenseReport, DefenseRow
from mlsec.auditing.plan import Plan
from mlsec.auditing.report import AttackOutcome, AuditReport, ThresholdResult
from mlsec.auditing.run import environment
from mlsec.auditing.thresholds import evaluate
from mlsec.core.text import percent

__all__ = ["GAP", "Columns", "column_reports", "gap_flags", "worst_cases"]

# A gap between the non-adaptive and the adaptive worst case this large (accuracy, 0-1) is flagged.
GAP = 0.10

Key = tuple[str, float]


def _mean(mask: torch.Tensor) -> float:
    # float32 mean, as the defended audit has always computed its table.
    return float(mask.float().mean())


def worst_cases(
    clean: torch.Tensor, non_adaptive: Sequence[torch.Tensor], adaptive: Sequence[torch.Tensor]
) -> tuple[float, float]:
    """Per-sample worst cases from "still correct" masks: ``(non-adaptive, adaptive)``.

    A sample counts only if it is correct clean and under every attack of the column. The
    adaptive column also takes in the non-adaptive attacks: an attacker who knows the defense may
    still use a transfer attack where that one works better.

    Example:
        >>> import torch
        >>> clean = torch.tensor([True, True, True, False])
        >>> transfer = [torch.tensor([True, False, True, False])]
        >>> through = [torch.tensor([True, True, False, False])]
        >>> worst_cases(clean, transfer, through)
        (0.5, 0.25)

    """
    kept_non = _kept(clean, non_adaptive)
    return _mean(kept_non), _mean(_kept(kept_non, adaptive))


def _kept(clean: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
    kept = clean.clone()
    for mask in masks:
        kept &= mask
    return kept


@dataclass
class Columns:
    """What the defended audit measured: per column, the samples standing after each stage."""

    n: int
    adaptive: bool
    bare: torch.Tensor  # correct clean on the bare classifier
    behind: torch.Tensor  # correct clean behind the defense
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    standing: dict[str, dict[Key, torch.Tensor]] = field(
        default_factory=lambda: {name: {} for name in COLUMNS}
    )
    stages: dict[str, dict[Key, tuple[int, int, float]]] = field(
        default_factory=lambda: {name: {} for name in COLUMNS}
    )

    @property
    def clean(self) -> dict[str, torch.Tensor]:
        """Each column's clean mask."""
        return {"undefended": self.bare, "non_adaptive": self.behind, "adaptive": self.behind}

    def add(
        self, column: str, attack: str, eps: float, broken: torch.Tensor, result: StageResult
    ) -> None:
        """Record a stage: ``broken`` samples (bool ``[n]``) of ``attack`` at ``eps``."""
        clean = self.clean[column]
        self.standing[column][(attack, eps)] = clean & ~broken
        self.stages[column][(attack, eps)] = (
            result.attacked,
            int((clean & broken).sum()),
            result.seconds,
        )

    def worst(self, column: str, eps: float) -> torch.Tensor:
        """Samples standing after every attack of ``column`` (and the transfer ones) at ``eps``."""
        at = [m for (_, e), m in self.standing["non_adaptive"].items() if e == eps]
        if column == "undefended":
            return _kept(self.bare, [m for (_, e), m in self.standing[column].items() if e == eps])
        kept = _kept(self.behind, at)
        if column == "adaptive":
            kept = _kept(kept, [m for (_, e), m in self.standing[column].items() if e == eps])
        return kept


def _audit_report(
    columns: Columns, column: str, plan: Plan, model: str, data: str, config: dict[str, Any]
) -> AuditReport:
    n = columns.n
    params = {(p.label, p.eps): p.attack.params() for p in plan.stages}
    outcomes = [
        AttackOutcome(
            attack=attack,
            eps=eps,
            robust_accuracy=int(mask.sum()) / n,
            attacked=columns.stages[column][(attack, eps)][0],
            broken=columns.stages[column][(attack, eps)][1],
            seconds=columns.stages[column][(attack, eps)][2],
            params={k: v for k, v in params[(attack, eps)].items() if k != "eps"},
        )
        for (attack, eps), mask in columns.standing[column].items()
    ]
    clean = columns.clean[column]
    return AuditReport(
        model=model,
        data=data,
        norm=plan.suite.norm,
        bounds=plan.suite.bounds,
        n=n,
        clean_accuracy=int(clean.sum()) / n,
        outcomes=outcomes,
        worst_case={e: int(columns.worst(column, e).sum()) / n for e in plan.eps},
        warnings=[],
        thresholds=[],
        examples=[],
        config={**plan.config(sanity_checks=False), **config, "column": column},
        environment=environment(columns.device),
        correct=clean,
        robust=dict(columns.standing[column]),
        strength_note=plan.strength_note,
    )


def column_reports(
    columns: Columns,
    plan: Plan,
    defense: str,
    params: dict[str, Any],
    model: str,
    data: str,
    settings: dict[str, Any],
    *,
    purifier: str | None = None,
) -> DefenseReport:
    """The :class:`DefenseReport`: the table, worst cases, thresholds, flags and column reports.

    ``defense`` labels the report; the flags name the ``purifier`` (default: ``defense``).
    """
    rows = []
    for (attack, eps), mask in columns.standing["undefended"].items():
        adaptive = columns.standing["adaptive"].get((attack, eps))
        rows.append(
            DefenseRow(
                attack,
                eps,
                _mean(mask),
                _mean(columns.standing["non_adaptive"][(attack, eps)]),
                None if adaptive is None else _mean(adaptive),
            )
        )
    worst_non = {e: _mean(columns.worst("non_adaptive", e)) for e in plan.eps}
    worst_ada = {e: _mean(columns.worst("adaptive", e)) for e in plan.eps if columns.adaptive}
    behind = f"{model} behind {defense}"
    config = {"defense": defense, "each_attack_alone": True}
    audits = {
        "undefended": _audit_report(columns, "undefended", plan, model, data, config),
        "non_adaptive": _audit_report(columns, "non_adaptive", plan, behind, data, config),
    }
    if columns.adaptive:
        audits["adaptive"] = _audit_report(columns, "adaptive", plan, behind, data, config)
    report = DefenseReport(
        defense=defense,
        params=params,
        model=model,
        data=data,
        n=columns.n,
        clean_undefended=_mean(columns.bare),
        clean_defended=_mean(columns.behind),
        rows=rows,
        worst_non_adaptive=worst_non,
        worst_adaptive=worst_ada,
        settings=settings,
        seconds=0.0,
        strength_note=plan.strength_note,
        audits=audits,
        suite=plan.suite,
    )
    report.flags += gap_flags(report, purifier or defense)
    report.thresholds = _verdicts(report, plan)
    # The column to trust carries the verdicts and the flags into its own renderings.
    trusted = "adaptive" if columns.adaptive else "non_adaptive"
    audits[trusted] = replace(
        audits[trusted], thresholds=report.thresholds, warnings=list(report.flags)
    )
    return report


def _verdicts(report: DefenseReport, plan: Plan) -> list[ThresholdResult]:
    """Thresholds on the column to trust: adaptive where an attack ran adaptively, else transfer."""
    accuracy: dict[Key, float] = {}
    for row in report.rows:
        accuracy[(row.attack, row.eps)] = row.non_adaptive if row.adaptive is None else row.adaptive
    worst = report.worst_adaptive or report.worst_non_adaptive
    accuracy.update({("worst", e): acc for e, acc in worst.items()})
    return evaluate(plan.thresholds, report.clean_defended, accuracy)


def gap_flags(report: DefenseReport, purifier: str) -> list[str]:
    """A flag per eps where the adaptive worst case falls more than :data:`GAP` below the other."""
    flags = []
    for e, ada in report.worst_adaptive.items():
        non = report.worst_non_adaptive[e]
        if non - ada > GAP:
            flags.append(
                f"robustness holds only against non-adaptive attacks: at eps {e:g} the worst "
                f"case falls from {percent(non)} (attacks on the bare classifier) to "
                f"{percent(ada)} when the attack goes through {purifier}"
            )
    return flags
