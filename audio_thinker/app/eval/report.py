"""`report.md` shaped like the paper's tables, and the no-think-rate bar chart of its Figure 2.

Columns follow the paper: MMAU / MMAR / synthetic per task (Sound, Music, Speech, then any other modality,
e.g. MMAR's mixes) and Average (all scored questions, as the official scripts compute it); AIR-Bench
foundation adds Table 3's task columns (SoundAQA, MusicAQA, SER, VSC, SNV). Every accuracy and no-think rate
is followed by its 95% Wilson interval, `55.56 [26.67, 81.12]`. The plot is drawn with a bare matplotlib
`Figure` (Agg canvas): no pyplot state, no display needed; its error bars are the same intervals.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BENCH_TITLES = {
    "mmau": "MMAU",
    "mmau-v05.15.25": "MMAU-v05.15.25",
    "mmau-pro": "MMAU-Pro (multiple choice)",
    "mmar": "MMAR",
    "mmsu": "MMSU",
    "air": "AIR-Bench foundation",
    "synthetic": "synthetic audio QA",
}
TASK_ORDER = ("sound", "music", "speech")
DIFFICULTY_ORDER = ("easy", "medium", "hard")
# Table 3's AIR-Bench columns -> task_name in Foundation_meta.json (spelled as the benchmark spells it).
AIR_TABLE_COLUMNS = {
    "SoundAQA": "Sound_AQA",
    "MusicAQA": "Music_AQA",
    "SER": "Speaker_Emotion_Recontion",
    "VSC": "vocal_sound_classification",
    "SNV": "Speaker_Number_Verification",
}
PLOT_NAME = "no_think_by_difficulty.png"


def ordered(keys: list[str], first: tuple[str, ...]) -> list[str]:
    """`first` (those present) in that order, then the other keys sorted."""
    return [k for k in first if k in keys] + sorted(k for k in keys if k not in first)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def with_ci(value: float | None, ci: list[float] | None) -> str:
    """`55.56 [26.67, 81.12]`: a percentage and its 95% interval (`-` when there is no value)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if ci is None else f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _acc(group: Mapping | None) -> str:
    """An accuracy group of results.json ({"accuracy", "ci95", ...}) as a table cell."""
    return "-" if group is None else with_ci(group["accuracy"], group.get("ci95"))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def render_report(results: Mapping, meta: Mapping[str, str], modes: Mapping[str, int]) -> str:
    """The markdown report. `meta`: model, bench, data, prompt, engine, decoding; `modes`: response counts."""
    bench, model = meta["bench"], meta["model"]
    title = BENCH_TITLES.get(bench, bench)
    total = results["total"]
    lines = [f"# {title}: {model}", ""]
    lines += _table(["setting", "value"], [[k, f"`{v}`"] for k, v in meta.items()])
    lines += [
        (f"Scored questions: {total['count']} ({total['correct']} correct); invalid: {results['invalid']}; "
         f"skipped (no prediction): {results['skipped']}; unlabeled: {results['unlabeled']}."),
        "",
    ]
    if results.get("excluded"):
        lines += ["Left out (outside the part of the benchmark scored here): "
                  + "; ".join(f"{n} rows, {why}" for why, n in results["excluded"].items()) + ".", ""]
    if bench == "mmau-pro" and total["count"]:
        upper = round(100.0 * (total["correct"] + results["invalid"]) / total["count"], 2)
        lines += [(f"The {results['invalid']} invalid predictions name no choice exactly; the official script maps "
                   f"them to a choice with NV-Embed-v2, so its accuracy lies between {_pct(total['accuracy'])} and "
                   f"{_pct(upper)}."), ""]
    lines += [f"## Accuracy (%) on {title}", ""]
    tasks = ordered(list(results["by_task"]), TASK_ORDER)
    lines += _table(
        ["Model"] + [t.capitalize() for t in tasks] + ["Average"],
        [[model] + [_acc(results["by_task"][t]) for t in tasks] + [_acc(total)]],
    )
    if bench == "air":
        cats = results["by_category"]
        lines += ["AIR-Bench foundation tasks as in the paper's Table 3:", ""]
        lines += _table(
            ["Model"] + list(AIR_TABLE_COLUMNS) + ["AIR-Avg"],
            [[model] + [_acc(cats.get(name)) for name in AIR_TABLE_COLUMNS.values()] + [_acc(total)]],
        )
    difficulties = ordered(list(results["by_difficulty"]), DIFFICULTY_ORDER)
    if difficulties:
        lines += ["## Accuracy (%) by difficulty", ""]
        lines += _table(
            ["Model"] + [d.capitalize() for d in difficulties],
            [[model] + [_acc(results["by_difficulty"][d]) for d in difficulties]],
        )
    rates = results["no_think_rate"]
    cis = rates.get("ci95", {"total": None, "by_difficulty": {}})
    lines += ["## No-think rate (%) by difficulty (the paper's Figure 2)", ""]
    lines += _table(
        ["Model"] + [d.capitalize() for d in difficulties] + ["All"],
        [[model] + [with_ci(rates["by_difficulty"][d], cis["by_difficulty"].get(d)) for d in difficulties]
         + [with_ci(rates["total"], cis["total"])]],
    )
    lines += [
        (f"Responses: think {modes.get('think', 0)}, no_think {modes.get('no_think', 0)}, "
         f"invalid {modes.get('invalid', 0)} (the rate is no_think / (think + no_think))."),
        "",
        "In brackets: the 95% Wilson interval of each percentage over its questions (or responses).",
        "",
        f"![no-think rate by difficulty]({PLOT_NAME})",
        "",
    ]
    audit = results.get("consistency")
    if audit is not None:
        lines += ["## Consistency audit", ""]
        lines += [
            (f"The judge finds the reasoning consistent with the final answer in {_pct(audit['rate'])}% of the "
             f"think responses ({audit['consistent']} of {audit['judged']})."),
            "",
        ]
    if results["by_category"]:
        lines += ["## Accuracy (%) by category", ""]
        lines += _table(
            ["Category", "Accuracy", "Correct", "Count"],
            [[c, _acc(v), str(v["correct"]), str(v["count"])] for c, v in results["by_category"].items()],
        )
    return "\n".join(lines)


def error_bars(values: list[float | None], cis: list[list[float] | None]) -> list[list[float]]:
    """Matplotlib's `yerr` (distances below and above each bar) from intervals; 0 where there is none."""
    below = [0.0 if v is None or ci is None else v - ci[0] for v, ci in zip(values, cis)]
    above = [0.0 if v is None or ci is None else ci[1] - v for v, ci in zip(values, cis)]
    return [below, above]


def plot_no_think(results: Mapping, path: str | Path, title: str) -> Path:
    """Bar chart of the no-think rate per difficulty (one "all" bar when the benchmark has no difficulty), with
    the 95% Wilson interval of each rate as an error bar."""
    rates = results["no_think_rate"]
    cis = rates.get("ci95", {"total": None, "by_difficulty": {}})
    difficulties = ordered(list(rates["by_difficulty"]), DIFFICULTY_ORDER)
    labels = difficulties or ["all"]
    values = [rates["by_difficulty"][d] for d in difficulties] if difficulties else [rates["total"]]
    intervals = [cis["by_difficulty"].get(d) for d in difficulties] if difficulties else [cis["total"]]
    fig = Figure(figsize=(5.0, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    bars = ax.bar(labels, [v or 0.0 for v in values], color=["#8fbf7f", "#f2b45a", "#d9665b"],
                  yerr=error_bars(values, intervals), capsize=4, ecolor="#333333")
    for bar, value in zip(bars, values):
        ax.annotate("n/a" if value is None else f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="left", va="bottom", xytext=(3, 2), textcoords="offset points")
    ax.set_ylim(0, 105)
    ax.set_ylabel("no-think rate (%), 95% interval")
    ax.set_xlabel("difficulty")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
