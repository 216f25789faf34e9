"""The job page's small plot: each fold's score on each of the five slices, the mean of the
folds per slice, and the decision threshold, as inline SVG (no script, no style)."""

from __future__ import annotations

from html import escape
from statistics import mean

__all__ = ["slice_scores_svg"]

def slice_scores_svg(scores: list[list[float]], threshold: float | None, slices: list[int] | None = None, width: int = 420, height: int = 220) -> str:
    """``scores`` is [fold][slice]; one thin line per fold, the fold mean per slice as dots,
    the threshold dashed; y from 0 to 1."""
    if not scores or not scores[0]:
        return ""
    left, right, top, bottom = 44, 12, 12, 34
    n = len(scores[0])
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + plot_h * (1 - max(0.0, min(1.0, v)))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="score per slice and fold">']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" y1="{y(tick):.1f}" x2="{width - right}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" font-size="11" text-anchor="end">{tick:g}</text>')
    labels = slices if slices and len(slices) == n else list(range(1, n + 1))
    for i, label in enumerate(labels):
        parts.append(f'<text x="{x(i):.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle">'
                     f'{escape(str(label))}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" font-size="11" text-anchor="middle">'
                 'slice (index in the series)</text>')
    for fold in scores:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(fold))
        parts.append(f'<polyline points="{points}" fill="none" stroke="#8aa4c8" stroke-width="1.2"/>')
    means = [mean(fold[i] for fold in scores) for i in range(n)]
    for i, v in enumerate(means):
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="4" fill="#1f4e8c"><title>slice {escape(str(labels[i]))}: '
                     f'fold mean {v:.3f}</title></circle>')
    if threshold is not None:
        parts.append(f'<line x1="{left}" y1="{y(threshold):.1f}" x2="{width - right}" y2="{y(threshold):.1f}" '
                     f'stroke="#b03a2e" stroke-dasharray="5,4"><title>threshold {threshold:.3f}</title></line>')
    parts.append(f'<text x="{width - right}" y="{top + 10}" font-size="11" text-anchor="end">'
                 'lines: folds; dots: mean of the folds; dashed: threshold</text>')
    parts.append("</svg>")
    return "".join(parts)
