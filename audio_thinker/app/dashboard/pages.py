"""Server-rendered HTML: Jinja templates (autoescaped: dumps hold model output) and their formatting helpers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

HERE = Path(__file__).parent


def fmt(value, digits: int = 3) -> str:
    """A metric for a table cell: '–' when missing, few digits otherwise."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
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
ENV.globals.update(query=query)


def render(template: str, **context) -> str:
    return ENV.get_template(template).render(**context)
