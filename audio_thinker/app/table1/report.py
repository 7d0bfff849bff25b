"""Table 1 from finished runs, our numbers beside the paper's, and the paper's Figure 2 for every row.

A run is a row of the table by its `row.json` (written by `ablate`) or else by its `config.yaml` (family,
reward variant and prompt mode); its numbers are its evaluations, `<run>/eval/<bench>/results.json`.

    table1.json   {"source", "notes", "benchmarks", "rows": [{"row", "method", "family", "run", "ours",
                   "no_think_rate", "paper"}]}
    table1.md     the table (a line "ours" and a line "paper" per row), the no-think rates, the notes
    figure2_<bench>.png   no-think rate by difficulty, one bar per row (benchmarks with difficulty levels)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from audio_thinker.app.errors import EvalError
from audio_thinker.app.eval.report import BENCH_TITLES, DIFFICULTY_ORDER, ordered
from audio_thinker.app.table1.rows import paper_table, row_of_config, rows
from audio_thinker.app.train.rehearsal import RECORD_FILE as REHEARSAL_RECORD
from audio_thinker.core.presets import load_config

ROW_FILE = "row.json"
PAPER_BENCHES = ("mmau", "mmar", "air")
TASK_COLUMNS = ("sound", "music", "speech", "average")
# Table 1 reports AIR-Bench foundation by its average only.
COLUMNS = {"air": ("average",)}
TABLE_FILE, JSON_FILE = "table1.md", "table1.json"


def columns(bench: str) -> tuple[str, ...]:
    return COLUMNS.get(bench, TASK_COLUMNS)


def _is_sft_run(run: Path) -> bool:
    """An `audio-thinker sft` run logs `sft/loss` where a GRPO run logs rewards."""
    metrics = run / "metrics.jsonl"
    first = metrics.read_text().partition("\n")[0] if metrics.is_file() else ""
    return bool(first) and "sft/loss" in json.loads(first)


def _identity(run: Path) -> dict:
    """row, method, family of a run: its row.json, else what its config.yaml trains."""
    if (run / ROW_FILE).is_file():
        return json.loads((run / ROW_FILE).read_text())
    if not (run / "config.yaml").is_file():
        raise EvalError(f"--runs {run}: neither {ROW_FILE} nor config.yaml: not a run directory")
    config = load_config(str(run / "config.yaml"), saved_run=True)
    sft = _is_sft_run(run)
    row = row_of_config(config, "sft" if sft else "grpo")
    if row is not None:
        return {"row": row.name, "family": row.family, "method": row.method}
    method = f"SFT, target {config.sft.target}" if sft else f"variant {config.reward.variant}"
    return {"row": run.name, "family": config.model.family, "method": f"{method}, prompt {config.prompt.mode}"}


def _ours(results: dict, bench: str) -> dict[str, float | None]:
    by_task = results["by_task"]
    values = {task: by_task.get(task, {}).get("accuracy") for task in TASK_COLUMNS[:-1]}
    values["average"] = results["total"]["accuracy"]
    return {col: values[col] for col in columns(bench)}


def run_entry(run: Path) -> dict:
    """One row of table1.json from a run directory and its evaluations."""
    run = run.resolve()
    identity = _identity(run)
    if (run / REHEARSAL_RECORD).is_file():  # tiny models on the CPU: its numbers are no result (docs/placement.md)
        identity["method"] += " (rehearsal)"
    evals = sorted(p for p in (run / "eval").glob("*/results.json")) if (run / "eval").is_dir() else []
    if not evals:
        raise EvalError(
            f"--runs {run}: no evaluation ({run}/eval/<bench>/results.json); make one with "
            f"audio-thinker eval --model {run}/final --bench B --data FILE --out {run}/eval/B"
        )
    ours, no_think = {}, {}
    for path in evals:
        bench, results = path.parent.name, json.loads(path.read_text())
        ours[bench] = _ours(results, bench)
        rates = results["no_think_rate"]
        no_think[bench] = {**rates["by_difficulty"], "all": rates["total"]}
    paper = rows().get(identity["row"])
    return {
        "row": identity["row"], "method": identity["method"], "family": identity["family"], "run": str(run),
        "ours": ours, "no_think_rate": no_think, "paper": paper.paper if paper is not None else {},
    }


def build_table(runs: Sequence[Path]) -> dict:
    entries = [run_entry(Path(r)) for r in runs]
    seen: dict[str, str] = {}
    for e in entries:
        if e["row"] in seen:
            raise EvalError(f"--runs: {seen[e['row']]} and {e['run']} are both row {e['row']}")
        seen[e["row"]] = e["run"]
    evaluated = {b for e in entries for b in e["ours"]}
    benches = list(PAPER_BENCHES) + sorted(evaluated - set(PAPER_BENCHES))
    paper = paper_table()
    return {"source": paper["source"], "notes": paper["notes"], "benchmarks": benches, "rows": entries}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_table1(table: dict) -> str:
    benches = table["benchmarks"]
    header = ["Model", "Method", "Source"] + [
        f"{BENCH_TITLES.get(b, b)} {col.capitalize()}" for b in benches for col in columns(b)
    ]
    lines = ["# Table 1: our runs beside the paper's", "", f"Paper: {table['source']}", "",
             "Accuracy (%). `-`: not evaluated (ours) or not in the paper.", "",
             _line(header), "|" + "|".join("---" for _ in header) + "|"]
    for e in table["rows"]:
        for source in ("ours", "paper"):
            first = [e["row"], e["method"]] if source == "ours" else ["", ""]
            values = [_cell(e[source].get(b, {}).get(col)) for b in benches for col in columns(b)]
            lines.append(_line(first + [source] + values))
    lines += ["", "## No-think rate (%) by difficulty (the paper's Figure 2)", ""]
    for bench in sorted({b for e in table["rows"] for b in e["no_think_rate"]}):
        levels = ordered(sorted({k for e in table["rows"] for k in e["no_think_rate"].get(bench, {})} - {"all"}),
                         DIFFICULTY_ORDER)
        head = ["Model"] + [level.capitalize() for level in levels] + ["All"]
        lines += [f"{BENCH_TITLES.get(bench, bench)}:", "", _line(head), "|" + "|".join("---" for _ in head) + "|"]
        for e in table["rows"]:
            rates = e["no_think_rate"].get(bench)
            if rates is not None:
                lines.append(_line([e["row"]] + [_cell(rates.get(level)) for level in [*levels, "all"]]))
        if levels:
            lines += ["", f"![no-think rate by difficulty on {bench}](figure2_{bench}.png)"]
        lines.append("")
    lines += ["## Notes", ""] + [f"- {note}" for note in table["notes"]]
    lines += [f"- {e['row']}: {e['run']}" for e in table["rows"]]
    return "\n".join(lines) + "\n"


def plot_figure2(table: dict, bench: str, path: Path) -> Path | None:
    """Grouped bars: no-think rate per difficulty level, one bar per row; None when the bench has no levels."""
    entries = [e for e in table["rows"] if bench in e["no_think_rate"]]
    levels = ordered(sorted({k for e in entries for k in e["no_think_rate"][bench]} - {"all"}), DIFFICULTY_ORDER)
    if not levels:
        return None
    fig = Figure(figsize=(max(6.0, 2.0 + 0.45 * len(levels) * len(entries)), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(entries)
    for k, e in enumerate(entries):
        values = [e["no_think_rate"][bench].get(level) or 0.0 for level in levels]
        ax.bar([i + (k - (len(entries) - 1) / 2) * width for i in range(len(levels))], values, width, label=e["row"])
    ax.set_xticks(range(len(levels)), [level.capitalize() for level in levels])
    ax.set_ylim(0, 125)  # room for the legend above the bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("no-think rate (%)")
    ax.set_xlabel("difficulty")
    ax.set_title(f"No-think rate by difficulty: {BENCH_TITLES.get(bench, bench)}")
    ax.legend(fontsize="small", loc="upper center", ncol=min(len(entries), 4))
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def write_report(runs: Sequence[Path], out: str | Path) -> list[Path]:
    """table1.md, table1.json and one figure per benchmark with difficulty levels, into `out`."""
    table = build_table(runs)
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
