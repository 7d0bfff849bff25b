"""Start-up never hangs in silence (`audio-thinker train` as a user runs it, in its own process group).

A run stopped by SIGTERM while its trainer ranks start, then a build lock left behind as a process killed inside
torch's JIT build would leave it: the next run in the same checkout removes the lock with one warning naming it and
trains, printing a line per actor group as it becomes ready. A build lock that a live process holds makes the run
wait with messages, then fail at `trainer.startup_timeout_s` in one line that names the lock; nothing is left
running. Each run gets its own copy of the built extensions folder, so the suite's other runs never see its locks.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.build_lock import GUARD_FILE, SHM_COMM_OP, TORCH_LOCK_FILE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture()
def extensions(tmp_path) -> Path:
    """A private TORCH_EXTENSIONS_DIR holding the op `make install` built (copied: no build at run time)."""
    out = tmp_path / "torch_extensions"
    built = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / SHM_COMM_OP
    if built.is_dir():
        shutil.copytree(built, out / SHM_COMM_OP, ignore=shutil.ignore_patterns(TORCH_LOCK_FILE, GUARD_FILE))
    (out / SHM_COMM_OP).mkdir(parents=True, exist_ok=True)
    return out


def start(args: list[str], extensions: Path, log: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "PYTHONPATH": str(ROOT)}
    with log.open("w") as out:
        return subprocess.Popen([str(BIN / "audio-thinker"), "train", *args], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float) -> int:
    """The run's exit code; a run still going at `timeout` is ended (its whole process group) and fails the test."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the run hung past {timeout:.0f}s")


def wait_for_file(pattern: str, folder: Path, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.2)
    pytest.fail(f"no {pattern} in {folder} within {timeout:.0f}s")


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_run_stopped_in_trainer_setup_leaves_nothing_that_stops_the_next_run(tiny_run, extensions, tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    first = start(tiny_run(run_a, 1), extensions, tmp_path / "a.log", tmp_path)
    wait_for_file("trainer-rank-0-*.log", run_a / "logs", timeout=180)  # the rank is starting
    os.killpg(first.pid, signal.SIGTERM)
    finish(first, timeout=60)
    stale = extensions / SHM_COMM_OP / TORCH_LOCK_FILE
    stale.write_text("")  # as a process killed inside torch's build leaves it

    second = start([*tiny_run(run_b, 1), "run.eval_limit=1"], extensions, tmp_path / "b.log", tmp_path)
    assert finish(second, timeout=420) == 0, (tmp_path / "b.log").read_text()[-3000:]
    assert (run_b / "final" / "config.json").is_file() and not stale.exists()
    rank_log = next((run_b / "logs").glob("trainer-rank-0-*.log")).read_text()
    assert rank_log.count(f"removed a stale build lock {stale}") == 1
    console = (tmp_path / "b.log").read_text()
    for group in ("rollout worker(s)", "trainer rank(s)", "the reference model", "the judge"):
        assert f"{group}" in console and "ready after" in console, console[-3000:]


def test_a_live_build_lock_fails_the_start_up_in_one_line_naming_it(tiny_run, extensions, tmp_path):
    guard = extensions / SHM_COMM_OP / GUARD_FILE
    with guard.open("a+") as held:  # a live process in the build: this test
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"{os.getpid()}\n")
        held.flush()
        run = tmp_path / "run"
        proc = start([*tiny_run(run, 1), "trainer.startup_timeout_s=30"], extensions, tmp_path / "run.log", tmp_path)
        code = finish(proc, timeout=300)
    console = (tmp_path / "run.log").read_text()
    errors = [line for line in console.splitlines() if line.startswith("audio-thinker train:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in console, console[-3000:]
    assert "start-up failed" in errors[0] and str(guard) in errors[0] and f"process {os.getpid()}" in errors[0]
    # the driver's deadline (naming the key and the lock) or the rank's own (naming how long it waited)
    assert "trainer rank" in errors[0] and ("trainer.startup_timeout_s" in errors[0] or "waited 30s" in errors[0])
    rank_log = next((run / "logs").glob("trainer-rank-0-*.log")).read_text()
    assert f"waits for the build lock {guard} (held by process {os.getpid()})" in rank_log
    deadline = time.monotonic() + 30
    while not group_gone(proc.pid) and time.monotonic() < deadline:  # the run's actors and Ray end with it
        time.sleep(0.5)
    if not group_gone(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("processes of the failed run were left running")
