"""The tiny default step, phase by phase: issue 16's savings and the pipeline modes side by side, in one invocation.

Each variant is the built-in default run (4 questions x 8 samples, vLLM worker, DeepSpeed trainer, reference,
HTTP judge; same seed, so the same questions) started fresh, `--steps` steps long; the first step warms up
(engine start-up, first JIT) and is left out of the means. Variants:

- per-sample: the audio encoder runs once per sample and the old log-probs get their own forward
  (`BenchToggles(encode_audio_once=False, recompute_old_logprobs=True)`: the step as it was);
- once-per-clip: each clip encoded once per pass, still with the separate old forward;
- synchronous: the default (each clip encoded once, no old forward, `run.max_staleness=0`): the reference;
- streaming: `run.stream_groups=true`, the judge and the reference start on each group as it returns;
- staleness-1 / staleness-2: `run.max_staleness=1|2`, the next steps generate while the trainer trains;
- staleness-1+stream: both.

Prints seconds per phase (each phase's wall time; phases overlap), wall seconds per step (from one step's end to
the next: what overlap shortens), samples/s, the ratio to synchronous, the mean reward and the staleness. Not a
test; numbers go to the README's performance table.

    python bench/pipeline.py [--steps 4] [--variants ...] [key=value ...]   # any config override
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _run_env  # noqa: F401 (the run's environment, before vLLM, DeepSpeed and Ray are imported)

import numpy as np

from audio_thinker.app.train.driver import Driver
from audio_thinker.core.config import BenchToggles
from audio_thinker.core.presets import load_config

# name -> (config overrides, benchmark toggles: the slower ways that are no user config)
VARIANTS = {
    "per-sample": ([], BenchToggles(encode_audio_once=False, recompute_old_logprobs=True)),
    "once-per-clip": ([], BenchToggles(recompute_old_logprobs=True)),
    "synchronous": ([], BenchToggles()),
    "streaming": (["run.stream_groups=true"], BenchToggles()),
    "staleness-1": (["run.max_staleness=1"], BenchToggles()),
    "staleness-2": (["run.max_staleness=2"], BenchToggles()),
    "staleness-1+stream": (["run.max_staleness=1", "run.stream_groups=true"], BenchToggles()),
}
DEFAULT_VARIANTS = ["synchronous", "streaming", "staleness-1", "staleness-2"]
PHASES = ("gen", "judge", "old_logprob", "ref", "train", "sync")


def run_variant(overrides: list[str], toggles: BenchToggles, steps: int, out: Path) -> list[dict]:
    """The variant's steps' metrics, each with `wall`: seconds from the previous step's end to its own."""
    config = load_config(None, [*overrides, f"run.output_dir={out}", f"run.total_steps={steps}", "run.loggers=[]"])
    driver = Driver.from_config(config, toggles=toggles)
    try:
        driver.run_dir.create(config)
        out_metrics, last = [], time.perf_counter()
        for step in range(1, steps + 1):
            metrics = driver.step(step)
            now = time.perf_counter()
            out_metrics.append({**metrics, "wall": now - last})
            last = now
        return out_metrics
    finally:
        driver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per variant (the first is a warm-up)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                        help=f"variants to run, in order (default: {' '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant (key=value)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is a warm-up)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for name in args.variants:
            overrides, toggles = VARIANTS[name]
            metrics = run_variant([*args.overrides, *overrides], toggles, args.steps, Path(tmp) / name)[1:]
            samples = np.mean([m["actor/sequences"] for m in metrics])
            results[name] = {p: np.mean([m.get(f"timing_s/{p}", np.nan) for m in metrics]) for p in PHASES}
            results[name]["wall/step"] = np.mean([m["wall"] for m in metrics])
            results[name]["samples/s"] = samples / results[name]["wall/step"]
            results[name]["reward"] = np.mean([m["reward/total"] for m in metrics])
            results[name]["staleness"] = np.mean([m.get("staleness/mean", 0.0) for m in metrics])
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name].items()), flush=True)
    base = "synchronous" if "synchronous" in results else args.variants[0]
    print(f"\ntiny default, mean of steps 2..{args.steps} (seconds; phases overlap, wall/step is what a step costs)")
    print(f"{'':<12}" + "".join(f"{name:>20}" for name in args.variants))
    for key in (*PHASES, "wall/step", "samples/s", "reward", "staleness"):
        values = [results[name][key] for name in args.variants]
        print(f"{key:<12}" + "".join(f"{'--':>20}" if np.isnan(v) else f"{v:>20.3f}" for v in values))
    ratios = [results[name]["samples/s"] / results[base]["samples/s"] for name in args.variants]
    print(f"{'vs ' + base[:9]:<12}" + "".join(f"{r:>19.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
