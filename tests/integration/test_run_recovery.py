"""The session's shared `audio-thinker train` run (`cli_run`, tests/conftest.py) is killed three times inside its
calls: its rollout worker in the middle of step 2's generation, its reference in the middle of step 3's log-probs
and its trainer rank 1 in the middle of step 4's update. Ray restarts the worker and the reference, the worker gets
weights version 1 (checksum checked) before it generates again, the lost requests are generated again with their
seeds, the reference's checksum is the one it had and its call is made again; the driver restarts the trainer
group, loads step 3's checkpoint, rewinds the workers to it and does step 4 again. The run finishes with every step
once and the recovery counted in each step's metrics; its samples, rewards, losses and KL equal those of the
undisturbed run of the same config (the preempted-then-resumed job of test_train_e2e.py compares them).
"""

from __future__ import annotations

import json
import re

import pytest
from test_train_e2e import check_step_dump, read_metrics

from conftest import CLI_RUN_STEPS


@pytest.mark.timeout(1800)  # with the session's cli_run (its setup) when this test is the first to need it
def test_a_run_whose_worker_reference_and_trainer_rank_die_mid_call_recovers_every_step_once(cli_run):
    assert cli_run.proc.wait(timeout=1200) == 0, cli_run.log.read_text()[-3000:]
    assert all(killer.killed for killer in cli_run.killers)  # each fault struck inside its call
    out = cli_run.run
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, CLI_RUN_STEPS + 1))  # every step once
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    recovery = [
        (m["recovery/rollout_restarts"], m["recovery/regenerated_requests"], m["recovery/reference_restarts"],
         m["recovery/reference_retries"], m["recovery/judge_restarts"])
        for m in metrics
    ]  # fmt: skip
    assert recovery == [(0, 0, 0, 0, 0), (1, 2, 0, 0, 0), (0, 0, 1, 1, 0), (0, 0, 0, 0, 0)]
    assert [m.get("recovery/trainer_restarts", 0) for m in metrics] == [0, 0, 0, 1]  # step 4, done again
    for m in metrics:
        check_step_dump(out, m["step"], CLI_RUN_STEPS, m, rows_per_step=2 * 8)
    console = cli_run.log.read_text()
    died = console.index("trainer rank 1 died during step 4")
    assert re.search(r"resumed from \S+ at step 3\b", console[died:])  # after the warning that explains it
    gen, ref = metrics[1]["timing_s/gen"], metrics[2]["timing_s/ref"]
    print(f"step 2 generation with the worker's restart: {gen:.1f}s; step 3 reference with its restart: {ref:.1f}s")
