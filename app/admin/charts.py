"""Charts drawn on the server as inline SVG: nothing fetched by the browser, no script, and
the admin works offline. Presentation attributes only (no style attributes), so the
Content-Security-Policy needs no exception.

Input: the points of `worker.series.read_series` (one per minute, or per 15 minutes for a
day). A gap in the data (no worker wrote that minute) breaks the line instead of drawing
a zero.
"""

from __future__ import annotations

import time

from markupsafe import Markup, escape

WIDTH, HEIGHT = 440, 120
LEFT, RIGHT, TOP, BOTTOM = 34, 6, 14, 16
COLORS = {"completed": "#067647", "failed": "#b42318", "depth": "#1d4ed8",
          "p50": "#7c3aed", "p95": "#c2410c"}


def _nice(top: float) -> float:
    """A round axis maximum at or above `top`."""
    if top <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(top))) - 1) if top >= 1 else 0.1
    for factor in (1, 2, 2.5, 5, 10):
        if top <= factor * magnitude:
            return factor * magnitude
    return top


def _fmt(value: float, unit: str) -> str:
    if unit == "ms" and value >= 1000:
        return f"{value / 1000:g}s"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}{unit if unit != 'ms' else 'ms'}"


def line_chart(title: str, times: list[int], lines: list[tuple[str, str, list]],
               unit: str = "", chart_id: str = "") -> Markup:
    """An SVG chart of one or more lines sharing the time axis `times` (unix seconds)."""
    values = [v for _, _, vs in lines for v in vs if v is not None]
    top = _nice(max(values) if values else 0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(1, len(times) - 1)

    def x(i):
        return LEFT + plot_w * i / n

    def y(v):
        return TOP + plot_h * (1 - v / top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" '
             f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(title)}"' + (f' id="{escape(chart_id)}"' if chart_id else "")
             + f' data-points="{len(values)}">',
             f"<title>{escape(title)}</title>",
             f'<text x="{LEFT}" y="10" font-size="10" fill="#1d2330">{escape(title)}</text>',
             (f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" '
             f'stroke="#d0d5dd"/>'),
             f'<line x1="{LEFT}" y1="{TOP}" x2="{WIDTH - RIGHT}" y2="{TOP}" stroke="#eef0f3"/>',
             (f'<text x="{LEFT - 3}" y="{TOP + 4}" font-size="9" text-anchor="end" '
             f'fill="#6b7280">{escape(_fmt(top, unit))}</text>'),
             (f'<text x="{LEFT - 3}" y="{TOP + plot_h}" font-size="9" text-anchor="end" '
             f'fill="#6b7280">0</text>')]
    if times:
        for index, anchor in ((0, "start"), (len(times) - 1, "end")):
            label = time.strftime("%H:%M", time.gmtime(times[index]))
            parts.append(f'<text x="{x(index):.1f}" y="{HEIGHT - 3}" font-size="9" '
                         f'text-anchor="{anchor}" fill="#6b7280">{label} UTC</text>')
    legend_x = WIDTH - RIGHT
    for name, color, series in reversed(lines):
        parts.append(f'<text x="{legend_x}" y="10" font-size="9" text-anchor="end" '
                     f'fill="{color}">{escape(name)}</text>')
        legend_x -= 6 * len(name) + 10
        run: list[str] = []
        for i, value in enumerate(series + [None]):
            if value is not None:
                run.append(f"{x(i):.1f},{y(value):.1f}")
                continue
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="1.6" fill="{color}"/>')
            elif run:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                             f'points="{" ".join(run)}"/>')
            run = []
    if not values:
        parts.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2 + 3}" font-size="10" '
                     f'text-anchor="middle" fill="#6b7280">no data yet</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def queue_charts(data: dict) -> dict[str, Markup]:
    """The three charts of one queue's series: throughput, waiting depth, pickup latency."""
    points = data["points"]
    times = [p["at"] for p in points]
    per = "per min" if data["stepMinutes"] == 1 else \
        f"per min (avg of {data['stepMinutes']})"

    def col(name):  # a minute no worker wrote is a gap, not a zero
        return [p[name] if p["samples"] else None for p in points]

    queue = data["queue"]
    return {
        "throughput": line_chart(f"{queue}: completed / failed {per}", times, [
            ("completed", COLORS["completed"], col("completed")),
            ("failed", COLORS["failed"], col("failed"))],
            chart_id=f"chart-{queue}-throughput"),
        "depth": line_chart(f"{queue}: waiting jobs", times, [
            ("waiting", COLORS["depth"], col("depth"))], chart_id=f"chart-{queue}-depth"),
        "latency": line_chart(f"{queue}: pickup latency", times, [
            ("p50", COLORS["p50"], col("latencyP50Ms")),
            ("p95", COLORS["p95"], col("latencyP95Ms"))], unit="ms",
            chart_id=f"chart-{queue}-latency"),
    }
