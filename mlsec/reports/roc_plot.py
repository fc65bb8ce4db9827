"""The log-log ROC plot of the privacy report: one curve per membership-inference attack.

Both axes are logarithmic, as Carlini et al. (2022) plot them: an attack that finds a few members
with near certainty shows at the bottom left, where a linear plot squeezes every attack into the
corner. The diagonal is a coin. The FPR axis starts at the lowest rate the non-members can measure
(one false positive). Drawn as hand-written inline SVG: no dependency, and the same in every
environment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from mlsec.attacks.inference.metrics import MembershipMetrics
from mlsec.reports.plot import ATTACK_COLORS

__all__ = ["roc_plot"]

_ALT = "true-positive rate against false-positive rate of each attack, both axes logarithmic"
_WIDTH, _HEIGHT = 640, 440
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 170, 20, 56


def roc_plot(results: Sequence[MembershipMetrics]) -> str:
    """The plot as an ``<svg id="roc-plot">`` element (an empty string without results)."""
    if not results:
        return ""
    low = min(r.lowest_fpr for r in results)
    decades = _decades(low)
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def x(rate: float) -> float:
        return _LEFT + plot_w * (math.log10(max(rate, 10**decades)) - decades) / -decades

    def y(rate: float) -> float:
        return _TOP + plot_h * (1 - (math.log10(max(rate, 10**decades)) - decades) / -decades)

    parts = [
        f'<svg id="roc-plot" role="img" aria-label="{_ALT}" width="{_WIDTH}" height="{_HEIGHT}"'
        f' viewBox="0 0 {_WIDTH} {_HEIGHT}" font-family="sans-serif" font-size="12">',
        f"<title>{_ALT}</title>",
        f'<rect x="0" y="0" width="{_WIDTH}" height="{_HEIGHT}" fill="#ffffff"/>',
    ]
    for power in range(decades, 1):
        tick, label = 10.0**power, _tick_label(power)
        parts.append(
            f'<line x1="{x(tick):.1f}" y1="{_TOP}" x2="{x(tick):.1f}" y2="{_TOP + plot_h}"'
            ' stroke="#e0e0e0"/>'
            f'<text x="{x(tick):.1f}" y="{_TOP + plot_h + 18}" text-anchor="middle">{label}</text>'
            f'<line x1="{_LEFT}" y1="{y(tick):.1f}" x2="{_LEFT + plot_w}" y2="{y(tick):.1f}"'
            ' stroke="#e0e0e0"/>'
            f'<text x="{_LEFT - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{label}</text>'
        )
    parts += [
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none"'
        ' stroke="#333333"/>',
        f'<line class="chance" x1="{x(10**decades):.1f}" y1="{y(10**decades):.1f}" x2="{x(1):.1f}"'
        f' y2="{y(1):.1f}" stroke="#999999" stroke-dasharray="4 4"/>',
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_HEIGHT - 12}" text-anchor="middle">'
        "false-positive rate</text>",
        f'<text transform="translate(16 {_TOP + plot_h / 2:.1f}) rotate(-90)"'
        ' text-anchor="middle">true-positive rate</text>',
    ]
    for i, result in enumerate(results):
        color = ATTACK_COLORS[i % len(ATTACK_COLORS)]
        fpr, tpr = result.roc
        # Points with a zero rate sit at the axis' floor (log 0 has no place on the plot).
        kept = [(f, t) for f, t in zip(fpr, tpr, strict=True) if f > 0]
        points = " ".join(f"{x(f):.1f},{y(t):.1f}" for f, t in kept)
        parts.append(
            f'<polyline class="roc" points="{points}" fill="none" stroke="{color}"'
            ' stroke-width="1.8"/>'
        )
        row = _TOP + 10 + 20 * i
        parts.append(
            f'<line x1="{_LEFT + plot_w + 14}" y1="{row}" x2="{_LEFT + plot_w + 40}" y2="{row}"'
            f' stroke="{color}" stroke-width="2.5"/>'
            f'<text x="{_LEFT + plot_w + 46}" y="{row + 4}">{escape(result.attack)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _decades(lowest: float) -> int:
    """The (negative) power of ten the axes start at: at or below the lowest measurable FPR."""
    return min(-1, math.floor(math.log10(lowest) + 1e-9))


def _tick_label(power: int) -> str:
    """``1``, ``0.1``, ``0.01``, ``0.001``, then ``1e-4`` and below."""
    return f"{10.0**power:g}" if power >= -3 else f"1e{power}"
