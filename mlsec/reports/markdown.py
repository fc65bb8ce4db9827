"""The Markdown summary: GitHub-flavoured, short enough for a CI job summary or a pull request.

Numbers are formatted by :mod:`mlsec.reports.labels`, as in every other form of the report.
"""

from __future__ import annotations

from mlsec.auditing.report import FORMATS, AuditReport
from mlsec.reports.labels import (
    certified_label,
    checks_line,
    eps_label,
    percent,
    requirement,
    seconds_label,
)

__all__ = ["escape", "render_markdown"]

# Characters that Markdown (or the HTML it may contain) would interpret inside a line; a backslash
# makes each literal. ``|`` would otherwise end a table cell, ``<`` start raw HTML, ``&`` an entity.
_SPECIAL = set("\\`*_[]<|&~")


def escape(text: str) -> str:
    r"""User-controlled text made literal in Markdown, on one line.

    Example:
        >>> escape("a|b <i>")
        'a\\|b \\<i>'

    """
    one_line = " ".join(str(text).split())
    return "".join("\\" + char if char in _SPECIAL else char for char in one_line)


@FORMATS.register("markdown")
def render_markdown(report: AuditReport) -> str:
    """The report as GitHub-flavoured Markdown.

    Args:
        report: the audit to summarise.

    Returns:
        A title, the model, data, sample count and clean accuracy, a table of robust accuracy per
        attack and eps with a worst-case row and the time per attack (followed by the
        strength note when the suite is weaker than the standard one), the thresholds with their
        verdicts, and the gradient-masking warnings.

    """
    lines = [f"## mlsec audit: {escape(report.model)} on {escape(report.data)}", ""]
    if report.thresholds:
        failed = sum(not t.passed for t in report.thresholds)
        verdict = (
            "**PASS**: every threshold holds"
            if failed == 0
            else f"**FAIL**: {failed} of {len(report.thresholds)} thresholds fail"
        )
        lines += [verdict, ""]
    low, high = report.bounds
    lines += [
        "| | |",
        "|---|---|",
        f"| Model | {escape(report.model)} |",
        f"| Data | {escape(report.data)} |",
        f"| Samples | {report.n} |",
        f"| Threat model | {escape(report.norm)}, inputs in [{low:g}, {high:g}] |",
        f"| Clean accuracy | {percent(report.clean_accuracy)} |",
        "",
        "### Robust accuracy",
        "",
        "Each row counts the samples still classified correctly after that attack and every attack"
        " above it, so the worst case equals the last attack's row.",
        *_certified_note(report),
        "",
        *_results_table(report),
        *_strength_note(report),
        "",
        "### Thresholds",
        "",
        *_thresholds_table(report),
        "",
        "### Warnings",
        "",
    ]
    if report.warnings:
        lines += [f"- {escape(warning)}" for warning in report.warnings]
    else:
        lines.append("none")
    lines += ["", escape(checks_line(report.checks))]
    return "\n".join(lines) + "\n"


def _results_table(report: AuditReport) -> list[str]:
    grid = report.eps
    header = ["Attack", *(f"eps {eps_label(eps)}" for eps in grid), "Time"]
    rows = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---", *("---:" for _ in grid), "---:"]) + "|",
    ]
    for attack in report.attacks:
        cells = [escape(attack)]
        for eps in grid:
            try:
                cells.append(percent(report.robust_accuracy(attack, eps)))
            except KeyError:
                cells.append("—")
        cells.append(seconds_label(report.seconds(attack)))
        rows.append("| " + " | ".join(cells) + " |")
    total = sum(report.seconds(attack) for attack in report.attacks)
    worst = [f"**{percent(report.worst_case[eps])}**" for eps in grid]
    rows.append("| " + " | ".join(["**worst case**", *worst, seconds_label(total)]) + " |")
    if report.certification is not None:
        cert = report.certification
        cells = [percent(cert.accuracy(eps)) for eps in grid]
        label = f"*certified ({escape(certified_label(cert.method))})*"
        rows.append("| " + " | ".join([label, *cells, seconds_label(cert.seconds)]) + " |")
    return rows


def _certified_note(report: AuditReport) -> list[str]:
    if report.certification is None:
        return []
    return [
        "The certified row is a lower bound: those samples are provably classified correctly "
        "within eps; the true robust accuracy lies between it and the worst case."
    ]


def _strength_note(report: AuditReport) -> list[str]:
    """A quoted line under the table when the suite is weaker than the standard one."""
    if report.strength_note is None:
        return []
    return ["", f"> **Note:** {escape(report.strength_note)}"]


def _thresholds_table(report: AuditReport) -> list[str]:
    if not report.thresholds:
        return ["none given"]
    rows = ["| Threshold | Requirement | Measured | Result |", "|:---|:---|---:|:---|"]
    for t in report.thresholds:
        verdict = "PASS" if t.passed else "**FAIL**"
        cells = [escape(t.spec), escape(requirement(t)), percent(t.value), verdict]
        rows.append("| " + " | ".join(cells) + " |")
    return rows
