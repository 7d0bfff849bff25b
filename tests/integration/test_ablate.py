"""`audio-thinker ablate --seeds 2` end to end on the tiny run: two rows of Table 1, the base model (evaluated as it
is, once: nothing trained, no seed) and grpo-a (one GRPO step with each of two seeds, each evaluated), the table
written with each seed's numbers, their mean and its interval beside the paper's numbers, and the paired
comparison of the two rows; a rerun keeps what is done; `report` rebuilds the same table. (The rows' configs,
every row included, and the statistics are checked in tests/unit/test_table1.py and test_stats.py; two one-step
training runs here keep the suite's time.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from audio_thinker.app.table1.rows import rows
from audio_thinker.core.presets import load_config
from audio_thinker.core.stats import mean_interval

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("qwen2-audio-base", "grpo-a")
SEEDS = (0, 1)
# Two tiny training runs and three evaluations in the fixture (and the session's tiny models, when first).
pytestmark = pytest.mark.timeout(1500)


def audio_thinker(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """The command in its own process group, ended as a group on a timeout (its runs start Ray and engines)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)  # local runs, one after the other
    proc = subprocess.Popen([str(bin_dir / "audio-thinker"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"audio-thinker {args[0]} ran past {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def ablation(tiny_run, tmp_path_factory):
    work = tmp_path_factory.mktemp("ablate")
    overrides = [o for o in tiny_run(work, 1) if not o.startswith("run.output_dir=")]
    # The transformers engine for the rows' rollouts and evaluations: what is checked here is the table, not the
    # engines (the suite's other runs use vLLM), and it starts in seconds.
    args = ["ablate", "--rows", ",".join(ROWS), "--out", str(work / "out"), "--eval-limit", "4", "--seeds", "2",
            "--compare", ",".join(ROWS), "--eval-engine", "transformers", *overrides, "rollout.engine=transformers"]
    first = audio_thinker(args, work, timeout=1400)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return work, args, first


def runs(work: Path) -> list[Path]:
    """The run directories ablate made: the base row's, then grpo-a's seeds."""
    return [work / "out" / ROWS[0]] + [work / "out" / ROWS[1] / f"seed-{seed}" for seed in SEEDS]


def test_each_seed_of_the_grpo_row_is_a_finished_run_and_the_base_row_evaluates_the_policy_once(ablation, warm_policy):
    work, _, _ = ablation
    for seed in SEEDS:
        run = work / "out" / "grpo-a" / f"seed-{seed}"
        assert json.loads((run / "status.json").read_text())["state"] == "finished"
        config = load_config(str(run / "config.yaml"))
        assert (config.reward.variant, config.prompt.mode, config.run.total_steps) == ("grpo", "no_think", 1)
        assert config.run.seed == seed and json.loads((run / "row.json").read_text())["seed"] == seed
        assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    base = work / "out" / "qwen2-audio-base"
    assert json.loads((base / "row.json").read_text())["policy"] == str(Path(warm_policy).resolve())
    assert not (base / "config.yaml").exists() and not list(base.glob("seed-*"))  # nothing trained, no seeds
    for run in runs(work):
        predictions = json.loads((run / "eval" / "synthetic" / "predictions.json").read_text())
        assert len(predictions) == 4  # --eval-limit


def test_the_table_holds_each_seed_their_mean_and_interval_and_the_paired_difference(ablation):
    work, _, first = ablation
    table = json.loads((work / "out" / "table1.json").read_text())
    assert [e["row"] for e in table["rows"]] == list(ROWS)
    results = [json.loads((run / "eval" / "synthetic" / "results.json").read_text()) for run in runs(work)]
    base, grpo = table["rows"]
    assert [r["seed"] for r in grpo["runs"]] == list(SEEDS) and [r["seed"] for r in base["runs"]] == [None]
    assert base["ours"]["synthetic"]["average"]["per_seed"] == [results[0]["total"]["accuracy"]]
    average = grpo["ours"]["synthetic"]["average"]
    per_seed = [r["total"]["accuracy"] for r in results[1:]]
    mean, ci = mean_interval(per_seed)
    assert average["per_seed"] == per_seed and average["mean"] == mean
    assert average["ci95"] == [max(0.0, ci[0]), min(100.0, ci[1])]
    assert average["per_seed_ci95"] == [r["total"]["ci95"] for r in results[1:]]
    for entry in table["rows"]:
        assert entry["paper"] == rows()[entry["row"]].paper
    md = (work / "out" / "table1.md").read_text()
    mmau = rows()["grpo-a"].paper["mmau"]
    assert f"| paper | {mmau['sound']:.2f} | {mmau['music']:.2f} |" in md
    assert "| grpo-a | GRPO | mean of 2 seeds |" in md and "|  |  | seed 1 |" in md
    # grpo-a is trained and evaluated answer-only: it never thinks.
    assert set(grpo["no_think_rate"]["synthetic"]["all"]["per_seed"]) <= {100.0, None}
    assert (work / "out" / "figure2_synthetic.png").read_bytes()[:4] == b"\x89PNG"
    # The paired comparison: every one of the 4 questions is scored in both rows, so B - A is the mean of the
    # seeds' accuracies minus the base's, up to rounding.
    (comparison,) = table["comparisons"]
    assert (comparison["a"], comparison["b"], comparison["questions"], comparison["seeds_b"]) == (*ROWS, 4, 2)
    assert comparison["difference"] == pytest.approx(sum(per_seed) / 2 - results[0]["total"]["accuracy"], abs=0.01)
    lo, hi = comparison["ci95"]
    assert lo <= comparison["difference"] <= hi
    assert f"{ROWS[0]} -> {ROWS[1]} on synthetic: {comparison['difference']:+.2f} points" in first.stderr


def test_a_rerun_keeps_what_is_done_and_report_rebuilds_the_table(ablation):
    work, args, _ = ablation
    final = work / "out" / "grpo-a" / "seed-1" / "final"
    before = {p: p.stat().st_mtime_ns for p in final.iterdir()}
    again = audio_thinker(args, work, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("training finished before, kept") == 2
    assert again.stderr.count("evaluated before with the same arguments, kept") == 3
    assert {p: p.stat().st_mtime_ns for p in final.iterdir()} == before
    report = audio_thinker(["report", "--runs", *map(str, runs(work)), "--out", str(work / "rep"),
                            "--compare", ",".join(ROWS)], work, timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (work / "rep" / "table1.json").read_text() == (work / "out" / "table1.json").read_text()
