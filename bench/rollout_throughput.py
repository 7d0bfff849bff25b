"""Rollout throughput: one training step's generation (16 questions x 8 samples) on the tiny Qwen2-Audio.

For each engine: tokens/s when called directly in this process and through a one-worker RolloutPool (a Ray
actor); the difference is the pool's overhead (request/result serialization, scheduling). Each timing is the
best of `--repeats` runs after one warm-up run, the two taking turns. Not a test: prints a table, numbers go
to docs/rollout.md.

    python bench/rollout_throughput.py [--engines vllm transformers] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "vllm"))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only local cluster
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from audio_thinker.app.data.tiny import ensure_tiny_models
from audio_thinker.core.config import RolloutConfig
from audio_thinker.core.chat import render_chat
from audio_thinker.core.protocol import build_instruction
from rollout.engine import GenerationRequest, SamplingConfig

FAMILY = "qwen2_audio"


def make_requests(n: int) -> list[GenerationRequest]:
    """n questions with tone clips of 1-5 s (the tiny model's speed does not depend on what they say)."""
    rng = np.random.default_rng(0)
    requests = []
    for i in range(n):
        seconds = 1 + 4 * rng.random()
        t = np.arange(int(seconds * 16000)) / 16000
        clip = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + rng.normal(0, 0.02, t.size)
        choices = ["one", "two", "three", "four"]
        instruction = build_instruction(f"How many beeps are in clip {i}?", choices, "adaptive")
        requests.append(GenerationRequest(render_chat(FAMILY, instruction), clip.astype(np.float32), seed=i))
    return requests


def best_of(calls: dict, requests, sampling, repeats: int) -> dict[str, tuple[float, int]]:
    """label -> (best seconds, completion tokens of that run). One warm-up each, then the calls take turns,
    so that load from other jobs on a shared machine hits them alike."""
    for generate in calls.values():
        generate(requests, sampling)
    best = {label: (float("inf"), 0) for label in calls}
    for _ in range(repeats):
        for label, generate in calls.items():
            start = time.perf_counter()
            results = generate(requests, sampling)
            seconds = time.perf_counter() - start
            if seconds < best[label][0]:
                best[label] = (seconds, sum(len(s.token_ids) for samples in results for s in samples))
    return best


def bench_engine(
    name: str, model_path: Path, requests: list[GenerationRequest], sampling: SamplingConfig, repeats: int
) -> list[tuple[str, float, int]]:
    import ray

    from actors.rollout_pool import RolloutPool
    from rollout.build import build_engine

    cpus = os.cpu_count() or 1  # the actor gets all CPUs (and as many torch threads), as this process has
    rollout = RolloutConfig(engine=name, num_workers=1, num_cpus_per_worker=cpus, max_model_len=1024)
    engine = build_engine(name, str(model_path), FAMILY, "float32", max_model_len=1024, seed=0)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        pool = RolloutPool(rollout, str(model_path), FAMILY, "float32", 0).ready()
        calls = {
            f"{name} (direct)": engine.generate,
            f"{name} (1-worker pool)": lambda r, s: pool.generate(r, s, min_version=0),
        }
        best = best_of(calls, requests, sampling, repeats)
        pool.close()
    finally:
        ray.shutdown()
        engine.close()
    return [(label, *best[label]) for label in calls]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # transformers first: vLLM-CPU pins this process's OpenMP threads to cores, which slows torch after it.
    parser.add_argument(
        "--engines", nargs="+", default=["transformers", "vllm"], choices=["vllm", "transformers"]
    )
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--models", default=str(ROOT / "artifacts" / "tiny"), help="tiny models folder (built if missing)"
    )
    args = parser.parse_args()

    model_path = ensure_tiny_models(args.models)[FAMILY]
    requests = make_requests(args.prompts)
    sampling = SamplingConfig(n=args.samples, max_new_tokens=args.max_new_tokens)
    rows = []
    for name in args.engines:
        rows += bench_engine(name, model_path, requests, sampling, args.repeats)

    print(f"\n{args.prompts} prompts x {args.samples} samples, up to {args.max_new_tokens} new tokens, "
          f"tiny {FAMILY}, {os.cpu_count()} CPUs, best of {args.repeats}")
    print(f"{'engine':<28}{'seconds':>10}{'tokens':>10}{'tokens/s':>12}{'overhead':>12}")
    for i, (label, seconds, tokens) in enumerate(rows):
        overhead = f"{seconds - rows[i - 1][1]:+.3f}s" if i % 2 else ""
        print(f"{label:<28}{seconds:>10.3f}{tokens:>10d}{tokens / seconds:>12.0f}{overhead:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
