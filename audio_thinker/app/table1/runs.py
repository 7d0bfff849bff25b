"""Run directories read as rows of Table 1: which row and seed a run is, its evaluations, and a row's seeds
pooled into cells (each seed's value with its Wilson interval, their mean with its Student-t interval).

A run is a row by its `row.json` (written by `ablate`, with the run's seed) or else by its `config.yaml`
(family, reward variant and prompt mode; its seed is run.seed); its numbers are its evaluations,
`<run>/eval/<bench>/results.json`. Runs of the same row are its seeds: they must have different seeds and
the same evaluated benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from audio_thinker.app.errors import EvalError
from audio_thinker.app.table1.rows import all_rows, row_of_config
from audio_thinker.app.train.rehearsal import RECORD_FILE as REHEARSAL_RECORD
from audio_thinker.core.presets import load_config
from audio_thinker.core.stats import mean_interval, wilson_percent

ROW_FILE = "row.json"
TASK_COLUMNS = ("sound", "music", "speech", "average")
# Benchmarks Table 1 reports by their average only (AIR-Bench foundation; MMSU's groups are not sound / music /
# speech).
AVERAGE_ONLY = ("air", "mmsu")


def columns(bench: str) -> tuple[str, ...]:
    return ("average",) if bench in AVERAGE_ONLY else TASK_COLUMNS


@dataclass(frozen=True)
class RunRecord:
    """One run directory: the row it is, its seed (None: nothing trained) and each benchmark's results.json."""

    path: Path
    row: str
    method: str
    family: str
    seed: int | None
    results: dict[str, dict]


def _is_sft_run(run: Path) -> bool:
    """An `audio-thinker sft` run logs `sft/loss` where a GRPO run logs rewards."""
    metrics = run / "metrics.jsonl"
    first = metrics.read_text().partition("\n")[0] if metrics.is_file() else ""
    return bool(first) and "sft/loss" in json.loads(first)


def _identity(run: Path) -> dict:
    """row, method, family, seed of a run: its row.json, else what its config.yaml trains."""
    if (run / ROW_FILE).is_file():
        return {"seed": None, **json.loads((run / ROW_FILE).read_text())}
    if not (run / "config.yaml").is_file():
        raise EvalError(f"--runs {run}: neither {ROW_FILE} nor config.yaml: not a run directory")
    config = load_config(str(run / "config.yaml"), saved_run=True)
    sft = _is_sft_run(run)
    row = row_of_config(config, "sft" if sft else "grpo")
    if row is not None:
        return {"row": row.name, "family": row.family, "method": row.method, "seed": config.run.seed}
    method = f"SFT, target {config.sft.target}" if sft else f"variant {config.reward.variant}"
    return {"row": run.name, "family": config.model.family, "method": f"{method}, prompt {config.prompt.mode}",
            "seed": config.run.seed}


def read_run(run: Path) -> RunRecord:
    run = run.resolve()
    identity = _identity(run)
    if (run / REHEARSAL_RECORD).is_file():  # tiny models on the CPU: its numbers are no result (docs/placement.md)
        identity["method"] += " (rehearsal)"
    evals = sorted((run / "eval").glob("*/results.json")) if (run / "eval").is_dir() else []
    if not evals:
        raise EvalError(
            f"--runs {run}: no evaluation ({run}/eval/<bench>/results.json); make one with "
            f"audio-thinker eval --model {run}/final --bench B --data FILE --out {run}/eval/B"
        )
    results = {path.parent.name: json.loads(path.read_text()) for path in evals}
    return RunRecord(run, identity["row"], identity["method"], identity["family"], identity["seed"], results)


def group_runs(runs: Sequence[Path]) -> list[list[RunRecord]]:
    """The runs by row (rows in the order they first appear), checked: a row's seeds differ and were evaluated
    on the same benchmarks."""
    groups: dict[str, list[RunRecord]] = {}
    for record in map(read_run, runs):
        group = groups.setdefault(record.row, [])
        for other in group:
            if other.seed == record.seed:
                seed = "no seed (nothing trained)" if record.seed is None else f"seed {record.seed}"
                raise EvalError(f"--runs: {other.path} and {record.path} are both row {record.row} with {seed}")
            if set(other.results) != set(record.results):
                benches = [", ".join(sorted(r.results)) for r in (other, record)]
                raise EvalError(f"--runs: {other.path} and {record.path} are seeds of row {record.row} but were "
                                f"evaluated on {benches[0]} and {benches[1]}")
        group.append(record)
    return [sorted(group, key=lambda r: (r.seed is not None, r.seed or 0)) for group in groups.values()]


def cell(values: Sequence[float | None], intervals: Sequence[list[float] | None]) -> dict:
    """One table cell from a row's seeds: each seed's value and Wilson interval, and their mean with its 95%
    Student-t interval across the seeds (null below 2 seeds; clipped to the percentages' [0, 100])."""
    present = [v for v in values if v is not None]
    mean, ci = mean_interval(present) if present else (None, None)
    if ci is not None:
        ci = [max(0.0, ci[0]), min(100.0, ci[1])]
    return {"mean": mean, "ci95": ci, "per_seed": list(values), "per_seed_ci95": list(intervals)}


def _accuracy(results: dict, column: str) -> tuple[float | None, list[float] | None]:
    group = results["total"] if column == "average" else results["by_task"].get(column)
    if group is None or group.get("accuracy") is None:
        return None, None
    if "ci95" in group:
        return group["accuracy"], group["ci95"]
    return group["accuracy"], wilson_percent(group["correct"], group["count"]) if "count" in group else None


def _rates(results: dict) -> dict[str, tuple[float | None, list[float] | None]]:
    """No-think rate per difficulty level and "all", with its interval (results.json of older runs have none)."""
    rates = results["no_think_rate"]
    cis = rates.get("ci95", {"total": None, "by_difficulty": {}})
    out = {level: (value, cis["by_difficulty"].get(level)) for level, value in rates["by_difficulty"].items()}
    return {**out, "all": (rates["total"], cis["total"])}


def row_entry(group: list[RunRecord]) -> dict:
    """One row of table1.json from the runs of its seeds."""
    first = group[0]
    ours, no_think = {}, {}
    for bench in first.results:
        pairs = {col: [_accuracy(r.results[bench], col) for r in group] for col in columns(bench)}
        ours[bench] = {col: cell([v for v, _ in p], [c for _, c in p]) for col, p in pairs.items()}
        rates = [_rates(r.results[bench]) for r in group]
        levels = list(dict.fromkeys(level for r in rates for level in r))
        no_think[bench] = {level: cell([r.get(level, (None, None))[0] for r in rates],
                                       [r.get(level, (None, None))[1] for r in rates]) for level in levels}
    paper = all_rows().get(first.row)
    return {
        "row": first.row, "method": first.method, "family": first.family,
        "runs": [{"seed": r.seed, "run": str(r.path)} for r in group],
        "ours": ours, "no_think_rate": no_think, "paper": paper.paper if paper is not None else {},
    }
