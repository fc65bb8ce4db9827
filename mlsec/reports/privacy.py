"""Renderers of the privacy report: Markdown, self-contained HTML with a log-log ROC, JUnit XML.

Registered in :data:`mlsec.auditing.privacy_report.PRIVACY_FORMATS`, so a
:class:`~mlsec.auditing.privacy_report.PrivacyReport` renders itself (``to_markdown``, ``to_html``,
``to_junit``). Numbers are formatted by :mod:`mlsec.reports.labels`, as in the audit's reports.
"""

from __future__ import annotations

from html import escape

from mlsec.attacks.inference.metrics import MembershipMetrics
from mlsec.auditing.privacy_report import PRIVACY_FORMATS, PrivacyReport
from mlsec.reports.html import REPORT_CSS
from mlsec.reports.labels import percent, seconds_label
from mlsec.reports.markdown import escape as md_escape
from mlsec.reports.page import TestCase, html_page, junit_document, settings_sections
from mlsec.reports.roc_plot import roc_plot

__all__ = [
    "fpr_label",
    "metric_columns",
    "render_privacy_html",
    "render_privacy_junit",
    "render_privacy_markdown",
]

_EXPLAINED = (
    "Scores near chance are AUC 50% and balanced accuracy 50%; the TPR at a low FPR is the share "
    "of members an attack identifies while wrongly accusing that share of non-members (Carlini et "
    "al. 2022). Higher is a larger leak."
)


def fpr_label(fpr: float) -> str:
    """A false-positive rate as a percentage without trailing zeros.

    Example:
        >>> fpr_label(0.001), fpr_label(0.01), fpr_label(0.00025)
        ('0.1%', '1%', '0.025%')

    """
    return f"{fpr * 100:.6g}%"


def metric_columns(report: PrivacyReport) -> list[tuple[str, str]]:
    """The metric columns of the results table: ``(metric, heading)``, a TPR at each FPR."""
    fprs = list(dict.fromkeys(f for r in report.results for f in r.tpr_at_fpr))
    return [
        ("auc", "AUC"),
        ("balanced-accuracy", "balanced accuracy"),
        *[(f"tpr@{f:g}", f"TPR at {fpr_label(f)} FPR") for f in fprs],
    ]


def _cell(result: MembershipMetrics, metric: str) -> str:
    try:
        return percent(result.value(metric))
    except KeyError:
        return "—"


def _verdict(report: PrivacyReport) -> str | None:
    if not report.thresholds:
        return None
    failed = sum(not t.passed for t in report.thresholds)
    if failed:
        return f"FAIL: {failed} of {len(report.thresholds)} thresholds fail"
    return "PASS: every threshold holds"


def _facts(report: PrivacyReport) -> list[tuple[str, str]]:
    facts = [
        ("Model", report.model),
        ("Members", f"{report.members} ({report.n_members:,} samples)"),
        ("Non-members", f"{report.non_members} ({report.n_non_members:,} samples)"),
        ("Accuracy on members", percent(report.member_accuracy)),
        ("Accuracy on non-members", percent(report.non_member_accuracy)),
        ("Lowest measurable FPR", fpr_label(1.0 / max(report.n_non_members, 1))),
    ]
    if report.shadows is not None:
        shadows = report.shadows
        facts.append(
            (
                "Shadow models (LiRA)",
                f"{shadows.get('count')} x {shadows.get('arch')}, {shadows.get('method')}; "
                f"trained now {shadows.get('trained')}, reused {shadows.get('reused')}",
            )
        )
    return facts


@PRIVACY_FORMATS.register("markdown")
def render_privacy_markdown(report: PrivacyReport) -> str:
    """The privacy report as GitHub-flavoured Markdown: facts, the metrics table, the verdicts."""
    lines = [f"## mlsec privacy audit: {md_escape(report.model)}", ""]
    verdict = _verdict(report)
    if verdict is not None:
        head, _, rest = verdict.partition(":")
        lines += [f"**{head}**:{rest}", ""]
    lines += [f"- {name}: {md_escape(value)}" for name, value in _facts(report)]
    columns = metric_columns(report)
    lines += [
        "",
        "| attack | " + " | ".join(heading for _, heading in columns) + " | time |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for result in report.results:
        cells = " | ".join(_cell(result, metric) for metric, _ in columns)
        lines.append(f"| {md_escape(result.attack)} | {cells} | {seconds_label(result.seconds)} |")
    lines += ["", _EXPLAINED]
    for result in report.results:
        lines += [f"- {md_escape(result.attack)}: {md_escape(note)}" for note in result.notes]
    if report.thresholds:
        lines += ["", "### Thresholds", ""]
        for t in report.thresholds:
            mark = "PASS" if t.passed else "FAIL"
            lines.append(f"- **{mark}** `{md_escape(t.spec)}`: {md_escape(t.message)}")
    if report.warnings:
        lines += ["", "### Warnings", ""]
        lines += [f"- {md_escape(warning)}" for warning in report.warnings]
    return "\n".join(lines) + "\n"


@PRIVACY_FORMATS.register("html")
def render_privacy_html(report: PrivacyReport) -> str:
    """The privacy report as one self-contained HTML page.

    Returns:
        HTML with the facts (``id="summary"``), the log-log ROC plot (``id="roc-plot"``), the
        metrics table (``id="results"``), thresholds, warnings, settings and environment.

    """
    verdict = _verdict(report)
    rows = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>"
        for name, value in _facts(report)
    )
    body = [
        '<header id="summary">',
        "<h1>mlsec privacy audit</h1>",
        f'<p class="subtitle">{escape(report.model)}: membership inference</p>',
    ]
    if verdict is not None:
        kind = "fail" if verdict.startswith("FAIL") else "pass"
        body.append(f'<p><span class="verdict {kind}">{escape(verdict)}</span></p>')
    body += [
        f"<table>{rows}</table>",
        "</header>",
        *_html_results(report),
        '<section id="roc">',
        "<h2>ROC, log-log</h2>",
        roc_plot(report.results),
        "</section>",
        *_html_thresholds(report),
        *_html_list("warnings", "Warnings", report.warnings),
        *settings_sections(report.config, report.environment),
    ]
    return html_page(f"mlsec privacy audit: {report.model}", REPORT_CSS, body)


def _html_results(report: PrivacyReport) -> list[str]:
    columns = metric_columns(report)
    head = "".join(f'<th class="num">{escape(heading)}</th>' for _, heading in columns)
    lines = [
        '<section id="membership">',
        "<h2>Membership inference</h2>",
        f'<p class="note">{escape(_EXPLAINED)}</p>',
        '<table id="results">',
        f'<thead><tr><th>Attack</th>{head}<th class="num">Time</th></tr></thead>',
        "<tbody>",
    ]
    for result in report.results:
        cells = "".join(f'<td class="num">{_cell(result, metric)}</td>' for metric, _ in columns)
        tip = f"{result.members} members, {result.non_members} non-members"
        lines.append(
            f'<tr title="{escape(tip)}"><td>{escape(result.attack)}</td>{cells}'
            f'<td class="num">{seconds_label(result.seconds)}</td></tr>'
        )
    lines += ["</tbody>", "</table>"]
    notes = [f"{r.attack}: {note}" for r in report.results for note in r.notes]
    lines += [f'<p class="note">{escape(note)}</p>' for note in notes]
    return [*lines, "</section>"]


def _html_thresholds(report: PrivacyReport) -> list[str]:
    lines = ['<section id="thresholds">', "<h2>Thresholds</h2>"]
    if not report.thresholds:
        return [*lines, "<p>none given</p>", "</section>"]
    lines += [
        '<table id="threshold-table">',
        '<thead><tr><th>Threshold</th><th class="num">Measured</th><th>Result</th></tr></thead>',
        "<tbody>",
    ]
    for t in report.thresholds:
        verdict = '<td class="pass">PASS</td>' if t.passed else '<td class="fail">FAIL</td>'
        lines.append(
            f'<tr><td>{escape(t.spec)}</td><td class="num">{percent(t.value)}</td>{verdict}</tr>'
        )
    return [*lines, "</tbody>", "</table>", "</section>"]


def _html_list(ident: str, title: str, items: list[str]) -> list[str]:
    lines = [f'<section id="{ident}">', f"<h2>{title}</h2>"]
    if not items:
        return [*lines, "<p>none</p>", "</section>"]
    return [*lines, "<ul>", *[f"<li>{escape(item)}</li>" for item in items], "</ul>", "</section>"]


@PRIVACY_FORMATS.register("junit")
def render_privacy_junit(report: PrivacyReport) -> str:
    """JUnit XML: one test case per threshold, the metrics as properties, Markdown as output."""
    facts = {
        "model": report.model,
        "members": str(report.n_members),
        "non_members": str(report.n_non_members),
        "member_accuracy": f"{report.member_accuracy:.6f}",
        "non_member_accuracy": f"{report.non_member_accuracy:.6f}",
    }
    for result in report.results:
        for metric, _ in metric_columns(report):
            try:
                facts[f"{result.attack}@{metric}"] = f"{result.value(metric):.6f}"
            except KeyError:
                continue
    cases = [TestCase(t.spec, None if t.passed else t.message) for t in report.thresholds] or [
        TestCase("privacy audit completed")
    ]
    return junit_document(
        f"mlsec privacy audit: {report.model}",
        classname="mlsec.privacy",
        seconds=report.seconds,
        properties=facts,
        cases=cases,
        failure_type="ThresholdFailed",
        system_out=render_privacy_markdown(report),
    )
