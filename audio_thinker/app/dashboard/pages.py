"""Server-rendered HTML: Jinja templates (autoescaped: dumps hold model output) and their formatting helpers."""

from __future__ import annotations

import contextvars
import json
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

HERE = Path(__file__).parent
# The Content-Security-Policy nonce of the response being rendered (set per request by the server).
NONCE: contextvars.ContextVar[str] = contextvars.ContextVar("dashboard_nonce", default="")


def fmt(value, digits: int = 3) -> str:
    """A metric for a table cell: '–' when missing, few digits otherwise."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        value = value + 0.0  # -0.0 prints as 0.000
        return f"{value:.{digits}g}" if abs(value) >= 1000 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"
    return str(value)


def ago(timestamp: float) -> str:
    if not timestamp:
        return "–"
    seconds = max(0.0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def to_json(value) -> Markup:
    """JSON for a <script> block (</script> and <!-- cannot end or open anything inside it)."""
    text = json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def histogram_svg(values: list[float], title: str, bins: int = 30, width: int = 660, height: int = 150) -> Markup:
    """An inline SVG histogram (hover a bar for its range and count): the rollout browser needs no plotly,
    so a step of 128 samples opens at once."""
    left, bottom, top = 34, 22, 22
    parts = [f'<svg class="hist" viewBox="0 0 {width} {height}" role="img"><title>{escape(title)}</title>']
    parts.append(f'<text x="{left}" y="14" class="title">{escape(title)}</text>')
    if values:
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        counts = [0] * bins
        for v in values:
            counts[min(bins - 1, int((v - lo) / span * bins))] += 1
        peak = max(counts)
        plot_w, plot_h = width - left - 8, height - bottom - top
        bar_w = plot_w / bins
        for i, n in enumerate(counts):
            if not n:
                continue
            h = plot_h * n / peak
            a, b = lo + span * i / bins, lo + span * (i + 1) / bins
            parts.append(
                f'<rect x="{left + i * bar_w + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                f'height="{h:.1f}"><title>{fmt(a)} to {fmt(b)}: {n} sample(s)</title></rect>'
            )
        base = top + plot_h
        parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{base}" y2="{base}"/>')
        parts.append(f'<text x="{left - 4}" y="{top + 8}" class="end">{peak}</text>')
        parts.append(f'<text x="{left - 4}" y="{base}" class="end">0</text>')
        parts.append(f'<text x="{left}" y="{height - 6}">{fmt(lo)}</text>')
        parts.append(f'<text x="{width - 8}" y="{height - 6}" class="end">{fmt(hi)}</text>')
    else:
        parts.append(f'<text x="{left}" y="{height / 2}">no samples</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def query(params: dict, **changes) -> str:
    """The query string of `params` with `changes` applied (empty values dropped)."""
    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


ENV = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(fmt=fmt, ago=ago, json=to_json, urlpart=lambda s: quote(str(s), safe=""))
ENV.globals.update(query=query, histogram=histogram_svg, nonce=NONCE.get)


def render(template: str, **context) -> str:
    return ENV.get_template(template).render(**context)
