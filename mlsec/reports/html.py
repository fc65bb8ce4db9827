"""The HTML report: one self-contained file to archive as a CI artifact or mail to a colleague.

Everything is inline: CSS in a ``<style>``, the plot (:mod:`mlsec.reports.plot`) and the example
images (:mod:`mlsec.reports.png`) as base64 ``data:`` URIs, no script and no external reference, so
the file opens the same offline and years later. Every user-controlled string (model, data and
attack names, warnings, settings) goes through :func:`html.escape`.
"""

from __future__ import annotations

from html import escape

import torch

from mlsec.auditing.report import FORMATS, AuditReport, Example
from mlsec.reports.labels import (
    certified_label,
    checks_line,
    eps_label,
    percent,
    requirement,
    seconds_label,
)
from mlsec.reports.page import html_page, settings_sections
from mlsec.reports.plot import WORST_CASE_COLOR, accuracy_plot
from mlsec.reports.png import png_bytes, png_data_uri

__all__ = ["REPORT_CSS", "WORST_CASE_COLOR", "png_bytes", "render_html"]

_EXAMPLE_PIXELS = 112
_NOTE_STYLE = (
    "background: #fff3cd; color: #664d03; border-left: 4px solid #ffc107;"
    " padding: 0.4rem 0.8rem; margin: 0.5rem 0;"
)

REPORT_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1c1c1c;
       margin: 2rem auto; max-width: 1100px; padding: 0 1rem; line-height: 1.4; }
h1 { margin-bottom: 0.2rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2rem; margin-top: 2rem; }
.subtitle { color: #555; margin-top: 0; font-size: 1.15rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.7rem; text-align: left; }
th { background: #eef1f4; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
#results th { background: #1b4f72; color: #ffffff; }
#results tr.worst td { font-weight: bold; background: #f6f8fa; }
#results tr.certified td { font-style: italic; color: #006d2c; }
.pass { background: #d4edda; color: #155724; font-weight: bold; }
.fail { background: #f8d7da; color: #721c24; font-weight: bold; }
.verdict { display: inline-block; padding: 0.2rem 0.8rem; border-radius: 0.3rem; }
.note { color: #555; font-size: 0.9rem; }
#accuracy-plot { display: block; max-width: 100%; height: auto; }
#examples .grid { display: flex; flex-wrap: wrap; gap: 1rem; }
figure.example { margin: 0; padding: 0.5rem; border: 1px solid #d0d7de; border-radius: 0.3rem; }
figure.example .pair { display: flex; gap: 0.4rem; }
figure.example .pair div { text-align: center; font-size: 0.8rem; color: #555; }
figure.example img { display: block; image-rendering: pixelated; border: 1px solid #999; }
figure.example figcaption { font-size: 0.85rem; margin-top: 0.3rem; }
.flipped { color: #721c24; font-weight: bold; }
pre { background: #f6f8fa; padding: 0.8rem; overflow-x: auto; border: 1px solid #d0d7de; }
"""


@FORMATS.register("html")
def render_html(report: AuditReport) -> str:
    """The report as one self-contained HTML page.

    Args:
        report: the audit to render.

    Returns:
        HTML text with the header, the accuracy-vs-eps plot (``id="accuracy-plot"``), the results
        table (``id="results"``) with the strength note under it when the report has one
        (``id="strength-note"``), thresholds, warnings, example images, settings and environment.

    """
    body = [
        *_header(report),
        '<section id="plot">',
        "<h2>Robust accuracy vs eps</h2>",
        accuracy_plot(report),
        "</section>",
        *_results(report),
        *_thresholds(report),
        *_warnings(report),
        *_examples(report),
        *settings_sections(report.config, report.environment),
    ]
    return html_page(f"mlsec audit: {report.model} on {report.data}", REPORT_CSS, body)


def _header(report: AuditReport) -> list[str]:
    low, high = report.bounds
    rows = [
        ("Model", escape(report.model)),
        ("Data", escape(report.data)),
        ("Samples", str(report.n)),
        ("Threat model", f"{escape(report.norm)}, inputs in [{low:g}, {high:g}]"),
        ("Clean accuracy", percent(report.clean_accuracy)),
    ]
    if report.eps:
        largest = report.eps[-1]
        rows.append(
            (f"Worst case at eps {eps_label(largest)}", percent(report.worst_case[largest]))
        )
    lines = [
        '<header id="summary">',
        "<h1>mlsec audit</h1>",
        f'<p class="subtitle">{escape(report.model)} on {escape(report.data)}</p>',
    ]
    if report.thresholds:
        failed = sum(not t.passed for t in report.thresholds)
        if failed:
            text = f"FAIL: {failed} of {len(report.thresholds)} thresholds fail"
        else:
            text = "PASS: every threshold holds"
        lines.append(f'<p><span class="verdict {"fail" if failed else "pass"}">{text}</span></p>')
    lines.append("<table>")
    lines += [f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows]
    lines += ["</table>", "</header>"]
    return lines


def _results(report: AuditReport) -> list[str]:
    grid = report.eps
    head = "".join(f'<th class="num">eps {eps_label(eps)}</th>' for eps in grid)
    lines = [
        '<section id="robust-accuracy">',
        "<h2>Robust accuracy</h2>",
        '<p class="note">Each row counts the samples still classified correctly after that attack'
        " and every attack above it, so the worst case equals the last row.</p>",
        '<table id="results">',
        f'<thead><tr><th>Attack</th>{head}<th class="num">Time</th></tr></thead>',
        "<tbody>",
    ]
    for attack in report.attacks:
        cells = []
        for eps in grid:
            try:
                outcome = report.outcome(attack, eps)
            except KeyError:
                cells.append('<td class="num">—</td>')
                continue
            tip = f"attacked {outcome.attacked}, broken {outcome.broken}"
            cells.append(f'<td class="num" title="{tip}">{percent(outcome.robust_accuracy)}</td>')
        lines.append(
            f"<tr><td>{escape(attack)}</td>{''.join(cells)}"
            f'<td class="num">{seconds_label(report.seconds(attack))}</td></tr>'
        )
    total = sum(report.seconds(attack) for attack in report.attacks)
    worst = "".join(f'<td class="num">{percent(report.worst_case[eps])}</td>' for eps in grid)
    lines += [
        f'<tr class="worst"><td>worst case</td>{worst}'
        f'<td class="num">{seconds_label(total)}</td></tr>',
        *_certified_row(report),
        "</tbody>",
        "</table>",
        *_strength_note(report),
        "</section>",
    ]
    return lines


def _certified_row(report: AuditReport) -> list[str]:
    """The certified accuracy (a lower bound) under the worst case, when the audit certified."""
    cert = report.certification
    if cert is None:
        return []
    cells = "".join(f'<td class="num">{percent(cert.accuracy(eps))}</td>' for eps in report.eps)
    return [
        f'<tr class="certified" title="a lower bound: provably correct within eps"><td>'
        f"certified ({certified_label(cert.method)})</td>{cells}"
        f'<td class="num">{seconds_label(cert.seconds)}</td></tr>'
    ]


def _strength_note(report: AuditReport) -> list[str]:
    """A highlighted line under the table when the suite is weaker than the standard one."""
    if report.strength_note is None:
        return []
    # Styled inline so that a report without the note keeps its page unchanged.
    return [
        f'<p id="strength-note" role="note" style="{_NOTE_STYLE}">'
        f"<strong>Note:</strong> {escape(report.strength_note)}</p>"
    ]


def _thresholds(report: AuditReport) -> list[str]:
    lines = ['<section id="thresholds">', "<h2>Thresholds</h2>"]
    if not report.thresholds:
        return [*lines, "<p>none given</p>", "</section>"]
    lines += [
        '<table id="threshold-table">',
        "<thead><tr><th>Threshold</th><th>Requirement</th>"
        '<th class="num">Measured</th><th>Result</th></tr></thead>',
        "<tbody>",
    ]
    for t in report.thresholds:
        verdict = '<td class="pass">PASS</td>' if t.passed else '<td class="fail">FAIL</td>'
        lines.append(
            f"<tr><td>{escape(t.spec)}</td><td>{escape(requirement(t))}</td>"
            f'<td class="num">{percent(t.value)}</td>{verdict}</tr>'
        )
    return [*lines, "</tbody>", "</table>", "</section>"]


def _warnings(report: AuditReport) -> list[str]:
    lines = ['<section id="warnings">', "<h2>Warnings</h2>"]
    cost = f'<p class="note" id="checks">{escape(checks_line(report.checks))}</p>'
    if not report.warnings:
        return [*lines, "<p>none</p>", cost, "</section>"]
    items = [f"<li>{escape(warning)}</li>" for warning in report.warnings]
    return [*lines, "<ul>", *items, "</ul>", cost, "</section>"]


def _examples(report: AuditReport) -> list[str]:
    lines = ['<section id="examples">', "<h2>Examples</h2>"]
    if not report.examples:
        return [*lines, "<p>none recorded</p>", "</section>"]
    lines.append('<div class="grid">')
    lines += [_example(example, report.bounds) for example in report.examples]
    return [*lines, "</div>", "</section>"]


def _example(example: Example, bounds: tuple[float, float]) -> str:
    adversarial = str(example.adversarial_prediction)
    if example.adversarial_prediction != example.label:
        adversarial = f'<span class="flipped">{adversarial}</span>'
    caption = (
        f"#{example.index} · label {example.label} · clean → {example.clean_prediction}"
        f" · adversarial → {adversarial}<br>{escape(example.attack)}, eps {eps_label(example.eps)}"
    )
    return (
        '<figure class="example"><div class="pair">'
        f"<div>{_image(example.clean, bounds, 'clean')}clean</div>"
        f"<div>{_image(example.adversarial, bounds, 'adversarial')}adversarial</div>"
        f"</div><figcaption>{caption}</figcaption></figure>"
    )


def _image(tensor: torch.Tensor, bounds: tuple[float, float], alt: str) -> str:
    height, width = tensor.shape[-2:]
    scale = max(1, round(_EXAMPLE_PIXELS / max(height, width)))
    data = png_data_uri(png_bytes(tensor, bounds, scale=scale))
    return f'<img src="{data}" alt="{alt}" width="{width * scale}" height="{height * scale}">'
