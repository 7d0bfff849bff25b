"""Table 1 from finished runs, our numbers beside the paper's, the paired comparisons, and the paper's Figure 2.

    table1.json   {"source", "notes", "benchmarks", "rows": [{"row", "method", "family", "runs": [{"seed", "run"}],
                   "ours", "no_think_rate", "paper"}], "comparisons": [...]}
                  "ours" is bench -> column -> cell and "no_think_rate" bench -> level -> cell, a cell being
                  {"mean", "ci95", "per_seed", "per_seed_ci95"} (runs.py); "comparisons" as compare.py makes them
    table1.md     the table (a line per seed, their mean, the paper's line), the no-think rates, the paired
                  comparisons, the notes
    figure2_<bench>.png   no-think rate by difficulty, one bar per row, 95% intervals as error bars
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from audio_thinker.app.eval.report import BENCH_TITLES, DIFFICULTY_ORDER, error_bars, ordered, with_ci
from audio_thinker.app.table1.compare import comparisons
from audio_thinker.app.table1.rows import paper_table
from audio_thinker.app.table1.runs import columns, group_runs, row_entry

PAPER_BENCHES = ("mmau", "mmar", "air")
TABLE_FILE, JSON_FILE = "table1.md", "table1.json"
INTERVALS = (
    "In brackets, 95% intervals. On the line of one run (`ours`, `seed N`): the Wilson interval over the "
    "benchmark's questions. On a `mean of N seeds` line: the Student-t interval of the mean across the seeds "
    "(how much training randomness moves the number on these questions)."
)


def build_table(runs: Sequence[Path], pairs: Sequence[tuple[str, str]] = ()) -> dict:
    """table1.json: the rows (a row's runs are its seeds) and the paired comparisons (the paper's chain and
    `pairs`)."""
    entries = [row_entry(group) for group in group_runs(runs)]
    evaluated = {b for e in entries for b in e["ours"]}
    benches = list(PAPER_BENCHES) + sorted(evaluated - set(PAPER_BENCHES))
    paper = paper_table()
    return {"source": paper["source"], "notes": paper["notes"], "benchmarks": benches, "rows": entries,
            "comparisons": comparisons(entries, pairs)}


def interval(cell: dict) -> list[float] | None:
    """The interval shown beside a cell's value: across seeds for several seeds, else the one run's Wilson."""
    return cell["ci95"] if len(cell["per_seed"]) > 1 else cell["per_seed_ci95"][0]


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _rule(header: list[str]) -> str:
    return "|" + "|".join("---" for _ in header) + "|"


def _text(cell: dict | None, seed_index: int | None) -> str:
    """A cell as text: one seed's value and Wilson interval, or (no index) the row's value and its interval."""
    if cell is None:
        return "-"
    if seed_index is None:
        return with_ci(cell["mean"], interval(cell))
    return with_ci(cell["per_seed"][seed_index], cell["per_seed_ci95"][seed_index])


def _our_lines(entry: dict, key: str, keys: list[tuple[str, str]]) -> list[str]:
    """A row's lines over the (bench, column) `keys` of `entry[key]`: its one run (`ours`), or the mean of its
    seeds (`mean of N seeds`) followed by each seed."""
    def values(seed_index: int | None) -> list[str]:
        return [_text(entry[key].get(bench, {}).get(col), seed_index) for bench, col in keys]

    seeds = [r["seed"] for r in entry["runs"]]
    if len(seeds) == 1:
        return [_line([entry["row"], entry["method"], "ours"] + values(None))]
    lines = [_line([entry["row"], entry["method"], f"mean of {len(seeds)} seeds"] + values(None))]
    return lines + [_line(["", "", f"seed {seed}"] + values(k)) for k, seed in enumerate(seeds)]


def _levels(table: dict, bench: str) -> list[str]:
    found = {k for e in table["rows"] for k in e["no_think_rate"].get(bench, {})} - {"all"}
    return ordered(sorted(found), DIFFICULTY_ORDER)


def render_table1(table: dict) -> str:
    benches = table["benchmarks"]
    header = ["Model", "Method", "Source"] + [
        f"{BENCH_TITLES.get(b, b)} {col.capitalize()}" for b in benches for col in columns(b)
    ]
    lines = ["# Table 1: our runs beside the paper's", "", f"Paper: {table['source']}", "",
             "Accuracy (%). `-`: not evaluated (ours) or not in the paper. " + INTERVALS, "",
             _line(header), _rule(header)]
    keys = [(b, c) for b in benches for c in columns(b)]
    for e in table["rows"]:
        lines += _our_lines(e, "ours", keys)
        paper = [e["paper"].get(b, {}).get(c) for b, c in keys]
        lines.append(_line(["", "", "paper"] + ["-" if v is None else f"{v:.2f}" for v in paper]))
    lines += ["", "## No-think rate (%) by difficulty (the paper's Figure 2)", ""]
    for bench in sorted({b for e in table["rows"] for b in e["no_think_rate"]}):
        levels = _levels(table, bench)
        head = ["Model", "Method", "Source"] + [level.capitalize() for level in levels] + ["All"]
        lines += [f"{BENCH_TITLES.get(bench, bench)}:", "", _line(head), _rule(head)]
        for e in table["rows"]:
            if bench in e["no_think_rate"]:
                lines += _our_lines(e, "no_think_rate", [(bench, level) for level in [*levels, "all"]])
        if levels:
            lines += ["", f"![no-think rate by difficulty on {bench}](figure2_{bench}.png)"]
        lines.append("")
    lines += _comparison_section(table)
    lines += ["## Notes", ""] + [f"- {note}" for note in table["notes"]]
    for e in table["rows"]:
        lines += [f"- {e['row']}: {r['run']}" + ("" if r["seed"] is None else f" (seed {r['seed']})")
                  for r in e["runs"]]
    return "\n".join(lines) + "\n"


def _comparison_section(table: dict) -> list[str]:
    if not table["comparisons"]:
        return []
    lines = ["## Paired comparisons", "",
             "B minus A, in points, on the questions both rows were scored on; each question's score is its mean "
             "over the row's seeds. 95% interval: paired bootstrap over the questions (10,000 resamples, seed 0).",
             ""]
    head = ["Benchmark", "A", "B", "B - A", "95% interval", "Questions", "Seeds A / B"]
    lines += [_line(head), _rule(head)]
    for c in table["comparisons"]:
        if c["difference"] is None:
            cells = ["-", c["note"], "0"]
        else:
            cells = [f"{c['difference']:+.2f}", f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]", str(c["questions"])]
        lines.append(_line([BENCH_TITLES.get(c["bench"], c["bench"]), c["a"], c["b"], *cells,
                            f"{c['seeds_a']} / {c['seeds_b']}"]))
    return lines + [""]


def plot_figure2(table: dict, bench: str, path: Path) -> Path | None:
    """Grouped bars: no-think rate per difficulty level, one bar per row (its mean over seeds) with its 95%
    interval; None when the bench has no levels."""
    entries = [e for e in table["rows"] if bench in e["no_think_rate"]]
    levels = _levels(table, bench)
    if not levels:
        return None
    fig = Figure(figsize=(max(6.0, 2.0 + 0.45 * len(levels) * len(entries)), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(entries)
    for k, e in enumerate(entries):
        cells = [e["no_think_rate"][bench].get(level) for level in levels]
        values = [None if c is None else c["mean"] for c in cells]
        intervals = [None if c is None else interval(c) for c in cells]
        seeds = len(e["runs"])
        ax.bar([i + (k - (len(entries) - 1) / 2) * width for i in range(len(levels))], [v or 0.0 for v in values],
               width, yerr=error_bars(values, intervals), capsize=3, ecolor="#333333",
               label=e["row"] if seeds == 1 else f"{e['row']} ({seeds} seeds)")
    ax.set_xticks(range(len(levels)), [level.capitalize() for level in levels])
    ax.set_ylim(0, 125)  # room for the legend above the bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("no-think rate (%), 95% interval")
    ax.set_xlabel("difficulty")
    ax.set_title(f"No-think rate by difficulty: {BENCH_TITLES.get(bench, bench)}")
    ax.legend(fontsize="small", loc="upper center", ncol=min(len(entries), 4))
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def write_table(table: dict, out: str | Path) -> list[Path]:
    """table1.md, table1.json and one figure per benchmark with difficulty levels, into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_FILE).write_text(json.dumps(table, indent=2) + "\n")
    (out / TABLE_FILE).write_text(render_table1(table))
    written = [out / TABLE_FILE, out / JSON_FILE]
    for bench in sorted({b for e in table["rows"] for b in e["no_think_rate"]}):
        figure = plot_figure2(table, bench, out / f"figure2_{bench}.png")
        if figure is not None:
            written.append(figure)
    return written


def write_report(runs: Sequence[Path], out: str | Path, pairs: Sequence[tuple[str, str]] = ()) -> list[Path]:
    """`audio-thinker report`: the table of `runs` written into `out`."""
    return write_table(build_table(runs, pairs), out)
