"""`make test`: the whole suite as two pytest processes side by side.

The modules whose tests run whole trainings (RUN_MODULES: mostly `audio-thinker` subprocesses, each with a Ray of
its own) run beside everything else (the unit tests, and the integration tests of the parts on the session's Ray).
With one pytest process a core of the 2-core machine idled 42% of the suite's 18 minutes (vmstat every 10 s): a
run starts its actor processes and loads its models mostly one process at a time. Each pytest has its own base
temp folder and session fixtures, except the tiny models and the warm policy: built once, in a folder both take
turns on. The runs' report is printed after the other's, and the exit status is the first nonzero one.

    python tests/run_suite.py [pytest options for both ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_MODELS_ENV = "AUDIO_THINKER_TEST_MODELS"  # the conftest's name for it
RUN_MODULES = [
    "tests/integration/test_ablate.py",
    "tests/integration/test_dashboard.py",  # these four share the session's `cli_run`
    "tests/integration/test_run_recovery.py",
    "tests/integration/test_startup.py",
    "tests/integration/test_train_e2e.py",
    "tests/integration/test_qwen3_omni_train.py",
    "tests/integration/test_rehearsal_e2e.py",
    "tests/integration/test_learnability.py",  # these two: the driver in this process, on the session's Ray
    "tests/integration/test_sft.py",
]


def wait(proc: subprocess.Popen) -> int:
    """Its exit code; a Ctrl-C reached it too (one process group), so it is waited for while it ends its tests'
    processes (subprocess.call would kill it 0.25 s after the Ctrl-C)."""
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def main(options: list[str]) -> int:
    started = time.monotonic()
    pytest = [sys.executable, "-m", "pytest", "-q", *options]
    rest = [*pytest, "tests", *(f"--ignore={m}" for m in RUN_MODULES)]
    with tempfile.TemporaryFile("w+") as runs_log, tempfile.TemporaryDirectory(prefix="tiny-models-") as models:
        env = {**os.environ, SHARED_MODELS_ENV: models}  # the tiny models, built once for both (tests/conftest.py)
        runs = subprocess.Popen([*pytest, "-p", "no:cacheprovider", *RUN_MODULES], cwd=ROOT, env=env,
                                stdout=runs_log, stderr=subprocess.STDOUT)  # fmt: skip
        rest_code = wait(subprocess.Popen(rest, cwd=ROOT, env=env))
        runs_code = wait(runs)
        runs_log.seek(0)
        print(f"\n{'=' * 20} {len(RUN_MODULES)} modules of whole trainings, side by side with the above {'=' * 20}")
        sys.stdout.write(runs_log.read())
    print(f"\nthe whole suite: {time.monotonic() - started:.0f} s (exit {rest_code or runs_code})")
    return rest_code or runs_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
