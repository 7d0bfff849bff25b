"""The JIT build lock (trainer/build_lock.py): a lock file left by a dead process is removed with one warning; a
live holder is waited for with messages naming the lock, up to a deadline. No Ray, no DeepSpeed."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time

import pytest

from trainer.build_lock import GUARD_FILE, SHM_COMM_OP, TORCH_LOCK_FILE, BuildLockTimeout, build_guard, describe_lock


@pytest.fixture()
def ext_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    (tmp_path / SHM_COMM_OP).mkdir()
    return tmp_path / SHM_COMM_OP


def test_a_lock_file_left_by_a_dead_process_is_removed_with_one_warning(ext_dir, caplog):
    stale = ext_dir / TORCH_LOCK_FILE
    stale.write_text("")  # what torch's FileBaton leaves when its process is killed inside the build
    assert describe_lock() == f"the build lock {stale} exists (left by a process stopped during a start-up?)"
    with caplog.at_level(logging.WARNING, logger="trainer.build_lock"), build_guard(SHM_COMM_OP, "rank 0", 5.0):
        assert not stale.exists()  # torch can take its lock now
        assert (ext_dir / GUARD_FILE).read_text().strip() == str(os.getpid())
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"removed a stale build lock {stale} (its builder is gone: stopped during a start-up)"]
    assert describe_lock() is None


def test_a_live_holder_is_waited_for_with_messages_then_named_at_the_deadline(ext_dir, caplog, monkeypatch):
    monkeypatch.setattr("trainer.build_lock.MESSAGE_EVERY_S", 0.3)
    guard = ext_dir / GUARD_FILE
    with guard.open("a+") as held:  # another process's lock: a separate open file description
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        assert describe_lock() == f"the build lock {guard} is held by process 4242"
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="trainer.build_lock"):
            with pytest.raises(BuildLockTimeout, match=rf"rank 1 waited 1s for the build lock {guard} of .* held by "
                               r"live process 4242"):
                with build_guard(SHM_COMM_OP, "rank 1", 1.0):
                    pytest.fail("entered a lock that a live process holds")
        assert time.monotonic() - start >= 1.0
    waits = [r.getMessage() for r in caplog.records]
    assert len(waits) >= 2 and all(w.startswith(f"rank 1 waits for the build lock {guard} (held by process 4242)")
                                   for w in waits)


def test_a_holder_that_lets_go_in_time_is_followed(ext_dir):
    guard = ext_dir / GUARD_FILE
    held = guard.open("a+")
    fcntl.flock(held, fcntl.LOCK_EX)
    threading.Timer(0.5, held.close).start()  # the kernel releases it when the file is closed, or the holder dies
    with build_guard(SHM_COMM_OP, "rank 0", 10.0):
        assert describe_lock() == f"the build lock {guard} is held by process {os.getpid()}"
    assert describe_lock() is None
