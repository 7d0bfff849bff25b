"""A whole tiny run whose rollout worker is killed (SIGKILL, by pid) in the middle of step 2's generation, whose
reference is killed in the middle of step 3's log-probs and whose trainer rank 1 is killed in the middle of step
4's update: Ray restarts the worker and the reference, the worker gets weights version 1 (checksum checked)
before it generates again, the lost requests are generated again with their seeds, the reference's checksum is
the one it had and its call is made again; the driver restarts the trainer group, loads step 3's checkpoint,
rewinds the workers to it and does step 4 again. The run finishes with every step once, and its samples,
rewards, losses and KL are those of the suite's undisturbed `audio-thinker train` run of the same config
(`cli_run`, tests/conftest.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from faults import KillOnLogLine
from test_train_e2e import COMPARED, check_step_dump, read_metrics

from audio_thinker.app.train.driver import run_training
from audio_thinker.core.presets import load_config
from conftest import CLI_RUN_PLACEMENT, CLI_RUN_STEPS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def uninterrupted(cli_run) -> Path:
    run, proc, log = cli_run
    assert proc.wait(timeout=1200) == 0, log.read_text()[-3000:]
    return run


def responses(run: Path, step: int) -> list[str]:
    rows = (run / "rollouts" / f"step_{step:06d}.jsonl").read_text().splitlines()
    return [json.loads(line)["response"] for line in rows]


@pytest.mark.timeout(1800)  # with the session's cli_run (its setup) when this test is the first to need it
def test_a_run_whose_worker_and_reference_die_mid_call_gives_the_undisturbed_rewards(
    ray_session, actor_logs, tiny_run, uninterrupted, tmp_path
):
    out = tmp_path / "run"
    logs = actor_logs  # the run joins the session's Ray, whose actors write here
    config = load_config(None, [*tiny_run(out, CLI_RUN_STEPS), *CLI_RUN_PLACEMENT])
    # Step 2's generation is the first call that asks for weights version 1; step 3's log-probs the third call.
    worker_kill = KillOnLogLine(logs, "rollout-worker", r"generating .* at least 1 asked", nth=1)
    reference_kill = KillOnLogLine(logs, "reference", r"log-probs of \d+ completions", nth=3)
    trainer_kill = KillOnLogLine(logs, "trainer-rank-1", r"train step on", nth=4)
    killers = (worker_kill, reference_kill, trainer_kill)
    for killer in killers:
        killer.start()
    try:
        run_training(config, actor_logs=logs)
    finally:
        for killer in killers:
            killer.stop()
    assert all(killer.killed for killer in killers)

    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, CLI_RUN_STEPS + 1))  # every step once
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    recovery = [
        (m["recovery/rollout_restarts"], m["recovery/regenerated_requests"], m["recovery/reference_restarts"],
         m["recovery/reference_retries"])
        for m in metrics
    ]  # fmt: skip
    assert recovery == [(0, 0, 0, 0), (1, 2, 0, 0), (0, 0, 1, 1), (0, 0, 0, 0)]
    assert [m.get("recovery/trainer_restarts", 0) for m in metrics] == [0, 0, 0, 1]  # step 4, done again
    for m, reference in zip(metrics, read_metrics(uninterrupted), strict=True):
        check_step_dump(out, m["step"], CLI_RUN_STEPS, m, rows_per_step=2 * 8)
        assert responses(out, m["step"]) == responses(uninterrupted, m["step"])
        for key in COMPARED:
            assert math.isclose(m[key], reference[key], rel_tol=1e-5, abs_tol=1e-6), (m["step"], key)
    gen, ref = metrics[1]["timing_s/gen"], metrics[2]["timing_s/ref"]
    print(f"step 2 generation with the worker's restart: {gen:.1f}s; step 3 reference with its restart: {ref:.1f}s")
