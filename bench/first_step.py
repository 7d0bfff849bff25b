"""Time from `audio-thinker train` to the first step line of the tiny default, and when each actor group was ready.

Runs the built-in default (tiny models and synthetic data, built first if missing, outside the timing) for two
steps, `--repeats` times, as a user does from a shell in the checkout's folder, and prints a table: seconds to
each "... ready after" line and to the first step line. `--bin` points at another checkout's `audio-thinker` to
time it the same way (the before/after of a change, side by side in one invocation; each checkout runs in its own
folder with its own JIT build folder). Not a test; numbers go to the README's performance table.

    python bench/first_step.py [--repeats 2] [--bin OTHER/.venv/bin/audio-thinker ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _run_env  # noqa: F401 (the run's environment: VLLM_*, TORCH_EXTENSIONS_DIR)

from audio_thinker.app.data.demo import prepare_demo
from audio_thinker.core.presets import load_config

READY = re.compile(r"^\d\d:\d\d:\d\d (.+) ready after ([\d.]+) s$")
FIRST_STEP = re.compile(r"step 1/2 \|")  # step 1 of 2: its line comes before the final evaluation


def time_run(binary: str, out: Path) -> dict[str, float]:
    """Seconds from the start of the command to its first step line, and each group's 'ready after' seconds."""
    checkout = Path(binary).resolve().parents[2]  # <checkout>/.venv/bin/audio-thinker: its own JIT build folder
    env = {
        **os.environ,
        "AUDIO_THINKER_NO_PROGRESS": "1",
        "TORCH_EXTENSIONS_DIR": str(checkout / ".cache" / "torch_extensions"),
        "PATH": f"{Path(binary).parent}{os.pathsep}{os.environ['PATH']}",  # its environment's ninja, as make's
    }
    command = [binary, "train", "run.total_steps=2", "run.eval_limit=1", f"run.output_dir={out}"]
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=checkout, start_new_session=True)  # fmt: skip (its own artifacts/, its own code in Ray)
    times: dict[str, float] = {}
    for line in proc.stdout:
        line = line.strip()
        if m := READY.match(line):
            times[m[1]] = float(m[2])
        if FIRST_STEP.search(line) and "first step" not in times:
            times["first step"] = time.monotonic() - start
    if proc.wait() != 0 or "first step" not in times:
        raise SystemExit(f"{binary} train failed (exit {proc.returncode})")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per binary (default: 2)")
    parser.add_argument("--bin", nargs="*", default=[], help="other checkouts' audio-thinker to time the same way")
    args = parser.parse_args()
    binaries = [str(Path(sys.executable).parent / "audio-thinker"), *args.bin]
    prepare_demo(load_config())  # the default's tiny models and synthetic set, built once if missing, untimed
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-first-step-") as tmp:
        for b, binary in enumerate(binaries):
            for r in range(args.repeats):
                rows.append((binary, time_run(binary, Path(tmp) / f"{b}-{r}")))
    print(f"\n{'audio-thinker':60s} {'first step (s)':>15s}  groups ready (s)")
    for binary, times in rows:
        groups = ", ".join(f"{k} {v:.1f}" for k, v in times.items() if k != "first step") or "(not reported)"
        print(f"{binary:60s} {times['first step']:15.1f}  {groups}")


if __name__ == "__main__":
    main()
