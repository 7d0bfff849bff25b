"""The synchronous tiny default step, phase by phase, before and after issue 16's savings, in one invocation.

Each variant is the built-in default run (4 questions x 8 samples, vLLM worker, DeepSpeed trainer, reference,
HTTP judge; same seed, so the same questions) started fresh, `--steps` steps long; the first step warms up
(engine start-up, first JIT) and is left out of the means. Variants:

- per-sample: the audio encoder runs once per sample and the old log-probs get their own forward
  (`trainer.encode_audio_once=false trainer.recompute_old_logprobs=true`: the step as it was);
- once-per-clip: each clip encoded once per pass, still with the separate old forward;
- default: each clip encoded once and no old forward (the old log-probs are the loss pass's, detached).

Prints seconds per phase (old and ref run in parallel with the judge), seconds per step and samples/s. Not a
test; numbers go to the README's performance table.

    python bench/pipeline.py [--steps 4] [key=value ...]   # e.g. model.policy_path=... (any config override)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "vllm"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only local cluster
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("AUDIO_THINKER_NO_PROGRESS", "1")

import numpy as np

from audio_thinker.app.driver import Driver
from audio_thinker.core.presets import load_config

VARIANTS = {
    "per-sample": ["trainer.encode_audio_once=false", "trainer.recompute_old_logprobs=true"],
    "once-per-clip": ["trainer.recompute_old_logprobs=true"],
    "default": [],
}
PHASES = ("gen", "judge", "old_logprob", "ref", "train", "sync", "step")


def run_variant(overrides: list[str], steps: int, out: Path) -> list[dict]:
    config = load_config(None, [*overrides, f"run.output_dir={out}", f"run.total_steps={steps}", "run.loggers=[]"])
    driver = Driver.from_config(config)
    try:
        driver.run_dir.create(config)
        return [driver.step(step) for step in range(1, steps + 1)]
    finally:
        driver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per variant (the first is a warm-up)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant (key=value)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is a warm-up)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for name in args.variants:
            metrics = run_variant([*args.overrides, *VARIANTS[name]], args.steps, Path(tmp) / name)[1:]
            samples = np.mean([m["actor/sequences"] for m in metrics])
            results[name] = {p: np.mean([m.get(f"timing_s/{p}", np.nan) for m in metrics]) for p in PHASES}
            results[name]["samples/s"] = samples / results[name]["step"]
            results[name]["reward"] = np.mean([m["reward/total"] for m in metrics])
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name].items()), flush=True)
    print(f"\nsynchronous tiny default step, mean of steps 2..{args.steps} (seconds; old and ref overlap the judge)")
    print(f"{'phase':<12}" + "".join(f"{name:>15}" for name in args.variants) + f"{'speed-up':>10}")
    for key in (*PHASES, "samples/s", "reward"):
        values = [results[name][key] for name in args.variants]
        cells = "".join(f"{'--':>15}" if np.isnan(v) else f"{v:>15.3f}" for v in values)
        # first variant vs last: time per step falls, samples/s rises
        ratio = {"step": values[0] / values[-1], "samples/s": values[-1] / values[0]}.get(key)
        print(f"{key:<12}{cells}" + (f"{ratio:>9.2f}x" if ratio else ""))


if __name__ == "__main__":
    main()
