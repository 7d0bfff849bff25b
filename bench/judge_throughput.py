"""Judge throughput on the tiny Qwen3 judge: HTTP with micro-batching on / off versus the backend in-process.

HTTP rows: N concurrent async clients (`AsyncJudgeClient`, what the training driver uses) each send their
requests one after the other to a judge server on 127.0.0.1 (uvicorn in a thread of this process, so the
clients and the server share this machine's cores). "batching off" sets max_batch_size to one request's
items, so no two requests share a model call. In-process rows call `score_items` directly, one call per
chunk, no HTTP. Latency is per request (per call in-process); items/s is over the whole run. Scenarios run
in rounds (each round runs every row once) and each row keeps its fastest round. Not a test: prints a
table, numbers go to docs/judge.md.

    python bench/judge_throughput.py [--clients 16] [--requests 128] [--items-per-request 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from audio_thinker.app.data.tiny import ensure_tiny_models
from audio_thinker.core.log import setup_logging
from reward_server.app import ServerSettings
from reward_server.backends import TransformersBackend
from reward_server.cli import ServerThread, build_server
from reward_server.client import AsyncJudgeClient, JudgeClient
from reward_server.schemas import JudgeItem
from reward_server.scoring import score_items

KEY = "bench"
SENTENCES = [
    "the second beep is louder and higher",
    "the first one fades out quickly",
    "so the answer is two",
    "because the pitch rises at the end",
    "I listen to the whole clip first",
]


@dataclass
class Row:
    label: str
    clients: int
    items: int
    seconds: float
    latencies: list[float]
    mean_batch: float

    def cells(self) -> str:
        p50, p99 = np.percentile(self.latencies, [50, 99]) * 1000
        return (
            f"{self.label:<34}{self.clients:>8}{self.items / self.seconds:>10.0f}{p50:>10.1f}{p99:>10.1f}"
            f"{self.mean_batch:>12.1f}"
        )


def make_items(n: int) -> list[JudgeItem]:
    """Reasoning of 12 sentences (a judging prompt of ~300 tiny-tokenizer tokens), all different."""
    rng = np.random.default_rng(0)
    return [
        JudgeItem(
            question=f"Question {i}: which of the two beeps is louder?",
            choices=["one", "two"],
            answer="two",
            think=". ".join(rng.choice(SENTENCES, 12)) + ".",
        )
        for i in range(n)
    ]


def in_process(backend: TransformersBackend, items: list[JudgeItem], chunk: int) -> Row:
    latencies = []
    start = time.perf_counter()
    for i in range(0, len(items), chunk):
        t = time.perf_counter()
        score_items(backend, items[i : i + chunk])
        latencies.append(time.perf_counter() - t)
    seconds = time.perf_counter() - start
    return Row(f"in-process, {chunk} items per call", 1, len(items), seconds, latencies, chunk)


def over_http(
    server: ServerThread, url: str, items: list[JudgeItem], label: str, clients: int, k: int
) -> Row:
    """One run of `clients` concurrent clients sending the items in requests of k items."""
    requests = [items[i : i + k] for i in range(0, len(items), k)]
    stats = server.server.config.app.state.judge.batcher.stats

    async def worker(client: AsyncJudgeClient, w: int, latencies: list[float]) -> None:
        for r in requests[w::clients]:
            t = time.perf_counter()
            results = await client.judge(r)
            latencies.append(time.perf_counter() - t)
            assert len(results) == len(r)

    async def run() -> Row:
        async with AsyncJudgeClient(url, api_key=KEY, max_retries=0) as client:
            await asyncio.gather(*(client.judge(r) for r in requests[:clients]))  # open the connections
            latencies: list[float] = []
            batches, done = stats.batches, stats.items
            start = time.perf_counter()
            await asyncio.gather(*(worker(client, w, latencies) for w in range(clients)))
            seconds = time.perf_counter() - start
            mean_batch = (stats.items - done) / max(stats.batches - batches, 1)
            return Row(label, clients, len(items), seconds, latencies, mean_batch)

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--items-per-request", type=int, default=4)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--models", default=str(ROOT / "artifacts" / "tiny"), help="tiny models folder (built if missing)"
    )
    args = parser.parse_args()
    setup_logging("WARNING")

    model = str(ensure_tiny_models(args.models)["qwen3_judge"])
    k, n = args.items_per_request, args.repeats
    items = make_items(args.requests * k)
    queue = max(1024, args.clients * k)
    keys = frozenset({KEY})
    on = ServerSettings(
        api_keys=keys, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=queue
    )
    off = ServerSettings(api_keys=keys, max_batch_size=k, max_wait_ms=0.0, max_queue=queue)
    backend = TransformersBackend(model)
    servers = [ServerThread(build_server(lambda: TransformersBackend(model), st, port=0)) for st in (on, off)]
    url_on, url_off = (server.start() for server in servers)
    try:
        for url in (url_on, url_off):
            JudgeClient(url).wait_ready(120)
        score_items(backend, items[: args.max_batch_size])  # warm-up
        scenarios = [
            lambda: in_process(backend, items, args.max_batch_size),
            lambda: in_process(backend, items, k),
            lambda: over_http(servers[0], url_on, items, "HTTP, micro-batching on", args.clients, k),
            lambda: over_http(servers[1], url_off, items, "HTTP, micro-batching off", args.clients, k),
            lambda: over_http(servers[0], url_on, items, "HTTP, micro-batching on", 1, k),
        ]
        # Rounds over all scenarios, so that load from other jobs on the machine hits every row alike.
        runs = [[scenario() for scenario in scenarios] for _ in range(n)]
    finally:
        for server in servers:
            server.stop(60)
    rows = [min(column, key=lambda row: row.seconds) for column in zip(*runs)]
    print(
        f"\n{len(items)} items ({args.requests} requests x {k} items, both scores: 2 prompts per item), tiny Qwen3 "
        f"judge, transformers on CPU, {os.cpu_count()} CPUs, best of {n}; on: max_batch_size={args.max_batch_size}, "
        f"max_wait_ms={args.max_wait_ms:g}; off: max_batch_size={k}"
    )
    print(f"{'':<34}{'clients':>8}{'items/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mean batch':>12}")
    for row in rows:
        print(row.cells())
    return 0


if __name__ == "__main__":
    sys.exit(main())
