"""The terminal tables of an audit: one model's robust accuracy, or several models side by side."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlsec.auditing.plan import STANDARD_COMMAND
from mlsec.auditing.report import AuditReport
from mlsec.core.text import percent, printable
from mlsec.reports.labels import certified_label

__all__ = ["colour", "comparison_table", "print_strength_notes", "robust_cell", "robust_table"]


def colour(value: float, clean: float) -> str:
    """The colour of a robust accuracy: green above 80% of clean accuracy, red under 40%."""
    ratio = value / clean if clean > 0 else 0.0
    return "green" if ratio >= 0.8 else "yellow" if ratio >= 0.4 else "red"


def _coloured(value: float, clean: float) -> str:
    return f"[{colour(value, clean)}]{percent(value)}"


def robust_cell(report: AuditReport, attack: str, eps: float) -> str:
    """The coloured robust accuracy after ``attack`` at ``eps``, or a dash where it did not run."""
    try:
        acc = report.robust_accuracy(attack, eps)
    except KeyError:
        return "—"
    return _coloured(acc, report.clean_accuracy)


def robust_table(report: AuditReport) -> Table:
    """One model's table: a row per attack, a column per eps, the worst case last."""
    table = Table(
        title=f"Robust accuracy of {escape(printable(report.model))} on "
        f"{escape(printable(report.data))} "
        f"({report.n} samples, {report.norm})",
        caption=f"clean accuracy {percent(report.clean_accuracy)}; each row counts the samples "
        "standing after that attack and those above it",
    )
    table.add_column("attack", style="bold")
    for eps in report.eps:
        table.add_column(f"eps {eps:g}", justify="right")
    table.add_column("time", justify="right")
    for name in report.attacks:
        cells = [robust_cell(report, name, eps) for eps in report.eps]
        table.add_row(escape(name), *cells, f"{report.seconds(name):.1f} s")
    table.add_section()
    worst = [_coloured(report.worst_case[eps], report.clean_accuracy) for eps in report.eps]
    table.add_row("worst case", *worst, f"{sum(report.seconds(a) for a in report.attacks):.1f} s")
    cert = report.certification
    if cert is not None:
        cells = [f"[italic]{percent(cert.accuracy(eps))}" for eps in report.eps]
        table.add_row(
            f"certified ({certified_label(cert.method)})", *cells, f"{cert.seconds:.1f} s"
        )
        table.caption = f"{table.caption}; certified: a lower bound, provably correct within eps"
    return table


def comparison_table(reports: list[AuditReport]) -> Table:
    """One table with a column per model: clean accuracy, then each attack and eps, worst case."""
    first = reports[0]
    table = Table(
        title=f"Robust accuracy on {escape(printable(first.data))} "
        f"({first.n} samples, {first.norm})",
        caption="each attack's row counts the samples standing after it and the attacks above it",
    )
    table.add_column("attack", style="bold")
    table.add_column("eps", justify="right")
    for report in reports:
        table.add_column(escape(printable(report.model)), justify="right")
    table.add_row("clean", "", *(percent(r.clean_accuracy) for r in reports))
    for name in first.attacks:
        table.add_section()
        for eps in first.eps:
            cells = [robust_cell(report, name, eps) for report in reports]
            table.add_row(escape(name), f"{eps:g}", *cells)
    table.add_section()
    for eps in first.eps:
        worst = (_coloured(r.worst_case[eps], r.clean_accuracy) for r in reports)
        table.add_row("worst case", f"{eps:g}", *worst)
    if any(r.certification is not None for r in reports):
        table.caption = f"{table.caption}; certified: a lower bound, provably correct within eps"
        table.add_section()
        for eps in first.eps:
            certified = [
                "—"
                if r.certification is None
                else f"[italic]{percent(r.certification.accuracy(eps))}"
                for r in reports
            ]
            table.add_row("certified", f"{eps:g}", *certified)
    return table


def print_strength_notes(
    console: Console, reports: list[AuditReport], command: str | None = None
) -> None:
    """Under the table: one line when the suite was weaker than ``standard`` (once per text).

    ``command``, when given, replaces the note's generic command with this run's own.
    """
    notes = dict.fromkeys(r.strength_note for r in reports if r.strength_note)
    for note in notes:
        if command is not None:
            note = note.replace(STANDARD_COMMAND, command)
        console.print(f"[dim]note:[/] {escape(printable(note))}", highlight=False, soft_wrap=True)
