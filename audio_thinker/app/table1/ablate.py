"""`audio-thinker ablate`: rows of the paper's Table 1 as separate runs, each evaluated, then the table.

    OUT/
      <row>/seed-<s>/     a trained row's run directory for seed s (`audio-thinker train` with run.seed=s)
        row.json          which row and seed it is, the policy evaluated and the prompt it is evaluated with
        eval/<bench>/     `audio-thinker eval` output (results.json, report.md, predictions.json, ablate.json)
      <base row>/         a base row (nothing trained, so no seed): row.json and eval/<bench>/ only
      table1.md, table1.json, figure2_<bench>.png      (report.py)

`--seeds N` trains every row N times, with run.seed = the config's run.seed, +1, ..., +N-1 (data and every
other key the same). Every run's config is built and validated before the first run starts. A rerun with the
same OUT skips a finished training and an evaluation already done with the same arguments, and resumes an
unfinished training (`train --resume`, which refuses a run-defining change).
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from audio_thinker.app.errors import TrainingError
from audio_thinker.app.table1.jobs import run_command
from audio_thinker.app.table1.options import AblateOptions, BenchFile
from audio_thinker.app.table1.compare import comparison_lines
from audio_thinker.app.table1.report import build_table, write_table
from audio_thinker.app.table1.rows import ROW_KEYS, Row, all_rows
from audio_thinker.app.table1.runs import ROW_FILE
from audio_thinker.app.train.rehearsal import rehearsal_config
from audio_thinker.core.config import Config
from audio_thinker.core.log import get_logger
from audio_thinker.core.options import OptionError
from audio_thinker.core.presets import ConfigError, load_config

log = get_logger(__name__)
# The held-out split's layout -> the benchmark layout `eval` reads it as.
BENCH_OF_FORMAT = {"avqa": "synthetic", "mmau": "mmau", "mmar": "mmar", "air": "air", "mmau-pro": "mmau-pro",
                   "mmsu": "mmsu"}
EVAL_RECORD = "ablate.json"


@dataclass(frozen=True)
class RowPlan:
    """One run of a row: a seed of a trained row, or a base row's evaluation."""

    row: Row
    dir: Path
    config: Config  # the run's training config (a base row: the preset's, for its policy and prompt settings)
    train_args: list[str] | None  # `audio-thinker train` arguments; None: nothing to train (a base row)
    seed: int | None = None  # run.seed of a trained run; None for a base row

    @property
    def policy(self) -> Path:
        return self.dir / "final" if self.train_args is not None else Path(self.config.model.policy_path).resolve()


def _absolute(preset: str | None) -> list[str]:
    """`--config` of the runs: a file becomes an absolute path (a Ray job runs elsewhere), a name stays."""
    if preset is None:
        return []
    return ["--config", str(Path(preset).resolve()) if Path(preset).is_file() else preset]


def _check_rows(names: list[str], family: str) -> list[Row]:
    table = all_rows()
    picked = []
    for name in names:
        if name not in table:
            close = difflib.get_close_matches(name, table, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise OptionError(f"--rows: unknown row {name!r}{hint} (rows: {', '.join(table)})")
        row = table[name]
        if row.family != family:
            own = ", ".join(r.name for r in table.values() if r.family == family)
            raise OptionError(
                f"--rows: {name} is a {row.family} row but the config trains model.family={family} (its rows: {own}); "
                f"use the {row.family} preset, or on the tiny run add model.family={row.family} "
                f"model.policy_path=artifacts/tiny/{row.family}"
            )
        picked.append(row)
    return picked


def plan_ablation(options: AblateOptions, overrides: list[str]) -> tuple[Path, list[BenchFile], list[RowPlan]]:
    """Every row's run directory and validated config, and the benchmarks; raises before anything runs."""
    clash = sorted({o.split("=", 1)[0] for o in overrides} & set(ROW_KEYS))
    if clash:
        raise OptionError(f"override {', '.join(clash)}: set by each row of Table 1 (remove it, or run `train`)")
    if any(o.split("=", 1)[0] in ("run.output_dir", "run.name", "run.resume") for o in overrides):
        raise OptionError("overrides run.output_dir / run.name / run.resume: ablate sets them (use --out)")
    base = row_config(options, options.preset, overrides)
    seeds = [base.run.seed + k for k in range(options.seeds)]  # run.seed (an override too) is the first
    overrides = [o for o in overrides if o.split("=", 1)[0] != "run.seed"]  # each run sets its own
    out = Path(options.out or f"runs/ablate-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    benches = options.benchmarks()
    if not benches:
        if base.data.eval_manifest is None:
            raise OptionError("no --bench and the config has no data.eval_manifest: nothing to evaluate the rows on")
        benches = [BenchFile(bench=BENCH_OF_FORMAT[base.data.eval_format], data=base.data.eval_manifest)]
    for a, b in options.pairs():  # before any training: a typo here would otherwise surface hours later
        if a not in options.rows or b not in options.rows:
            raise OptionError(f"--compare {a},{b}: compares rows of --rows ({', '.join(options.rows)})")
    plans = []
    for row in _check_rows(options.rows, base.model.family):
        if row.kind == "base":
            plans.append(RowPlan(row, out / row.name, base, None))
            continue
        plans += [_seed_plan(row, out / row.name / f"seed-{seed}", seed, options, overrides) for seed in seeds]
    return out, benches, plans


def row_config(options: AblateOptions, preset: str | None, keys: list[str], sft: bool = False) -> Config:
    """A row's config, with the rehearsal's swaps under --rehearse (app/train/rehearsal.py)."""
    return rehearsal_config(preset, keys, sft)[0] if options.rehearse else load_config(preset, keys)


def _seed_plan(row: Row, folder: Path, seed: int, options: AblateOptions, overrides: list[str]) -> RowPlan:
    """The validated config and `train` / `sft` arguments of one seed of a trained row."""
    preset, data = options.preset, []
    if row.kind == "sft":
        preset = options.sft_preset or options.preset
        if row.method == "SFT+CoT":
            if options.cot_data is None:
                raise OptionError(f"--rows {row.name}: an SFT+CoT row trains on rationales: give --cot-data FILE "
                                  "(`audio-thinker make-cot` writes it)")
            if not Path(options.cot_data).is_file():
                raise FileNotFoundError(f"--cot-data {options.cot_data}: not a file")
            data = [f"data.train_manifest={Path(options.cot_data).resolve()}"]
    run_keys = [*row.overrides, *data, *overrides, f"run.seed={seed}", f"run.output_dir={folder}",
                f"run.name={row.name}-seed-{seed}"]
    try:
        config = row_config(options, preset, run_keys, sft=row.kind == "sft")
    except ConfigError as exc:
        raise ConfigError(f"row {row.name}: {exc}") from None
    if config.model.family != row.family:
        raise OptionError(f"--rows {row.name}: --sft-preset {preset} trains model.family={config.model.family}, "
                          f"the row is {row.family}")
    command = ["sft" if row.kind == "sft" else "train", *(["--rehearse"] if options.rehearse else [])]
    return RowPlan(row, folder, config, [*command, *_absolute(preset), *run_keys], seed)


def _finished(run: Path) -> bool:
    status = run / "status.json"
    return status.is_file() and json.loads(status.read_text())["state"] == "finished" and (run / "final").is_dir()


def _eval_args(plan: RowPlan, bench: BenchFile, options: AblateOptions) -> list[str]:
    c = plan.config
    args = [
        "eval", "--model", str(plan.policy), "--bench", bench.bench, "--data", str(Path(bench.data).resolve()),
        "--out", str(plan.dir / "eval" / bench.bench), "--prompt", plan.row.prompt_mode,
        "--engine", options.eval_engine, "--max-new-tokens", str(c.rollout.max_new_tokens), "--dtype", c.model.dtype,
    ]
    if options.eval_limit is not None:
        args += ["--limit", str(options.eval_limit)]
    if c.prompt.letter_choices:
        args.append("--letter-choices")
    if c.prompt.template_file is not None:
        args += ["--template-file", str(Path(c.prompt.template_file).resolve())]
    if bench.data == c.data.eval_manifest:  # the held-out split: its audio paths start at data.eval_audio_root
        args += ["--audio-root", str(Path(c.data.held_out_audio_root).resolve())]
    return args


def _run(plan: RowPlan, what: str, args: list[str]) -> None:
    code = run_command(args)
    if code != 0:
        raise TrainingError(
            f"row {plan.row.name}: {what} failed (exit code {code}; run directory {plan.dir}); "
            "rerun the same `audio-thinker ablate` command to continue from there"
        )


def run_row(plan: RowPlan, benches: list[BenchFile], options: AblateOptions) -> None:
    """Train the run (unless done), then evaluate it on each benchmark (unless done with the same arguments)."""
    plan.dir.mkdir(parents=True, exist_ok=True)
    name = plan.row.name if plan.seed is None else f"{plan.row.name} seed {plan.seed}"
    record = {"row": plan.row.name, "family": plan.row.family, "method": plan.row.method, "seed": plan.seed,
              "policy": str(plan.policy), "prompt": plan.row.prompt_mode}
    (plan.dir / ROW_FILE).write_text(json.dumps(record, indent=2) + "\n")
    if plan.train_args is not None:
        if _finished(plan.dir):
            log.info("row %s: training finished before, kept (%s)", name, plan.dir)
        else:
            resume = ["--resume"] if (plan.dir / "config.yaml").is_file() else []
            _run(plan, "training", [*plan.train_args, *resume])
    for bench in benches:
        args = _eval_args(plan, bench, options)
        done = plan.dir / "eval" / bench.bench / EVAL_RECORD
        if done.is_file() and json.loads(done.read_text()) == args:
            log.info("row %s: %s evaluated before with the same arguments, kept", name, bench.bench)
            continue
        _run(plan, f"evaluation on {bench.bench}", args)
        done.write_text(json.dumps(args) + "\n")


def run_ablation(options: AblateOptions, overrides: list[str]) -> Path:
    """The whole command: plan (every check first), the trained runs, then the base rows, then the table and
    the paired comparisons (logged as well)."""
    out, benches, plans = plan_ablation(options, overrides)
    pairs = options.pairs()
    seeds = sorted({p.seed for p in plans if p.seed is not None})
    log.info("ablation of %s (trained with seeds %s) into %s, evaluated on %s",
             ", ".join(dict.fromkeys(p.row.name for p in plans)), ", ".join(map(str, seeds)) or "-", out,
             ", ".join(b.bench for b in benches))
    for plan in sorted(plans, key=lambda p: p.train_args is None):  # a base row's tiny policy is built by a run
        run_row(plan, benches, options)
    table = build_table([p.dir for p in plans], pairs)
    write_table(table, out)
    for line in comparison_lines(table):
        log.info("%s", line)
    return out
