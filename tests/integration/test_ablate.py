"""`audio-thinker ablate` end to end on the tiny run: two rows of Table 1, the base model (evaluated as it is)
and grpo-a (one GRPO step, then evaluated), the table written beside the paper's numbers; a rerun keeps what is
done; `report` rebuilds the same table. (The rows' configs, every row included, are checked in
tests/unit/test_table1.py; one training run here keeps the suite's time.)"""

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

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("qwen2-audio-base", "grpo-a")
# A tiny training run and two evaluations in the fixture (and the session's tiny models, when first).
pytestmark = pytest.mark.timeout(1200)


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
    args = ["ablate", "--rows", ",".join(ROWS), "--out", str(work / "out"), "--eval-limit", "4", *overrides]
    first = audio_thinker(args, work, timeout=1100)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return work, args, first


def test_the_grpo_row_is_a_finished_run_and_the_base_row_evaluates_the_policy_as_it_is(ablation, warm_policy):
    work, _, _ = ablation
    run = work / "out" / "grpo-a"
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    config = load_config(str(run / "config.yaml"))
    assert (config.reward.variant, config.prompt.mode, config.run.total_steps) == ("grpo", "no_think", 1)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    base = work / "out" / "qwen2-audio-base"
    assert json.loads((base / "row.json").read_text())["policy"] == str(Path(warm_policy).resolve())
    assert not (base / "config.yaml").exists()  # nothing trained
    for row in ROWS:
        predictions = json.loads((work / "out" / row / "eval" / "synthetic" / "predictions.json").read_text())
        assert len(predictions) == 4  # --eval-limit


def test_the_table_holds_each_rows_evaluation_beside_the_papers_numbers(ablation):
    work, _, _ = ablation
    table = json.loads((work / "out" / "table1.json").read_text())
    assert [e["row"] for e in table["rows"]] == list(ROWS)
    md = (work / "out" / "table1.md").read_text()
    for entry in table["rows"]:
        results = json.loads((work / "out" / entry["row"] / "eval" / "synthetic" / "results.json").read_text())
        assert entry["ours"]["synthetic"]["average"] == results["total"]["accuracy"]
        assert entry["no_think_rate"]["synthetic"]["all"] == results["no_think_rate"]["total"]
        assert entry["paper"] == rows()[entry["row"]].paper
        mmau = entry["paper"]["mmau"]
        assert f"| paper | {mmau['sound']:.2f} | {mmau['music']:.2f} |" in md
    # grpo-a is trained and evaluated answer-only: it never thinks.
    assert table["rows"][1]["no_think_rate"]["synthetic"]["all"] in (100.0, None)
    assert (work / "out" / "figure2_synthetic.png").read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_keeps_what_is_done_and_report_rebuilds_the_table(ablation):
    work, args, _ = ablation
    final = work / "out" / "grpo-a" / "final"
    before = {p: p.stat().st_mtime_ns for p in final.iterdir()}
    again = audio_thinker(args, work, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("training finished before, kept") == 1
    assert again.stderr.count("evaluated before with the same arguments, kept") == 2
    assert {p: p.stat().st_mtime_ns for p in final.iterdir()} == before
    report = audio_thinker(["report", "--runs", *(str(work / "out" / r) for r in ROWS), "--out", str(work / "rep")],
                           work, timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (work / "rep" / "table1.json").read_text() == (work / "out" / "table1.json").read_text()
