"""The defended audit's report: the side-by-side table and the three audits behind it.

A :class:`DefenseReport` holds the numbers the defended audit has always reported (one row per
attack and eps: undefended, non-adaptive, adaptive; the worst cases; the gap flags) and the full
:class:`~mlsec.auditing.report.AuditReport` of each column, so it renders to JSON, Markdown, HTML
and JUnit like a plain audit. The renderers here compose the plain report's renderers (each
column's ``to_markdown()``, ``to_html()``, ``to_junit()``), so auditing imports no layer above it.
"""

from __future__ import annotations

import dataclasses
import html
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from mlsec.auditing.report import SCHEMA_VERSION, AuditReport, ThresholdResult
from mlsec.auditing.suite import Suite
from mlsec.core.registry import Registry
from mlsec.core.text import percent

__all__ = ["COLUMNS", "DEFENDED_FORMATS", "DefenseReport", "DefenseRow"]

# The columns, in the order the table shows them, as the keys of ``DefenseReport.audits``.
COLUMNS = ("undefended", "non_adaptive", "adaptive")
_TITLES = {
    "undefended": "Undefended: the bare classifier",
    "non_adaptive": "Non-adaptive: made against the bare classifier, judged behind the defense",
    "adaptive": "Adaptive: through the defense",
}


@dataclass(frozen=True)
class DefenseRow:
    """Accuracies after one attack at one eps: bare classifier, then behind the defense."""

    attack: str
    eps: float
    undefended: float
    non_adaptive: float
    adaptive: float | None  # None: this attack is not run adaptively


@dataclass
class DefenseReport:
    """What :func:`mlsec.auditing.defended.evaluate_defense` measured.

    ``audits`` holds each column's full report (``undefended``, ``non_adaptive`` and, when an
    attack ran adaptively, ``adaptive``); ``thresholds`` the CI verdicts, judged on the adaptive
    column (see :func:`mlsec.auditing.defended.evaluate_defense`).
    """

    defense: str
    params: dict[str, Any]
    model: str
    data: str
    n: int
    clean_undefended: float
    clean_defended: float
    rows: list[DefenseRow]
    worst_non_adaptive: dict[float, float]
    worst_adaptive: dict[float, float]
    settings: dict[str, Any]
    seconds: float
    flags: list[str] = field(default_factory=list)
    thresholds: list[ThresholdResult] = field(default_factory=list)
    strength_note: str | None = None
    audits: dict[str, AuditReport] = field(default_factory=dict, repr=False)
    suite: Suite | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        """Whether every threshold holds (True when there are none)."""
        return all(t.passed for t in self.thresholds)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (eps keys as strings); see ``docs/report-schema.md``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "defense": self.defense,
            "params": self.params,
            "model": self.model,
            "data": self.data,
            "n": self.n,
            "clean_undefended": self.clean_undefended,
            "clean_defended": self.clean_defended,
            "rows": [dataclasses.asdict(row) for row in self.rows],
            "worst_non_adaptive": {f"{e:g}": acc for e, acc in self.worst_non_adaptive.items()},
            "worst_adaptive": {f"{e:g}": acc for e, acc in self.worst_adaptive.items()},
            "settings": self.settings,
            "seconds": self.seconds,
            "flags": list(self.flags),
            "thresholds": [
                {**dataclasses.asdict(t), "message": t.message} for t in self.thresholds
            ],
            "passed": self.passed,
            "strength_note": self.strength_note,
            "audits": {name: report.to_dict() for name, report in self.audits.items()},
        }

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """Markdown: the side-by-side table, then each column's audit."""
        return str(DEFENDED_FORMATS.get("markdown")(self))

    def to_html(self, path: str | Path | None = None) -> str:
        """A self-contained HTML page; written to ``path`` when given. Returns the HTML."""
        page = str(DEFENDED_FORMATS.get("html")(self))
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def to_junit(self) -> str:
        """JUnit XML: each column's test suite (the thresholds sit in the adaptive one)."""
        return str(DEFENDED_FORMATS.get("junit")(self))

    @property
    def caption(self) -> str:
        """What the columns mean, in one line."""
        return (
            "non-adaptive: made against the bare classifier, then purified; adaptive: through "
            f"the purifier ({self.settings['gradient']})"
        )

    def cells(self) -> list[tuple[str, str, str, str, str]]:
        """The table as text: clean, a row per attack and eps, the worst cases (``—``: not run)."""
        defended = percent(self.clean_defended)
        out = [("clean", "", percent(self.clean_undefended), defended, defended)]
        for row in self.rows:
            adaptive = "—" if row.adaptive is None else percent(row.adaptive)
            out.append(
                (
                    row.attack,
                    f"{row.eps:g}",
                    percent(row.undefended),
                    percent(row.non_adaptive),
                    adaptive,
                )
            )
        for eps, acc in self.worst_non_adaptive.items():
            ada = self.worst_adaptive.get(eps)
            out.append(
                ("worst case", f"{eps:g}", "", percent(acc), "—" if ada is None else percent(ada))
            )
        return out

    def table(self) -> Table:
        """A rich table: a row per attack and eps; undefended, non-adaptive, adaptive."""
        table = Table(
            title=f"{escape(self.model)} behind {escape(self.defense)} on {escape(self.data)} "
            f"({self.n} samples)",
            caption=escape(self.caption),
        )
        for name in ("attack", "eps", "undefended", "non-adaptive", "adaptive"):
            table.add_column(name, justify="left" if name == "attack" else "right")
        rows = self.cells()
        sections = {1, 1 + len(self.rows)}
        for number, (attack, eps, bare, non, ada) in enumerate(rows):
            if number in sections:
                table.add_section()
            bold = "" if ada == "—" or number == 0 else "[bold]"
            table.add_row(escape(attack), eps, bare, non, bold + ada)
        return table


# Renderers of a DefenseReport by format name, as FORMATS holds the plain report's.
DEFENDED_FORMATS: Registry[Callable[[DefenseReport], str]] = Registry("defended report format")


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


@DEFENDED_FORMATS.register("markdown")
def render_markdown(report: DefenseReport) -> str:
    """A heading, the side-by-side table, flags and thresholds, then each column's Markdown."""
    lines = [
        f"# {_md(report.model)} behind {_md(report.defense)} on {_md(report.data)}",
        "",
        f"{report.n} samples; {_md(report.caption)}.",
        "",
        "| attack | eps | undefended | non-adaptive | adaptive |",
        "|---|---:|---:|---:|---:|",
        *(f"| {' | '.join(_md(cell) for cell in row)} |" for row in report.cells()),
        "",
    ]
    lines += [f"- **warning:** {_md(flag)}" for flag in report.flags]
    lines += [f"- **{'PASS' if t.passed else 'FAIL'}** {_md(t.message)}" for t in report.thresholds]
    if report.strength_note is not None:
        lines.append(f"- **note:** {_md(report.strength_note)}")
    for name, audit in report.audits.items():
        inner = audit.to_markdown().splitlines()
        lines += ["", f"## {_TITLES[name]}", ""]
        lines += ["#" + line if line.startswith("#") else line for line in inner]
    return "\n".join(lines).rstrip() + "\n"


@DEFENDED_FORMATS.register("html")
def render_html(report: DefenseReport) -> str:
    """A page with the side-by-side table; each column's own HTML report follows in a frame."""
    title = f"{report.model} behind {report.defense} on {report.data}"
    head = "".join(
        f"<th>{name}</th>" for name in ("attack", "eps", "undefended", "non-adaptive", "adaptive")
    )
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in report.cells()
    )
    notes = [*(f"warning: {f}" for f in report.flags), *(t.message for t in report.thresholds)]
    if report.strength_note is not None:
        notes.append(f"note: {report.strength_note}")
    frames = "".join(
        f"<details><summary>{html.escape(_TITLES[name])}</summary>"
        f'<iframe title="{html.escape(name)}" srcdoc="{html.escape(audit.to_html())}" '
        'style="width:100%;height:80vh;border:0"></iframe></details>'
        for name, audit in report.audits.items()
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{report.n} samples; {html.escape(report.caption)}</p>"
        f'<table class="defended"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        + "".join(f"<p>{html.escape(note)}</p>" for note in notes)
        + frames
        + "</body></html>\n"
    )


@DEFENDED_FORMATS.register("junit")
def render_junit(report: DefenseReport) -> str:
    """One ``<testsuites>`` holding each column's ``<testsuite>``, named for its column."""
    root = ET.Element("testsuites", {"name": "mlsec defended audit"})
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for name, audit in report.audits.items():
        for suite in ET.fromstring(audit.to_junit()).iter("testsuite"):
            suite.set("name", f"{suite.get('name', '')} [{name}]")
            for key in totals:
                totals[key] += int(suite.get(key, "0"))
            root.append(suite)
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
