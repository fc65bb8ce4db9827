"""Renderers of a backdoor scan (:class:`~mlsec.auditing.scan.ScanReport`): Markdown, HTML, JUnit.

They follow the audit's renderers: GitHub-flavoured Markdown with user text escaped, one
self-contained HTML page (inline CSS, the reversed masks and triggers as PNG ``data:`` URIs, no
script, no external reference, every user-controlled string through :func:`html.escape`), and JUnit
XML with one test case per class that fails when the class is flagged.
"""

from __future__ import annotations

from html import escape as html_escape

import torch

from mlsec.auditing.scan import SCAN_FORMATS, ClassScan, ScanReport
from mlsec.reports.html import REPORT_CSS
from mlsec.reports.labels import percent, seconds_label
from mlsec.reports.markdown import escape
from mlsec.reports.page import TestCase, html_page, junit_document, settings_sections
from mlsec.reports.png import png_bytes, png_data_uri

__all__ = ["render_scan_html", "render_scan_junit", "render_scan_markdown"]

_IMAGE_PIXELS = 84
_SCAN_CSS = """
#classes tr.flagged td { background: #f8d7da; color: #721c24; font-weight: bold; }
.triggers { display: flex; flex-wrap: wrap; gap: 0.8rem; }
figure.trigger { margin: 0; padding: 0.4rem; border: 1px solid #d0d7de; border-radius: 0.3rem; }
figure.trigger.flagged { border: 2px solid #c0392b; background: #fdf2f2; }
figure.trigger .pair { display: flex; gap: 0.3rem; }
figure.trigger .frame { position: relative; }
figure.trigger img { display: block; image-rendering: pixelated; border: 1px solid #999; }
figure.trigger .patch { position: absolute; border: 2px solid #e74c3c; box-sizing: border-box; }
figure.trigger figcaption { font-size: 0.85rem; margin-top: 0.3rem; text-align: center; }
"""


def _verdict(report: ScanReport) -> str:
    if report.passed:
        return "PASS: no class flagged as a backdoor target"
    listed = ", ".join(str(k) for k in report.flagged_classes)
    return (
        f"FAIL: backdoor suspected, class{'es' if len(report.flagged_classes) > 1 else ''} {listed}"
    )


def _iou(result: ClassScan) -> str:
    return "—" if result.iou is None else f"{result.iou:.2f}"


@SCAN_FORMATS.register("markdown")
def render_scan_markdown(report: ScanReport) -> str:
    """The scan as GitHub-flavoured Markdown: verdict, per-class table, detectors.

    Args:
        report: the scan to summarise.

    Returns:
        A title, the verdict, the model, data and sample count, a table per class (mask L1,
        anomaly index, attack success, IoU with the true patch when known, flagged) and ART's
        detectors' findings when they ran.

    """
    lines = [f"## mlsec scan: {escape(report.model)} on {escape(report.data)}", ""]
    lines += [f"**{_verdict(report).replace(': ', '**: ', 1)}", ""]
    lines += [
        f"Neural Cleanse on {report.n} clean samples, anomaly threshold "
        f"{report.config.get('anomaly_threshold', 2.0):g}, in {seconds_label(report.seconds)}.",
        "",
        "| Class | Mask L1 | Anomaly index | Attack success | IoU | Flagged |",
        "|---:|---:|---:|---:|---:|:---|",
    ]
    for r in report.classes:
        lines.append(
            f"| {r.label} | {r.l1:.1f} | {r.anomaly_index:.2f} | {percent(r.attack_success)} | "
            f"{_iou(r)} | {'**yes**' if r.flagged else 'no'} |"
        )
    if report.trigger is not None:
        t = report.trigger
        lines += [
            "",
            f"True trigger: target {t['target']}, {t['height']}x{t['width']} patch at row "
            f"{t['top']}, column {t['left']}.",
        ]
    for found in report.detectors:
        suspects = ", ".join(str(k) for k in found["suspect_classes"]) or "none"
        lines += [
            "",
            f"ART {escape(found['detector'])} ({escape(found['layer'])} layer): flagged "
            f"{found['flagged']} samples ({percent(found['fraction'])}); suspect classes: "
            f"{suspects}.",
        ]
    return "\n".join(lines) + "\n"


@SCAN_FORMATS.register("junit")
def render_scan_junit(report: ScanReport) -> str:
    """The scan as JUnit XML: one test suite for the model, one test case per class.

    Args:
        report: the scan to report.

    Returns:
        ``<testsuites><testsuite name="mlsec scan: MODEL">`` with a ``<testcase name="class K">``
        per class, carrying a ``<failure type="BackdoorSuspected">`` when the class is flagged;
        the Markdown summary is the suite's ``<system-out>``.

    """
    cases = [
        TestCase(
            f"class {r.label}",
            None
            if not r.flagged
            else f"class {r.label}: reversed trigger mask L1 {r.l1:.1f}, anomaly index "
            f"{r.anomaly_index:.2f} > {report.config.get('anomaly_threshold', 2.0):g}",
        )
        for r in report.classes
    ]
    return junit_document(
        f"mlsec scan: {report.model}",
        classname="mlsec.scan",
        seconds=report.seconds,
        properties={"model": report.model, "data": report.data, "n": str(report.n)},
        cases=cases,
        failure_type="BackdoorSuspected",
        system_out=render_scan_markdown(report),
    )


@SCAN_FORMATS.register("html")
def render_scan_html(report: ScanReport) -> str:
    """The scan as one self-contained HTML page.

    Args:
        report: the scan to render.

    Returns:
        HTML with the verdict, the per-class table (``id="classes"``, flagged rows highlighted),
        each class's reversed mask and stamped pattern (``pattern x mask``) as images
        (``id="triggers"``, the true patch outlined when known), ART's detectors, the settings
        and the environment.

    """
    verdict = "pass" if report.passed else "fail"
    body = [
        '<header id="summary">',
        "<h1>mlsec scan</h1>",
        f'<p class="subtitle">{html_escape(report.model)} on {html_escape(report.data)}</p>',
        f'<p><span class="verdict {verdict}">{html_escape(_verdict(report))}</span></p>',
        f"<p>Neural Cleanse on {report.n} clean samples in {seconds_label(report.seconds)}.</p>",
        "</header>",
        *_class_table(report),
        *_triggers(report),
        *_detectors(report),
        *settings_sections(report.config, report.environment),
    ]
    title = f"mlsec scan: {report.model} on {report.data}"
    return html_page(title, REPORT_CSS + _SCAN_CSS, body)


def _class_table(report: ScanReport) -> list[str]:
    lines = [
        '<section id="per-class">',
        "<h2>Reversed triggers per class</h2>",
        '<p class="note">A class is flagged when its mask L1 norm is below the median and its '
        "anomaly index (distance from the median in median absolute deviations) exceeds "
        f"{report.config.get('anomaly_threshold', 2.0):g}.</p>",
        '<table id="classes">',
        '<thead><tr><th>Class</th><th class="num">Mask L1</th><th class="num">Anomaly index</th>'
        '<th class="num">Attack success</th><th class="num">IoU</th><th>Flagged</th></tr></thead>',
        "<tbody>",
    ]
    for r in report.classes:
        row = ' class="flagged"' if r.flagged else ""
        lines.append(
            f'<tr{row}><td>{r.label}</td><td class="num">{r.l1:.1f}</td>'
            f'<td class="num">{r.anomaly_index:.2f}</td>'
            f'<td class="num">{percent(r.attack_success)}</td><td class="num">{_iou(r)}</td>'
            f"<td>{'yes' if r.flagged else 'no'}</td></tr>"
        )
    return [*lines, "</tbody>", "</table>", "</section>"]


def _triggers(report: ScanReport) -> list[str]:
    lines = [
        '<section id="triggers">',
        "<h2>Reversed triggers</h2>",
        '<p class="note">Left: the mask (white = stamped). Right: the pattern times the mask, '
        "what the trigger writes. The true patch, when known, is outlined in red.</p>",
        '<div class="triggers">',
    ]
    for k, result in enumerate(report.classes):
        mask = report.masks[k]
        stamp = report.patterns[k] * mask[None]
        flagged = " flagged" if result.flagged else ""
        lines.append(
            f'<figure class="trigger{flagged}"><div class="pair">'
            f"{_framed(mask, f'mask {k}', report)}{_framed(stamp, f'trigger {k}', report)}</div>"
            f"<figcaption>class {k} · L1 {result.l1:.1f} · index "
            f"{result.anomaly_index:.2f}</figcaption></figure>"
        )
    return [*lines, "</div>", "</section>"]


def _framed(image: torch.Tensor, alt: str, report: ScanReport) -> str:
    height, width = image.shape[-2:]
    scale = max(1, round(_IMAGE_PIXELS / max(height, width)))
    data = png_data_uri(png_bytes(image, (0.0, 1.0), scale=scale))
    img = f'<img src="{data}" alt="{alt}" width="{width * scale}" height="{height * scale}">'
    outline = ""
    if report.trigger is not None:
        t = report.trigger
        outline = (
            f'<span class="patch" style="left: {t["left"] * scale + 1}px; '
            f"top: {t['top'] * scale + 1}px; width: {t['width'] * scale}px; "
            f'height: {t["height"] * scale}px"></span>'
        )
    return f'<div class="frame">{img}{outline}</div>'


def _detectors(report: ScanReport) -> list[str]:
    lines = ['<section id="detectors">', "<h2>Poison detectors (ART) on the training data</h2>"]
    if not report.detectors:
        return [*lines, "<p>not run: no training data given</p>", "</section>"]
    for found in report.detectors:
        suspects = ", ".join(str(k) for k in found["suspect_classes"]) or "none"
        lines += [
            f"<h3>{html_escape(found['detector'])}</h3>",
            f"<p>{found['flagged']} samples flagged ({percent(found['fraction'])}), read at the "
            f"{html_escape(found['layer'])} layer; suspect classes: {suspects}.</p>",
            "<table>",
            '<tr><th>Class</th><th class="num">Flagged</th><th class="num">Samples</th>'
            '<th class="num">Fraction</th></tr>',
            *[
                f'<tr><td>{row["class"]}</td><td class="num">{row["flagged"]}</td>'
                f'<td class="num">{row["samples"]}</td>'
                f'<td class="num">{percent(row["fraction"])}</td></tr>'
                for row in found["per_class"]
            ],
            "</table>",
        ]
    return [*lines, "</section>"]
