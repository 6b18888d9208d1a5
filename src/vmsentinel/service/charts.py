"""Small charts as inline SVG, drawn on the server: no script library, nothing fetched."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, PAD = 560, 140, 28
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563")


def _frame(title: str, body: str, top: float, unit: str = "") -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + 20}" role="img" aria-label="{escape(title)}">'
        f'<text x="{PAD}" y="12" class="chart-title">{escape(title)}</text>'
        f'<text x="2" y="{PAD + 4}" class="chart-axis">{top:.4g}{unit}</text>'
        f'<text x="2" y="{HEIGHT}" class="chart-axis">0</text>'
        f'<line x1="{PAD}" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" class="chart-base"/>{body}</svg>'
    )


def bars(points: list[tuple[float, int]], title: str) -> str:
    """One bar per (time, count)."""
    if not points:
        return _frame(title, f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" class="chart-empty">none</text>', 0)
    top = max(n for _, n in points) or 1
    step = (WIDTH - PAD) / max(len(points), 24)
    body = "".join(
        f'<rect x="{PAD + i * step:.1f}" y="{HEIGHT - (HEIGHT - PAD) * n / top:.1f}" width="{max(step - 2, 1):.1f}" '
        f'height="{(HEIGHT - PAD) * n / top:.1f}" class="chart-bar"><title>{n}</title></rect>'
        for i, (_, n) in enumerate(points)
    )
    return _frame(title, body, top)


def lines(series: dict[str, list[tuple[float, float]]], title: str) -> str:
    """One line per series of (seconds relative to now, value), last 5 minutes."""
    values = [v for points in series.values() for _, v in points]
    if not values:
        return _frame(title, f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" class="chart-empty">no sweep yet</text>', 0)
    top = max(values) or 1.0
    span = 300.0
    body, legend = "", ""
    for i, (name, points) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        xy = " ".join(
            f"{PAD + (WIDTH - PAD) * (1 + t / span):.1f},{HEIGHT - (HEIGHT - PAD) * v / top:.1f}" for t, v in points if t >= -span
        )
        body += (
            f'<polyline points="{xy}" fill="none" stroke="{colour}" stroke-width="1.5"><title>{escape(name)}</title></polyline>'
        )
        if i < 8:
            x = PAD + 8 + (i % 4) * 130
            legend += f'<text x="{x}" y="{HEIGHT + 16}" fill="{colour}" class="chart-legend">{escape(name[:22])}</text>'
    return _frame(title, body + legend, top, " ms")
