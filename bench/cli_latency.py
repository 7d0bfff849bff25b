"""How long the light commands take from the shell: `--help` and `rewards` on a small file (the targets: at most
1.0 s and 1.5 s on an idle 2-core machine), `eval score`, `plan`, `report`, `make-synthetic` and `dashboard --help`,
each a fresh `audio-thinker` process, as a user types it; `import torch` alone for scale. Each command runs
--repeats times and keeps its fastest and median wall times (other processes only ever add time). Not a test:
prints a table and the load average (numbers are only comparable on an idle machine); tests/unit/test_cli_imports.py
checks that none of these commands imports torch, transformers, DeepSpeed, vLLM or Ray.

    python bench/cli_latency.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audio_thinker.app.eval.scoring import score_file
from audio_thinker.core.presets import dump_config, load_config

COMMAND = Path(sys.executable).parent / "audio-thinker"
SMALL_REWARDS = ROOT / "tests" / "data" / "worked_example.jsonl"  # 8 rows
PREDICTIONS = ROOT / "tests" / "data" / "eval" / "mmau-test-mini_predictions.json"
TARGETS = {"--help": 1.0, "rewards (8 rows)": 1.5}


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per command (default: 5)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cli-latency-"))
    run = work / "run"  # a run directory with one evaluation, for `report`
    (run / "eval" / "mmau").mkdir(parents=True)
    dump_config(load_config(), run / "config.yaml")
    (run / "eval" / "mmau" / "results.json").write_text(json.dumps(score_file(PREDICTIONS, "mmau")))
    cli = str(COMMAND)
    rows = {
        "--help": [cli, "--help"],
        "rewards (8 rows)": [cli, "rewards", "--input", str(SMALL_REWARDS), "--step", "1", "--total-steps", "10"],
        "eval score (mmau, 4 rows)": [cli, "eval", "score", "--bench", "mmau", "--predictions", str(PREDICTIONS)],
        "plan (qwen2-audio-7b)": [cli, "plan", "--config", "qwen2-audio-7b"],
        "report (1 run)": [cli, "report", "--runs", str(run), "--out", "table", "--overwrite"],
        "make-synthetic (--n 4)": [cli, "make-synthetic", "--out", "data", "--n", "4", "--overwrite"],
        "dashboard --help": [cli, "dashboard", "--help"],
        "python -c 'import torch' (scale)": [sys.executable, "-c", "import torch"],
    }
    timed(rows["--help"], work)  # compile the package's bytecode once, as an installed package has it
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"| command | fastest (s) | median of {args.repeats} (s) | target |")
    print("|---|---|---|---|")
    for label, argv in rows.items():
        times = [timed(argv, work) for _ in range(args.repeats)]
        target = f"<= {TARGETS[label]:.1f} s" if label in TARGETS else ""
        print(f"| {label} | {min(times):.2f} | {statistics.median(times):.2f} | {target} |")
    print(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
