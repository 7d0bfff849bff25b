"""`make rehearse`: every GPU preset rehearsed here for a few steps (`--rehearse`, docs/placement.md), one after
another, and a table of what each took and what it checked.

The presets are every packaged one that declares GPUs (`run.num_gpus` > 0) and is no other preset's `base:`
(`gpu_presets`), so a new GPU preset joins without an edit here; `sft-*` presets run `audio-thinker sft`, the others
`audio-thinker train`. Each run is an `audio-thinker` subprocess in the repository root (the tiny models and the
synthetic set in artifacts/ are built by the first and shared), its run directory under --out. Not a test: exits 1
when a rehearsal failed, after the table.

    python bench/rehearse.py [--presets P ...] [--steps 2] [--out runs/rehearse-<time>]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _run_env  # noqa: F401 (the run's environment: vLLM's CPU cache, the JIT build folder, loopback Ray)

from audio_thinker.app.train.rehearsal import RECORD_FILE, gpu_presets

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def rehearse(preset: str, steps: int, out: Path) -> dict:
    """One preset's rehearsal: its command, exit code, wall time and what its rehearsal.json says."""
    command = "sft" if preset.startswith("sft-") else "train"
    run = out / preset
    args = [str(BIN / "audio-thinker"), command, "--config", preset, "--rehearse", f"run.total_steps={steps}",
            f"run.output_dir={run}"]  # fmt: skip
    started = time.perf_counter()
    with (out / f"{preset}.log").open("w") as log:
        code = subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    record = json.loads((run / RECORD_FILE).read_text()) if (run / RECORD_FILE).is_file() else {"checks": []}
    metrics = run / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return {"preset": preset, "command": command, "code": code, "wall_s": wall, "record": record, "metrics": lines}


def row(result: dict) -> str:
    checks = result["record"]["checks"]
    counts: dict[str, list[int]] = {}
    for c in checks:
        passed = counts.setdefault(c["check"], [0, 0])
        passed[0] += c["ok"]
        passed[1] += 1
    done = ", ".join(f"{name} {ok}/{n}" for name, (ok, n) in counts.items()) or "-"
    update = next((c["measured"] for c in checks if c["check"] == "update"), {})
    judge = max((c["measured"].get("max_abs_diff", 0.0) for c in checks if c["check"] == "judge"), default=None)
    step_s = [m["timing_s/step"] for m in result["metrics"] if "timing_s/step" in m]
    cells = [
        result["preset"], result["command"], "passed" if result["code"] == 0 else f"FAILED ({result['code']})",
        f"{result['wall_s']:.0f}", str(len(result["metrics"])), f"{sum(step_s) / len(step_s):.1f}" if step_s else "-",
        done, f"{update['update_rel_l2']:.2e}" if update else "-", f"{judge:.2e}" if judge is not None else "-",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=None, help="presets to rehearse (default: every GPU preset)")
    parser.add_argument("--steps", type=int, default=2, help="steps of each rehearsal (default: 2)")
    parser.add_argument("--out", default=None, help="folder of the runs (default: runs/rehearse-<time>)")
    args = parser.parse_args()
    presets = args.presets or gpu_presets()
    out = Path(args.out or ROOT / "runs" / f"rehearse-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for preset in presets:
        print(f"rehearsing {preset} ({args.steps} steps) ...", flush=True)
        results.append(rehearse(preset, args.steps, out))
        print(row(results[-1]), flush=True)
    print(f"\nrehearsals of {args.steps} steps on {Path('/proc/cpuinfo').read_text().count('processor')} cores "
          f"(logs and run directories: {out})\n")  # fmt: skip
    print("| preset | command | result | wall s | steps | step s (mean) | checks passed | update rel. L2 | "
          "judge max diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for result in results:
        print(row(result))
    return 0 if all(r["code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
