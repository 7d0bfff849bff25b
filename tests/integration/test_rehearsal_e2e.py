"""One whole rehearsal (`--rehearse`, docs/placement.md): the qwen2-audio-7b preset's topology for 2 steps on a local
Ray cluster that declares its 8 GPUs, every actor on the CPU: 5 ZeRO-3 trainer ranks (rank 0 sharing its GPU with
the reference), 2 vLLM rollout workers fed by one broadcast, the vLLM judge. One `audio-thinker train` subprocess
for the module, on the suite's tiny models and synthetic set (keys given on the command line, so not swapped), with
the preset's budgets swapped down and 24 new tokens; each test reads what it left.

The checks' broken cases (a worker given other weights, a placement moved, a rank's partition perturbed, a judge
that disagrees) are fed to the check functions in tests/unit/test_rehearsal.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from audio_thinker.app.train.rehearsal_checks import JUDGE_ATOL, UPDATE_RTOL
from audio_thinker.core.presets import load_config

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STEPS = 2
DEADLINE_S = 1500  # the run's own deadline: far above its measured time, so a hang fails instead of waiting


@pytest.fixture(scope="module")
def rehearsal(tiny_models, warm_policy, synthetic, tmp_path_factory):
    """The rehearsal's run directory and console output, once it has ended (its exit code asserted by a test)."""
    work = tmp_path_factory.mktemp("rehearsal")
    run, log = work / "run", work / "train.log"
    args = [
        "train", "--config", "qwen2-audio-7b", "--rehearse", f"run.total_steps={STEPS}", f"run.output_dir={run}",
        f"model.policy_path={warm_policy}", f"model.judge_path={tiny_models['qwen3_judge']}",
        f"data.train_manifest={synthetic / 'train.jsonl'}", f"data.eval_manifest={synthetic / 'eval.jsonl'}",
        "data.eval_format=avqa", f"data.audio_root={synthetic}", f"data.eval_audio_root={synthetic}",
        "rollout.max_new_tokens=24",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "audio-thinker"), *args], cwd=work, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        code = proc.wait(timeout=DEADLINE_S)
    finally:
        try:  # a hung run, and whatever of Ray's it left behind in its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return run, log.read_text(), code


def checks(run: Path) -> list[dict]:
    return json.loads((run / "rehearsal.json").read_text())["checks"]


def test_the_rehearsal_runs_its_steps_and_keeps_the_presets_topology(rehearsal):
    run, console, code = rehearsal
    assert code == 0, console[-3000:]
    assert "rehearsal of qwen2-audio-7b: swapped" in console and "model.dtype: bfloat16 -> float32" in console
    assert "Loading weights" not in console  # the judge check's own load draws no bar on the run's console
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["timing_s/rehearsal"] > 0 for m in metrics)
    assert (run / "final" / "config.json").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    t, r, j, ref = saved["trainer"], saved["rollout"], saved["judge"], saved["reference"]
    assert (t["num_ranks"], t["zero_stage"], t["num_gpus_per_rank"], t["sync_backend"]) == (5, 3, 1.0, "broadcast")
    assert (r["num_workers"], r["num_gpus_per_worker"], j["backend"], j["num_gpus"]) == (2, 1.0, "vllm", 1.0)
    assert (ref["placement"], ref["num_gpus"], saved["run"]["num_gpus"]) == ("colocate", 0.25, 8)
    assert saved["run"]["rehearse"] is True and saved["model"]["dtype"] == "float32"
    resumed = load_config(str(run / "config.yaml"), saved_run=True)  # what --resume and `report` read back
    assert resumed.run.rehearse and resumed.trainer.num_ranks == 5


def test_the_swaps_are_recorded_apart_from_the_topology(rehearsal):
    run, _, _ = rehearsal
    record = json.loads((run / "rehearsal.json").read_text())
    swapped = {s["what"]: s for s in record["swaps"]}
    assert swapped["model.dtype"]["preset"] == "bfloat16" and swapped["model.dtype"]["rehearsal"] == "float32"
    assert {"GPUs", "compute device", "collectives", "CPU threads per actor", "judge.startup_timeout_s"} <= set(swapped)
    assert "model.policy_path" not in swapped  # given on the command line: the user's, not a swap
    assert not any(k.startswith(("trainer.", "reference.")) for k in swapped)
    assert record["cluster"] == {"cpus": 37, "gpus": 8}


def test_every_check_ran_and_passed_within_its_tolerance(rehearsal):
    run, _, _ = rehearsal
    done = checks(run)
    assert all(c["ok"] for c in done), [c for c in done if not c["ok"]]
    by_name = {}
    for c in done:
        by_name.setdefault(c["check"], []).append(c)
    assert [c["step"] for c in by_name["weights"]] == [1, 2]
    assert [c["step"] for c in by_name["judge"]] == [1, 2]
    (update,) = by_name["update"]
    assert update["step"] == 1 and update["measured"]["ranks"] == 5
    assert update["measured"]["update_rel_l2"] <= UPDATE_RTOL and update["measured"]["update_max_abs"] > 0
    assert sum(c["measured"]["scores"] for c in by_name["judge"]) > 0
    assert all(c["measured"]["max_abs_diff"] <= JUDGE_ATOL for c in by_name["judge"])


def test_ray_placed_every_actor_as_the_plan_says_on_declared_gpus(rehearsal):
    run, _, _ = rehearsal
    (placement,) = [c for c in checks(run) if c["check"] == "placement"]
    where = placement["measured"]
    assert len(where) == 9  # 5 ranks, the reference, 2 workers, the judge
    assert where["reference model"]["plan"] == where["trainer rank 0"]["plan"] == ["node 0 GPU 0"]
    assert where["reference model"]["ray"] == where["trainer rank 0"]["ray"]
    gpus = {w["ray"][0] for name, w in where.items() if name != "reference model"}
    assert len(gpus) == 8  # every other actor on a GPU of its own
