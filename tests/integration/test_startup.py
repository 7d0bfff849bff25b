"""Start-up never hangs in silence (`audio-thinker train` as a user runs it, in its own process group).

The session's shared run (`cli_run`, tests/conftest.py) starts after a run of the same command was stopped with
SIGTERM while its trainer ranks started, and after a build lock was left by hand as a process killed inside torch's
JIT build would leave it: it removes the lock with one warning naming it and trains, printing a line per actor group
as it becomes ready. A build lock that a live process holds makes a run wait with messages, then fail at
`trainer.startup_timeout_s` in one line that names the lock; nothing is left running. Each run has its own copy of
the built extensions folder, so the suite's other runs never see these locks.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import time

import pytest

from conftest import end_group, private_extensions, start_train
from trainer.build_lock import GUARD_FILE, SHM_COMM_OP


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_run_stopped_in_trainer_setup_leaves_nothing_that_stops_the_next_run(cli_run):
    assert cli_run.stopped_code != 0 and not (cli_run.stopped / "checkpoints").exists()  # stopped while starting
    assert cli_run.proc.wait(timeout=900) == 0, cli_run.log.read_text()[-3000:]
    assert (cli_run.run / "final" / "config.json").is_file() and not cli_run.stale_lock.exists()
    removed = [p.read_text().count(f"removed a stale build lock {cli_run.stale_lock}")
               for p in (cli_run.run / "logs").glob("trainer-rank-*.log")]  # fmt: skip
    assert sum(removed) == 1, removed  # by the first rank to take the build lock, once
    console = cli_run.log.read_text()
    ready = re.findall(r"^\d\d:\d\d:\d\d (.+) ready after [\d.]+ s$", console, re.M)
    assert sorted(ready) == ["1 rollout worker(s) (vllm)", "2 trainer rank(s) (ZeRO-2)", "the judge",
                             "the reference model"], console[-3000:]


def test_a_live_build_lock_fails_the_start_up_in_one_line_naming_it(tiny_run, tmp_path):
    extensions = private_extensions(tmp_path)
    guard = extensions / SHM_COMM_OP / GUARD_FILE
    # The lightest run that starts a trainer rank: no judge (the answer-only baseline), the transformers engine.
    # 30 s: its rank reaches the lock ~10 s after Ray starts alone on 2 cores; `make test` runs two pytests at once.
    args = [*tiny_run(tmp_path / "run", 1), "reward.variant=grpo", "prompt.mode=no_think",
            "rollout.engine=transformers", "trainer.startup_timeout_s=30"]  # fmt: skip
    with guard.open("a+") as held:  # a live process in the build: this test
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"{os.getpid()}\n")
        held.flush()
        proc = start_train(args, tmp_path, tmp_path / "run.log", extensions)
        try:
            code = proc.wait(timeout=300)
        finally:
            end_group(proc, timeout=30)
    console = (tmp_path / "run.log").read_text()
    errors = [line for line in console.splitlines() if line.startswith("audio-thinker train:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in console, console[-3000:]
    assert "start-up failed" in errors[0] and str(guard) in errors[0] and f"process {os.getpid()}" in errors[0]
    # the driver's deadline (naming the key and the lock) or the rank's own (naming how long it waited)
    assert "trainer rank" in errors[0] and ("trainer.startup_timeout_s" in errors[0] or "waited 30s" in errors[0])
    rank_log = next((tmp_path / "run" / "logs").glob("trainer-rank-0-*.log")).read_text()
    assert f"waits for the build lock {guard} (held by process {os.getpid()})" in rank_log
    deadline = time.monotonic() + 30
    while not group_gone(proc.pid) and time.monotonic() < deadline:  # the run's actors and Ray end with it
        time.sleep(0.5)
    if not group_gone(proc.pid):
        end_group(proc, signal.SIGKILL)
        pytest.fail("processes of the failed run were left running")
