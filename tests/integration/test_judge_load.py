"""Bounded load test on loopback: a fixed number of requests from concurrent clients, then it stops.

Checked: every request is answered exactly once (200 with its own, correct results, or 429); a 429 only
when the queue could not take the request; the server computed exactly the items it answered; with
retries, every request eventually gets its results.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reward_server.app import ServerSettings
from reward_server.backends import TransformersBackend
from reward_server.cli import ServerThread, build_server
from reward_server.client import AsyncJudgeClient, JudgeClient
from reward_server.schemas import JudgeItem
from reward_server.scoring import score_items

KEY = "load-key"
MAX_QUEUE, MAX_ITEMS = 16, 4


def counters(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


@pytest.fixture(scope="module")
def server(judge_path):
    settings = ServerSettings(
        api_keys=frozenset({KEY}),
        max_queue=MAX_QUEUE,
        max_items=MAX_ITEMS,
        max_batch_size=8,
        max_wait_ms=2.0,
        retry_after_s=0,
    )
    thread = ServerThread(
        build_server(lambda: TransformersBackend(judge_path, device="cpu"), settings, port=0)
    )
    url = thread.start()
    JudgeClient(url).wait_ready(120)
    yield url
    thread.stop(60)


@pytest.fixture(scope="module")
def ref(judge_path) -> TransformersBackend:
    return TransformersBackend(judge_path, device="cpu")


def request_items(phase: str, r: int) -> list[dict]:
    return [
        {
            "question": f"{phase} request {r}, item {k}: which is louder?",
            "think": f"Beep {k} is louder than beep {r}.",
            "answer": str(k),
        }
        for k in range(r % MAX_ITEMS + 1)
    ]


async def blast(url: str, phase: str, workers: int, per_worker: int) -> dict[int, list[httpx.Response]]:
    """Each worker sends its requests one after the other, once each (no retries); answers by request id."""
    answers: dict[int, list[httpx.Response]] = {}
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as http:

        async def worker(w: int) -> None:
            for j in range(per_worker):
                r = w * per_worker + j
                answers.setdefault(r, []).append(
                    await http.post("/v1/judge", json={"items": request_items(phase, r)})
                )

        await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(workers))), 300)
    return answers


def check(
    answers: dict[int, list[httpx.Response]], phase: str, n_requests: int, ref: TransformersBackend
) -> tuple[int, int, int]:
    """(requests answered 200, answered 429, items answered) after checking every answer."""
    assert sorted(answers) == list(range(n_requests))  # no request lost
    ok = full = items = 0
    for r, responses in answers.items():
        assert len(responses) == 1  # answered once
        response = responses[0]
        sent = request_items(phase, r)
        if response.status_code == 429:
            queued, incoming, limit = map(
                int,
                re.match(
                    r"queue full: (\d+) of (\d+) items queued, this request has (\d+)",
                    response.json()["detail"],
                ).group(1, 3, 2),
            )
            assert queued + incoming > limit == MAX_QUEUE and incoming == len(sent)  # refused only when full
            full += 1
            continue
        assert response.status_code == 200, response.text
        got = response.json()["results"]
        want = score_items(ref, [JudgeItem(**i) for i in sent])
        assert len(got) == len(sent)
        for g, w in zip(got, want):  # its own results, in its own order
            assert g["consistency_prob"] == pytest.approx(w.consistency_prob, abs=1e-5)
            assert g["think_quality"] == pytest.approx(w.think_quality, abs=1e-5)
        ok += 1
        items += len(sent)
    return ok, full, items


def test_load_within_queue_capacity_is_never_refused(server, ref):
    # 4 workers x at most 4 items in flight <= 16 queued items: the queue can never be full.
    answers = asyncio.run(blast(server, "calm", workers=4, per_worker=15))
    ok, full, _ = check(answers, "calm", 60, ref)
    assert (ok, full) == (60, 0)


def test_overload_refuses_only_when_full_and_computes_each_answer_once(server, ref):
    before = counters(server)
    answers = asyncio.run(blast(server, "storm", workers=16, per_worker=10))
    ok, full, items = check(answers, "storm", 160, ref)
    after = counters(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert (
        ok + full == 160 and full > 0
    )  # 16 clients x up to 4 items against 16 queued items: it did overflow
    assert delta("judge_requests_total", route="/v1/judge", method="POST", status="200") == ok
    assert delta("judge_requests_total", route="/v1/judge", method="POST", status="429") == full
    # Every answered item was computed exactly once, and nothing of a refused request was.
    assert delta("judge_items_total", score="consistency") == items
    assert delta("judge_items_total", score="think_quality") == items
    assert after[("judge_queue_depth", frozenset())] == 0


def test_with_retries_every_request_gets_its_results(server, ref):
    requests = [request_items("retry", r) for r in range(80)]

    async def main():
        async with AsyncJudgeClient(
            server, api_key=KEY, max_retries=100, backoff_base_s=0.005, backoff_max_s=0.05
        ) as client:
            return await asyncio.wait_for(asyncio.gather(*(client.judge(items) for items in requests)), 300)

    answers = asyncio.run(main())
    for sent, got in zip(requests, answers):
        want = score_items(ref, [JudgeItem(**i) for i in sent])
        assert [g.think_quality for g in got] == pytest.approx([w.think_quality for w in want], abs=1e-5)
