"""Killing an actor's process at a chosen moment of its work, for the restart tests.

A local run's actors write their output to `<log dir>/<name>-<pid>.log` (`core/log.py`); the rollout workers and
the reference log a line when a call begins ("generating ...", "log-probs of ..."). `KillOnLogLine` watches
those files and sends SIGKILL to the process whose file shows the n-th such line, so the kill lands inside
that call whatever the machine's speed.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path


def logged(folder: Path, name: str, pattern: str) -> dict[int, int]:
    """pid -> how many lines of its log match `pattern`, for every `<name>-<pid>.log` in `folder`."""
    counts = {}
    for path in Path(folder).glob(f"{name}-*.log"):
        pid = int(path.stem.rsplit("-", 1)[1])
        counts[pid] = len(re.findall(pattern, path.read_text(errors="replace")))
    return counts


class KillOnLogLine(threading.Thread):
    """SIGKILL the `name` process whose log shows the `nth` line matching `pattern` written after this watcher
    was made (counted over every process of that name, restarted ones included; the folder is the session's, so
    lines of earlier tests' processes are the baseline), within `timeout_s`. `killed` is (pid, time.monotonic())
    once done."""

    def __init__(self, folder: Path, name: str, pattern: str, nth: int = 1, timeout_s: float = 600.0):
        super().__init__(daemon=True)
        self.folder, self.name, self.pattern, self.nth, self.timeout_s = folder, name, pattern, nth, timeout_s
        self.baseline = logged(folder, name, pattern)
        self.killed: tuple[int, float] | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.stopped.is_set() and time.monotonic() < deadline:
            counts = logged(self.folder, self.name, self.pattern)
            new = {p: n - self.baseline.get(p, 0) for p, n in counts.items() if n > self.baseline.get(p, 0)}
            if sum(new.values()) >= self.nth:
                pid = max(new, key=lambda p: self._mtime(p))
                os.kill(pid, signal.SIGKILL)
                self.killed = (pid, time.monotonic())
                return
            time.sleep(0.02)

    def _mtime(self, pid: int) -> float:
        return (Path(self.folder) / f"{self.name}-{pid}.log").stat().st_mtime

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
