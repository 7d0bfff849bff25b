"""Which charts a run page shows, and the data the browser draws them from.

The panels are declared once (title, metric keys, how to draw them); a panel appears when the run logged
at least one of its keys, and every numeric key no panel names gets a panel of its own prefix, so keys
added to the driver later show up without a change here.
"""

from __future__ import annotations

from audio_thinker.app.dashboard.downsample import minmax_indices, series
from audio_thinker.app.dashboard.runs import Metrics

# (id, title, keys or "prefix*" patterns, kind, keys drawn on a second y axis)
PANELS = [
    (
        "reward",
        "Reward (mean per sample)",
        ["reward/total", "reward/accuracy", "reward/format", "reward/consistency", "reward/think"],
        "line",
        [],
    ),
    (
        "advantage",
        "Mean |advantage| and the judge's think-score spread",
        ["advantage/abs_mean", "reward/think_group_std"],
        "line",
        [],
    ),
    ("think", "Think rate and ATAR weights", ["think_rate", "gamma_think", "gamma_no_think"], "line", []),
    ("accuracy", "Accuracy: think vs no-think", ["acc/overall", "acc/think", "acc/no_think"], "line", []),
    ("difficulty", "No-think rate per difficulty", ["no_think_rate/*"], "line", []),
    ("length", "Response length (tokens)", ["response_length/mean", "response_length/max"], "line", []),
    ("shares", "Clipped and invalid share", ["response_length/clip_ratio", "share/invalid"], "line", []),
    ("modes", "Samples per mode", ["count/think", "count/no_think", "count/invalid"], "bar", []),
    ("kl", "KL to the reference", ["actor/kl"], "line", []),
    ("loss", "Policy loss", ["actor/loss"], "line", []),
    ("clip", "Clip fraction", ["actor/clip_frac"], "line", []),
    ("grad", "Grad norm", ["actor/grad_norm"], "line", []),
    ("lr", "Learning rate", ["actor/lr"], "line", []),
    ("mismatch", "Log-prob mismatch (engine vs trainer)", ["actor/logprob_mismatch*"], "line", []),
    ("ratio", "Importance ratio", ["actor/ratio_*"], "line", []),
    ("judge", "Judge latency (s) and items", ["timing_s/judge", "judge/items"], "line", ["judge/items"]),
    ("timing", "Time per step (s)", ["timing_s/*"], "bar", []),
    ("sync", "Weight sync", ["sync/load_s", "sync/bytes"], "line", ["sync/bytes"]),
    ("eval", "Evaluation", ["eval/*"], "markers", []),
]
STEP_TOTAL = "timing_s/step"  # drawn as a line over the stacked parts, and the points the parts share


def _matches(pattern: str, key: str) -> bool:
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


def panels(keys: set[str]) -> list[dict]:
    """The panels for a run that logged `keys`: [{id, title, traces: [{key, kind, axis}], stacked}]."""
    out, claimed = [], set()
    for pid, title, patterns, kind, second in PANELS:
        traces = []
        for pattern in patterns:
            for key in sorted(k for k in keys if _matches(pattern, k) and k not in claimed):
                claimed.add(key)
                trace_kind = "line" if key == STEP_TOTAL else kind
                traces.append({"key": key, "kind": trace_kind, "axis": "y2" if key in second else "y"})
        if traces:
            stacked = pid == "timing"
            out.append({"id": pid, "title": title, "traces": traces, "stacked": stacked})
    rest: dict[str, list[str]] = {}
    for key in sorted(keys - claimed):
        rest.setdefault(key.split("/")[0] if "/" in key else key, []).append(key)
    for prefix, group in rest.items():
        title = f"{prefix}/*" if len(group) > 1 or "/" in group[0] else prefix
        traces = [{"key": k, "kind": "line", "axis": "y"} for k in group]
        out.append({"id": f"other-{prefix}", "title": title, "traces": traces, "stacked": False})
    return out


def payload(metrics: Metrics, since: int, max_points: int) -> dict:
    """The points after step `since` of every key, downsampled to at most ~max_points per series (the parts
    of the stacked timing bar share the points of the step total)."""
    rows = metrics.since(since)
    steps = [r["step"] for r in rows]
    columns = {key: [r.get(key) for r in rows] for key in metrics.keys}
    shared = minmax_indices(columns[STEP_TOTAL], max_points) if STEP_TOTAL in columns else None
    out = {}
    for key, values in columns.items():
        indices = shared if shared is not None and key.startswith("timing_s/") else None
        out[key] = series(steps, values, max_points, indices)
    return out
