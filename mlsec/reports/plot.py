"""The accuracy-vs-eps plot of the HTML report: one line per attack and a dashed worst case.

An audit that certified adds a dotted certified line (a lower bound) and shades the band between
it and the worst case: where the true robust accuracy lies, unknown to both.

The plot is drawn with matplotlib when it is installed (the ``plots`` extra) and as hand-written
inline SVG otherwise, so a report never lacks its plot.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from mlsec.auditing.report import AuditReport
from mlsec.reports.labels import eps_label
from mlsec.reports.png import png_data_uri

__all__ = [
    "ATTACK_COLORS",
    "CERTIFIED_COLOR",
    "WORST_CASE_COLOR",
    "Series",
    "accuracy_plot",
    "plot_series",
]

# The worst case is red everywhere; attacks take the other tab10 colours in chain order.
WORST_CASE_COLOR = "#d62728"
CERTIFIED_COLOR = "#006d2c"
ATTACK_COLORS = (
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
_ALT = "robust accuracy against eps for each attack and the worst case"


@dataclass(frozen=True)
class Series:
    """One line of the plot: accuracy (a fraction) at each eps, starting at clean accuracy."""

    label: str
    color: str
    eps: list[float]
    accuracy: list[float]
    worst: bool
    certified: bool = False


def plot_series(report: AuditReport) -> list[Series]:
    """One line per attack and one for the worst case, each starting at clean accuracy."""
    start = [] if report.eps and report.eps[0] == 0 else [0.0]

    def line(label: str, color: str, points: Sequence[tuple[float, float]], worst: bool) -> Series:
        eps = start + [e for e, _ in points]
        accuracy = [report.clean_accuracy] * len(start) + [a for _, a in points]
        return Series(label, color, eps, accuracy, worst)

    lines = []
    for i, attack in enumerate(report.attacks):
        points = []
        for eps in report.eps:
            try:
                points.append((eps, report.robust_accuracy(attack, eps)))
            except KeyError:
                continue
        lines.append(line(attack, ATTACK_COLORS[i % len(ATTACK_COLORS)], points, False))
    worst = [(eps, report.worst_case[eps]) for eps in report.eps]
    lines.append(line("worst case", WORST_CASE_COLOR, worst, True))
    cert = report.certification
    if cert is not None:
        grid = start + report.eps
        # Certified at some eps means certified at every smaller one: the line starts flat at the
        # first eps's value, not at clean accuracy.
        values = [cert.accuracy(e) for e in report.eps]
        values = values[:1] * len(start) + values
        lines.append(Series("certified", CERTIFIED_COLOR, grid, values, False, certified=True))
    return lines


def _band(series: list[Series]) -> tuple[Series, Series] | None:
    """The worst case and the certified line, when both are drawn: the band between them."""
    worst = next((s for s in series if s.worst), None)
    certified = next((s for s in series if s.certified), None)
    return None if worst is None or certified is None else (worst, certified)


def accuracy_plot(report: AuditReport) -> str:
    """The plot as an HTML element with ``id="accuracy-plot"``: a PNG ``<img>`` or an ``<svg>``."""
    lines = plot_series(report)
    png = _plot_png(lines)
    if png is None:
        return _plot_svg(lines)
    return f'<img id="accuracy-plot" src="{png_data_uri(png)}" alt="{_ALT}">'


def _plot_png(series: list[Series]) -> bytes | None:
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
            linestyle=(0, (3, 3)) if line.worst else ":" if line.certified else "-",
            label=label,
            zorder=3 if line.worst else 2,
        )
    band = _band(series)
    if band is not None:
        worst, certified = band
        axes.fill_between(
            worst.eps,
            [100 * a for a in certified.accuracy],
            [100 * a for a in worst.accuracy],
            color=CERTIFIED_COLOR,
            alpha=0.12,
            label="unknown: certified to attacked",
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


def _plot_svg(series: list[Series]) -> str:
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
        f'<svg id="accuracy-plot" role="img" aria-label="{_ALT}" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{_ALT}</title>",
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
    band = _band(series)
    if band is not None:
        worst, certified = band
        outline = list(zip(worst.eps, worst.accuracy, strict=True))
        outline += list(zip(certified.eps, certified.accuracy, strict=True))[::-1]
        corners = " ".join(f"{x(e):.1f},{y(a):.1f}" for e, a in outline)
        parts.append(
            f'<polygon class="certified-band" points="{corners}" fill="{CERTIFIED_COLOR}"'
            ' fill-opacity="0.12" stroke="none"/>'
        )
    # The worst case last, dashed, so it stays visible on top of the last attack it equals.
    for line in sorted(series, key=lambda s: s.worst):
        pairs = list(zip(line.eps, line.accuracy, strict=True))
        points = " ".join(f"{x(e):.1f},{y(a):.1f}" for e, a in pairs)
        dash = ' stroke-dasharray="7 7"' if line.worst else _dots(line)
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
        dash = ' stroke-dasharray="7 7"' if line.worst else _dots(line)
        parts.append(
            f'<line x1="{left + plot_w + 14}" y1="{row}" x2="{left + plot_w + 40}" y2="{row}"'
            f' stroke="{line.color}" stroke-width="2.5"{dash}/>'
            f'<text x="{left + plot_w + 46}" y="{row + 4}">{escape(line.label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _dots(line: Series) -> str:
    return ' stroke-dasharray="2 4"' if line.certified else ""
