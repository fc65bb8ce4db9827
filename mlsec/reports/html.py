"""The HTML report: one self-contained file to archive as a CI artifact or mail to a colleague.

Everything is inline: CSS in a ``<style>``, the plot and the example images as base64 ``data:``
URIs, no script and no external reference, so the file opens the same offline and years later.
Every user-controlled string (model, data and attack names, warnings, settings) goes through
:func:`html.escape`.

The accuracy-vs-eps plot is drawn with matplotlib when it is installed (the ``plots`` extra) and
as hand-written inline SVG otherwise, so a report never lacks its plot. Example images are encoded
as PNG by a small writer here, which needs nothing beyond :mod:`zlib`.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import torch

from mlsec.auditing.report import FORMATS, AuditReport, Example
from mlsec.reports.markdown import eps_label, percent, requirement, seconds_label

__all__ = ["WORST_CASE_COLOR", "png_bytes", "render_html"]

# The worst case is red everywhere; attacks take the other tab10 colours in chain order.
WORST_CASE_COLOR = "#d62728"
_ATTACK_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_EXAMPLE_PIXELS = 112

_CSS = """
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
        table (``id="results"``), thresholds, warnings, example images, settings and environment.

    """
    title = f"mlsec audit: {report.model} on {report.data}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        *_header(report),
        '<section id="plot">',
        "<h2>Robust accuracy vs eps</h2>",
        _plot(report),
        "</section>",
        *_results(report),
        *_thresholds(report),
        *_warnings(report),
        *_examples(report),
        '<section id="settings">',
        "<h2>Settings</h2>",
        f"<pre>{escape(_settings(report))}</pre>",
        "</section>",
        *_environment(report),
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _settings(report: AuditReport) -> str:
    return json.dumps(report.config, indent=2, default=str, ensure_ascii=False)


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
        "</tbody>",
        "</table>",
        "</section>",
    ]
    return lines


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
    if not report.warnings:
        return [*lines, "<p>none</p>", "</section>"]
    items = [f"<li>{escape(warning)}</li>" for warning in report.warnings]
    return [*lines, "<ul>", *items, "</ul>", "</section>"]


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
    data = base64.b64encode(png_bytes(tensor, bounds, scale=scale)).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{data}" alt="{alt}"'
        f' width="{width * scale}" height="{height * scale}">'
    )


def _environment(report: AuditReport) -> list[str]:
    lines = ['<section id="environment">', "<h2>Environment</h2>"]
    if not report.environment:
        return [*lines, "<p>not recorded</p>", "</section>"]
    rows = [
        f"<tr><th>{escape(str(key))}</th><td>{escape(str(value))}</td></tr>"
        for key, value in report.environment.items()
    ]
    return [*lines, '<table id="environment-table">', *rows, "</table>", "</section>"]


# --- images ---------------------------------------------------------------------------------------


def png_bytes(image: torch.Tensor, bounds: tuple[float, float], *, scale: int = 1) -> bytes:
    r"""An image tensor as PNG, enlarged ``scale`` times with nearest-neighbour.

    Args:
        image: ``[C, H, W]`` (or ``[H, W]``) with values in ``bounds``; one channel is grey, three
            are RGB, any other count is shown as the grey mean over channels.
        bounds: the input bounds, mapped to black and white.
        scale: the enlargement factor, an integer >= 1.

    Returns:
        The bytes of an 8-bit PNG file.

    Example:
        >>> png = png_bytes(torch.zeros(1, 2, 3), (0.0, 1.0), scale=2)
        >>> png[:8], int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        (b'\x89PNG\r\n\x1a\n', 6, 4)

    """
    low, high = bounds
    x = image.detach().to("cpu", torch.float32)
    x = x[None] if x.dim() == 2 else x
    if x.dim() != 3:
        raise ValueError(f"mlsec: an example image must be [C, H, W] (got shape {tuple(x.shape)})")
    x = torch.nan_to_num((x - low) / max(high - low, 1e-12), nan=0.0).clamp(0, 1)
    pixels = x.mul(255).round().to(torch.uint8)
    if pixels.shape[0] == 3:
        pixels, color_type = pixels.permute(1, 2, 0), 2
    else:
        pixels, color_type = x.mean(0).mul(255).round().to(torch.uint8), 0
    pixels = pixels.repeat_interleave(scale, 0).repeat_interleave(scale, 1).contiguous()
    height, width = pixels.shape[:2]
    # Each scanline starts with filter type 0 (none); zlib does the compressing.
    rows = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), pixels.reshape(height, -1)], 1)
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.numpy().tobytes(), 9)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


# --- the plot -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Series:
    label: str
    color: str
    eps: list[float]
    accuracy: list[float]
    worst: bool


def _series(report: AuditReport) -> list[_Series]:
    """One line per attack and one for the worst case, each starting at clean accuracy."""
    start = [] if report.eps and report.eps[0] == 0 else [0.0]

    def line(label: str, color: str, points: Sequence[tuple[float, float]], worst: bool) -> _Series:
        eps = start + [e for e, _ in points]
        accuracy = [report.clean_accuracy] * len(start) + [a for _, a in points]
        return _Series(label, color, eps, accuracy, worst)

    lines = []
    for i, attack in enumerate(report.attacks):
        points = []
        for eps in report.eps:
            try:
                points.append((eps, report.robust_accuracy(attack, eps)))
            except KeyError:
                continue
        lines.append(line(attack, _ATTACK_COLORS[i % len(_ATTACK_COLORS)], points, False))
    worst = [(eps, report.worst_case[eps]) for eps in report.eps]
    lines.append(line("worst case", WORST_CASE_COLOR, worst, True))
    return lines


def _plot(report: AuditReport) -> str:
    series = _series(report)
    alt = "robust accuracy against eps for each attack and the worst case"
    png = _plot_png(series)
    if png is None:
        return _plot_svg(series, alt)
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="accuracy-plot" src="data:image/png;base64,{data}" alt="{alt}">'


def _plot_png(series: list[_Series]) -> bytes | None:
    """The plot drawn by matplotlib, or None when matplotlib is not installed."""
    try:
        # The object-oriented API leaves pyplot's global backend and figures alone.
        import matplotlib.figure
    except ImportError:
        return None
    figure = matplotlib.figure.Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for line in series:
        # Literal text: no mathtext for "$", and a leading "_" would hide the legend entry.
        label = line.label.replace("$", r"\$")
        label = " " + label if label.startswith("_") else label
        axes.plot(
            line.eps,
            [100 * a for a in line.accuracy],
            color=line.color,
            marker="o",
            linewidth=2.5 if line.worst else 1.8,
            # Wide gaps let the last attack's line, which the worst case equals, show through.
            linestyle=(0, (3, 3)) if line.worst else "-",
            label=label,
            zorder=3 if line.worst else 2,
        )
    axes.set_xlabel("eps")
    axes.set_ylabel("robust accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_xlim(left=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _plot_svg(series: list[_Series], alt: str) -> str:
    """The plot as inline SVG: axes, grid, one polyline per series and a legend."""
    width, height = 800, 450
    left, right, top, bottom = 64, 170, 20, 56
    plot_w, plot_h = width - left - right, height - top - bottom
    eps_max = max((e for line in series for e in line.eps), default=0.0) or 1.0

    def x(eps: float) -> float:
        return left + plot_w * eps / eps_max

    def y(accuracy: float) -> float:
        return top + plot_h * (1 - accuracy)

    parts = [
        f'<svg id="accuracy-plot" role="img" aria-label="{alt}" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{alt}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + plot_w}" y2="{y(tick):.1f}"'
            ' stroke="#e0e0e0"/>'
            f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick * 100:.0f}%</text>'
        )
    for tick in sorted({e for line in series for e in line.eps}):
        parts.append(
            f'<line x1="{x(tick):.1f}" y1="{top}" x2="{x(tick):.1f}" y2="{top + plot_h}"'
            ' stroke="#e0e0e0"/>'
            f'<text x="{x(tick):.1f}" y="{top + plot_h + 18}" text-anchor="middle">'
            f"{eps_label(tick)}</text>"
        )
    parts += [
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none"'
        ' stroke="#333333"/>',
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 12}" text-anchor="middle">eps</text>',
        f'<text transform="translate(16 {top + plot_h / 2:.1f}) rotate(-90)"'
        ' text-anchor="middle">robust accuracy (%)</text>',
    ]
    # The worst case last, dashed, so it stays visible on top of the last attack it equals.
    for line in sorted(series, key=lambda s: s.worst):
        pairs = list(zip(line.eps, line.accuracy, strict=True))
        points = " ".join(f"{x(e):.1f},{y(a):.1f}" for e, a in pairs)
        dash = ' stroke-dasharray="7 7"' if line.worst else ""
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{line.color}"'
            f' stroke-width="{2.5 if line.worst else 1.8}"{dash}/>'
        )
        parts += [
            f'<circle cx="{x(e):.1f}" cy="{y(a):.1f}" r="3.5" fill="{line.color}"/>'
            for e, a in pairs
        ]
    for i, line in enumerate(series):
        row = top + 10 + 20 * i
        dash = ' stroke-dasharray="7 7"' if line.worst else ""
        parts.append(
            f'<line x1="{left + plot_w + 14}" y1="{row}" x2="{left + plot_w + 40}" y2="{row}"'
            f' stroke="{line.color}" stroke-width="2.5"{dash}/>'
            f'<text x="{left + plot_w + 46}" y="{row + 4}">{escape(line.label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
