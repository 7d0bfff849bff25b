"""SIGTERM as a preemption notice: the first sets a flag, a second ends the process at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from audio_thinker.app.train.preemption import PreemptionGuard

SCRIPT = """
import os, signal, sys, time
from audio_thinker.app.train.preemption import PreemptionGuard
before = signal.getsignal(signal.SIGTERM)
with PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    print("requested", guard.requested, flush=True)
    if sys.argv[1] == "twice":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        print("still alive", flush=True)
print("restored", signal.getsignal(signal.SIGTERM) is before, flush=True)
"""


@pytest.mark.parametrize("signals", ["once", "twice"])
def test_one_sigterm_is_a_notice_and_a_second_ends_the_process(signals):
    done = subprocess.run([sys.executable, "-c", SCRIPT, signals], capture_output=True, text=True, timeout=60)
    if signals == "once":
        assert (done.returncode, done.stdout.split()) == (0, ["requested", "True", "restored", "True"])
    else:
        assert done.returncode == -signal.SIGTERM and done.stdout.split() == ["requested", "True"]


def test_no_handler_outside_the_main_thread():
    # Whatever handler the process has (Ray's, once the suite called ray.init) stays.
    seen, before = [], signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=lambda: seen.append(PreemptionGuard().__enter__().requested))
    thread.start()
    thread.join()
    assert seen == [False] and signal.getsignal(signal.SIGTERM) is before
