"""The judge client's retry and failure behaviour against a real HTTP server that fails on purpose.

The flaky server (FastAPI on uvicorn, 127.0.0.1, free port) answers the statuses of a per-test script
before it answers normally; it counts every attempt, so the tests see exactly what the client did.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import socket
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from reward_server.cli import ServerThread
from reward_server.client import (
    AsyncJudgeClient,
    JudgeClient,
    JudgeError,
    JudgeRequestError,
    JudgeUnavailableError,
    parse_retry_after,
    retry_delay,
)
from reward_server.schemas import JudgeRequest, JudgeResponse, JudgeResult

ITEMS = [{"question": "q", "think": "x" * n, "answer": "a"} for n in (10, 25, 40)]


def flaky_app() -> FastAPI:
    app = FastAPI()
    app.state.script, app.state.calls, app.state.delay_s, app.state.drop_last = [], 0, 0.0, False

    @app.post("/v1/judge")
    async def judge(request: JudgeRequest):
        app.state.calls += 1
        if app.state.delay_s:
            await asyncio.sleep(app.state.delay_s)
        if app.state.script:
            status, headers = app.state.script.pop(0)
            return JSONResponse(
                {"detail": f"failing on purpose ({status})"}, status_code=status, headers=headers
            )
        # Each item's result is a function of that item, so a mix-up would show.
        results = [
            JudgeResult(consistency=1, consistency_prob=1.0, think_quality=len(i.think) / 100)
            for i in request.items
        ]
        return JudgeResponse(
            results=results[:-1] if app.state.drop_last else results, model="flaky", prompt_version="test"
        )

    return app


@pytest.fixture(scope="module")
def flaky():
    app = flaky_app()
    thread = ServerThread(uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None)))
    url = thread.start()
    yield url, app
    thread.stop(30)


@pytest.fixture
def server(flaky):
    url, app = flaky
    app.state.script, app.state.calls, app.state.delay_s, app.state.drop_last = [], 0, 0.0, False
    return url, app.state


def client(url: str, **kw) -> JudgeClient:
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    return JudgeClient(url, api_key="k", seed=0, **kw)


def test_retries_429_and_5xx_then_returns_the_results(server):
    url, state = server
    state.script = [(429, {"Retry-After": "0"}), (503, {}), (502, {}), (500, {})]
    results = client(url, max_retries=4).judge(ITEMS)
    assert state.calls == 5
    assert [r.think_quality for r in results] == [0.10, 0.25, 0.40]


def test_raises_after_the_last_retry_and_never_returns_a_score(server):
    url, state = server
    state.script = [(503, {})] * 10
    with pytest.raises(
        JudgeUnavailableError, match=r"failed after 3 attempts, last: HTTP 503: failing on purpose \(503\)"
    ) as info:
        client(url, max_retries=2).judge(ITEMS)
    assert info.value.status == 503 and state.calls == 3


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_client_errors_are_not_retried(server, status):
    url, state = server
    state.script = [(status, {})]
    with pytest.raises(JudgeRequestError, match=f"HTTP {status}") as info:
        client(url, max_retries=5).judge(ITEMS)
    assert info.value.status == status and state.calls == 1


def test_connection_errors_are_retried_then_raised():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeUnavailableError, match="failed after 3 attempts, last: ConnectError") as info:
        client(f"http://127.0.0.1:{port}", max_retries=2).judge(ITEMS)
    assert info.value.status is None


def test_timeouts_are_retried_then_raised(server):
    url, state = server
    state.delay_s = 1.0
    with pytest.raises(JudgeUnavailableError, match="failed after 2 attempts, last: ReadTimeout"):
        client(url, max_retries=1, timeout_s=0.2).judge(ITEMS)
    assert state.calls == 2


def test_a_wrong_number_of_results_is_an_error_not_a_padding(server):
    url, state = server
    state.drop_last = True
    with pytest.raises(JudgeError, match="2 results for 3 items"):
        client(url).judge(ITEMS)


def test_invalid_items_fail_before_any_request(server):
    url, state = server
    with pytest.raises(ValidationError, match="think"):
        client(url).judge([{"question": "q", "answer": "a"}])
    with pytest.raises(ValidationError, match="scores"):
        client(url).judge(ITEMS, scores=["accuracy"])
    assert state.calls == 0


def test_async_client_retries_and_raises_the_same_way(server):
    url, state = server

    async def main():
        async with AsyncJudgeClient(
            url, api_key="k", max_retries=2, backoff_base_s=0.01, backoff_max_s=0.05
        ) as c:
            state.script = [(429, {"Retry-After": "0"}), (504, {})]
            ok = await c.judge(ITEMS, scores=["think_quality"])
            calls_ok = state.calls
            state.script = [(500, {})] * 3
            with pytest.raises(JudgeUnavailableError, match="failed after 3 attempts"):
                await c.judge(ITEMS)
            return ok, calls_ok

    ok, calls_ok = asyncio.run(main())
    assert [r.think_quality for r in ok] == [0.10, 0.25, 0.40] and calls_ok == 3 and state.calls == 6


# ------------------------------------------------------------------------------------------------ delays


def test_backoff_is_exponential_with_equal_jitter_and_capped():
    rng = random.Random(0)
    for attempt, (low, high) in enumerate(
        [(0.25, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (2.5, 5.0), (2.5, 5.0)]
    ):
        for _ in range(50):
            assert low <= retry_delay(attempt, base_s=0.5, max_s=5.0, rng=rng) <= high
    assert retry_delay(0, 0.5, 30.0, retry_after_s=7.0, rng=rng) == 7.0  # Retry-After is a floor ...
    assert retry_delay(0, 0.5, 3.0, retry_after_s=7.0, rng=rng) == 3.0  # ... capped at max_s
    assert (
        2.0 <= retry_delay(3, 0.5, 30.0, retry_after_s=1.0, rng=rng) <= 4.0
    )  # a shorter Retry-After changes nothing


def test_retry_after_is_read_from_the_answer():
    c = JudgeClient("http://127.0.0.1:9", backoff_base_s=0.5, backoff_max_s=30.0, seed=0)
    answer = httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "queue full"})
    assert c._outcome(answer, None, "/v1/judge", attempt=0) == 7.0
    assert parse_retry_after("12") == 12.0
    future = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 50.0 <= parse_retry_after(future) <= 61.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
