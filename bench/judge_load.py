"""The judge past its capacity, on loopback: the single uvicorn process and Ray Serve with 2 replicas, each once
undisturbed and once with a replica (the process, for uvicorn: nothing to kill, so that row is Serve only)
killed by its pid in the middle of the load.

A bounded, self-stopping loop: W workers each send R requests one after the other (every request has its own
items, each item its own text), retrying what was not answered (429: after Retry-After; 5xx and connection
errors: after a short pause) until it is answered or the deadline passes. Counted per row: requests answered,
429 answers seen, 5xx answers seen, connection errors seen, lost (never answered by the deadline), duplicated
(a result that is not the one of its own item: every answer is checked against in-process scoring of the
same items), p50/p99 latency of a request from its first send to its answer (retries included).

    python bench/judge_load.py [--workers 24] [--requests 12] [--max-queue 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # judge_throughput's items, also when a test loads this file
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx
import numpy as np
import ray
from judge_throughput import make_items

from actors import judge_serve
from audio_thinker.app.data.tiny import ensure_tiny_models
from audio_thinker.core.log import setup_logging
from reward_server.app import ServerSettings
from reward_server.backends import TransformersBackend
from reward_server.cli import ServerThread, build_server
from reward_server.client import JudgeClient, parse_retry_after
from reward_server.schemas import JudgeItem
from reward_server.scoring import score_items

KEY = "bench"
ITEMS_PER_REQUEST = 4


@dataclass
class Load:
    """What one run of the loop saw."""

    answers: dict[int, list[dict]] = field(default_factory=dict)  # request id -> its results (first 200 only)
    answered_twice: int = 0
    refused_429: int = 0
    errors_5xx: dict[int, int] = field(default_factory=dict)  # status -> answers seen
    connection_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0


def request_items(items: list[JudgeItem], r: int) -> list[JudgeItem]:
    return items[r * ITEMS_PER_REQUEST : (r + 1) * ITEMS_PER_REQUEST]


async def drive(
    url: str,
    items: list[JudgeItem],
    workers: int,
    per_worker: int,
    deadline_s: float,
    on_progress: Callable[[int], None] | None = None,
) -> Load:
    """Send workers x per_worker requests (request r holds items[4r:4r+4]), each retried until answered or the
    deadline; `on_progress(answered)` after every answer (the kill scenario uses it)."""
    load = Load()
    deadline = time.monotonic() + deadline_s

    async def send(http: httpx.AsyncClient, r: int) -> None:
        body = {"items": [i.model_dump() for i in request_items(items, r)]}
        start = time.perf_counter()
        while time.monotonic() < deadline:
            try:
                response = await http.post("/v1/judge", json=body)
            except httpx.TransportError:
                load.connection_errors += 1
                await asyncio.sleep(0.1)
                continue
            if response.status_code == 200:
                if r in load.answers:
                    load.answered_twice += 1
                load.answers[r] = response.json()["results"]
                load.latencies.append(time.perf_counter() - start)
                if on_progress is not None:
                    on_progress(len(load.answers))
                return
            if response.status_code == 429:
                load.refused_429 += 1
                await asyncio.sleep(parse_retry_after(response.headers.get("retry-after")) or 0.05)
            elif response.status_code >= 500:
                load.errors_5xx[response.status_code] = load.errors_5xx.get(response.status_code, 0) + 1
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"request {r}: HTTP {response.status_code}: {response.text}")

    async def worker(http: httpx.AsyncClient, w: int) -> None:
        for j in range(per_worker):
            await send(http, w * per_worker + j)

    limits = httpx.Limits(max_connections=workers + 4)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30, limits=limits
    ) as http:
        start = time.perf_counter()
        await asyncio.gather(*(worker(http, w) for w in range(workers)))
        load.seconds = time.perf_counter() - start
    return load


def mismatched(load: Load, items: list[JudgeItem], expected: list) -> int:
    """Answers whose results are not those of their own items (another request's, or out of order)."""
    bad = 0
    for r, results in load.answers.items():
        want = expected[r * ITEMS_PER_REQUEST : (r + 1) * ITEMS_PER_REQUEST]
        if len(results) != len(want) or any(
            abs(g["think_quality"] - w.think_quality) > 1e-4 or abs(g["consistency_prob"] - w.consistency_prob) > 1e-4
            for g, w in zip(results, want)
        ):
            bad += 1
    return bad


def row(label: str, load: Load, n_requests: int, duplicated: int) -> str:
    p50, p99 = np.percentile(load.latencies, [50, 99]) * 1000 if load.latencies else (float("nan"),) * 2
    lost = n_requests - len(load.answers)
    errors = " ".join(f"{k}x{v}" for k, v in sorted(load.errors_5xx.items())) or "0"
    return (
        f"{label:<40}{len(load.answers):>9}{load.refused_429:>7}{errors:>10}{load.connection_errors:>7}"
        f"{lost:>6}{duplicated + load.answered_twice:>6}{p50:>9.0f}{p99:>9.0f}{load.seconds:>8.1f}"
    )


def killer(pid_of: Callable[[], int], after: int) -> tuple[Callable[[int], None], threading.Event]:
    """An on_progress hook that SIGKILLs `pid_of()` once `after` requests were answered (once)."""
    fired = threading.Event()

    def hook(answered: int) -> None:
        if answered >= after and not fired.is_set():
            fired.set()
            os.kill(pid_of(), 9)

    return hook, fired


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=24)
    parser.add_argument("--requests", type=int, default=12, help="requests per worker")
    parser.add_argument("--max-queue", type=int, default=16, help="per server / replica: past it, 429")
    parser.add_argument("--deadline-s", type=float, default=240.0)
    parser.add_argument(
        "--models", default=str(ROOT / "artifacts" / "tiny"), help="tiny models folder (built if missing)"
    )
    args = parser.parse_args()
    setup_logging("WARNING")
    model = str(ensure_tiny_models(args.models)["qwen3_judge"])
    n = args.workers * args.requests
    items = make_items(n * ITEMS_PER_REQUEST)
    expected = score_items(TransformersBackend(model, device="cpu"), items)
    settings = ServerSettings(
        api_keys=frozenset({KEY}), max_queue=args.max_queue, max_items=ITEMS_PER_REQUEST, max_batch_size=8,
        max_wait_ms=2.0, retry_after_s=0,
    )  # fmt: skip
    lines = []

    def run(label: str, url: str, hook=None) -> None:
        load = asyncio.run(drive(url, items, args.workers, args.requests, args.deadline_s, hook))
        lines.append(row(label, load, n, mismatched(load, items, expected)))

    thread = ServerThread(build_server(lambda: TransformersBackend(model, device="cpu"), settings, port=0))
    url = thread.start()
    try:
        JudgeClient(url).wait_ready(120)
        run("single process (uvicorn)", url)
    finally:
        thread.stop(60)

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        deployment = judge_serve.JudgeDeployment(
            lambda: TransformersBackend(model, device="cpu"), settings, judge_serve.Scaling(replicas=2), port=0,
            num_cpus=0.5,
        )  # fmt: skip
        JudgeClient(deployment.url).wait_ready(120)
        run("Ray Serve, 2 replicas", deployment.url)
        hook, fired = killer(lambda: deployment.replica_pids()[0], after=n // 4)
        run("Ray Serve, 2 replicas, 1 killed mid-load", deployment.url, hook)
        assert fired.is_set(), "the replica was not killed"
        deployment.close(stop_serve=True)
    finally:
        ray.shutdown()

    print(
        f"\n{n} requests x {ITEMS_PER_REQUEST} items from {args.workers} concurrent workers, tiny Qwen3 judge on CPU "
        f"({os.cpu_count()} CPUs), max_queue={args.max_queue} items per server/replica, retried until answered"
    )
    print(
        f"{'':<40}{'answered':>9}{'429':>7}{'5xx':>10}{'conn':>7}{'lost':>6}{'dup':>6}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'s':>8}"
    )
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
