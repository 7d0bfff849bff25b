"""Can one huge request stall everyone? A judge server on loopback (uvicorn in a thread, the tiny Qwen3 judge, the
default limits) gets a request whose one item has N choices (default 200,000: about 2 MB, under the body limit)
while another client sends one-item requests one after the other until the huge one is answered. Measured: how
long the huge request takes to be refused and with which status, and the longest wait of a one-item request
sent meanwhile (against the same request alone). Rounds run one after the other; the table shows each round and
the median. Not a test: numbers go to docs/judge.md.

    python bench/judge_stall.py [--choices 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx

from audio_thinker.app.data.tiny import ensure_tiny_models
from audio_thinker.core.log import setup_logging
from reward_server.app import ServerSettings
from reward_server.backends import TransformersBackend
from reward_server.cli import ServerThread, build_server
from reward_server.client import JudgeClient

KEY = "bench"
SMALL = {"items": [{"question": "Which beep is louder?", "think": "The second one is louder.", "answer": "second"}]}


def huge(choices: int) -> dict:
    item = dict(SMALL["items"][0], choices=[f"c{i}" for i in range(choices)])
    return {"items": [item]}


async def post(http: httpx.AsyncClient, body: dict) -> tuple[int, float]:
    start = time.perf_counter()
    response = await http.post("/v1/judge", json=body)
    return response.status_code, time.perf_counter() - start


async def small_while(http: httpx.AsyncClient, busy: asyncio.Task) -> tuple[int, float]:
    """One-item requests back to back while `busy` runs: (worst status, longest wait)."""
    worst_status, longest = 200, 0.0
    while not busy.done():
        status, seconds = await post(http, SMALL)
        worst_status = status if status != 200 else worst_status
        longest = max(longest, seconds)
    return worst_status, longest


async def one_round(url: str, choices: int) -> tuple[int, float, int, float, float]:
    """(huge status, huge s, small status, small s, small alone s)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as a, httpx.AsyncClient(
        base_url=url, headers=headers, timeout=120
    ) as b:
        _, alone = await post(b, SMALL)
        big = asyncio.create_task(post(a, huge(choices)))
        small_status, small_s = await small_while(b, big)
        big_status, big_s = await big
    return big_status, big_s, small_status, small_s, alone


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--choices", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=str(ROOT / "artifacts" / "tiny"), help="tiny models (built if missing)")
    args = parser.parse_args()
    setup_logging("WARNING")
    model = str(ensure_tiny_models(args.models)["qwen3_judge"])
    settings = ServerSettings(api_keys=frozenset({KEY}))
    thread = ServerThread(build_server(lambda: TransformersBackend(model, device="cpu"), settings, port=0))
    url = thread.start()
    try:
        JudgeClient(url).wait_ready(120)
        rounds = [asyncio.run(one_round(url, args.choices)) for _ in range(args.rounds)]
    finally:
        thread.stop(120)
    print(f"\none item with {args.choices} choices, one-item requests meanwhile; tiny Qwen3 judge, "
          f"{os.cpu_count()} CPUs, default limits")  # fmt: skip
    print(f"{'round':<8}{'huge: status':>14}{'huge s':>9}{'small: status':>15}{'small max s':>13}{'small alone s':>15}")
    for i, (bs, bt, ss, st, alone) in enumerate(rounds, start=1):
        print(f"{i:<8}{bs:>14}{bt:>9.2f}{ss:>15}{st:>13.2f}{alone:>15.3f}")
    med = [statistics.median(r[k] for r in rounds) for k in (1, 3, 4)]
    print(f"{'median':<8}{'':>14}{med[0]:>9.2f}{'':>15}{med[1]:>13.2f}{med[2]:>15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
