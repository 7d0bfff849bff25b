"""Server-side downsampling: a series of thousands of steps reaches the browser as at most ~`max_points`
points, so the page renders without lag. Min/max buckets keep every spike (a loss blow-up, a judge stall)
that averaging or striding would hide; the first and last points are always kept.
"""

from __future__ import annotations


def minmax_indices(values: list[float | None], max_points: int) -> list[int]:
    """Indices of the points to keep, in order: all present points when they fit, else per bucket the
    lowest and the highest (missing values, None, are never kept)."""
    present = [i for i, v in enumerate(values) if v is not None]
    if len(present) <= max_points:
        return present
    buckets = max(1, (max_points - 2) // 2)
    inner = present[1:-1]
    keep = {present[0], present[-1]}
    size = len(inner) / buckets
    for b in range(buckets):
        chunk = inner[int(b * size) : int((b + 1) * size)]
        if chunk:
            keep.add(min(chunk, key=lambda i: values[i]))
            keep.add(max(chunk, key=lambda i: values[i]))
    return sorted(keep)


def series(steps: list[int], values: list[float | None], max_points: int, indices: list[int] | None = None) -> dict:
    """{"x": steps, "y": values} of the kept points (`indices` to share another series' points, e.g. the
    parts of a stacked bar)."""
    keep = minmax_indices(values, max_points) if indices is None else [i for i in indices if values[i] is not None]
    return {"x": [steps[i] for i in keep], "y": [values[i] for i in keep]}
