"""The judge server for real: uvicorn on 127.0.0.1 (free port), the tiny Qwen3 judge, every route and status.

Each server runs in a background thread started and stopped by a fixture; results are compared with
in-process scoring of the same items by a second backend on the same weights. The tests of the shared
`server` fixture run twice: against the single uvicorn process and against the same app
deployed on Ray Serve (one local Ray instance for the module, Serve's proxy on a free loopback port).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from actors import judge_serve
from audio_thinker.app.cli.main import main as cli_main
from reward_server.app import ServerSettings, app_from_env, create_app
from reward_server.auth import API_KEYS_ENV, AuthConfigError, check_auth_setup, load_api_keys
from reward_server.backends import TransformersBackend
from reward_server.cli import ServerThread, build_server
from reward_server.client import AsyncJudgeClient, JudgeClient, JudgeRequestError, JudgeUnavailableError
from reward_server.schemas import JudgeItem
from reward_server.scoring import score_items

KEY = "test-key-a"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def item(i: int, **kw) -> dict:
    d = {
        "question": f"Question {i}: which sound is louder?",
        "think": f"The second beep is louder, step {i}.",
        "answer": "second",
    }
    d.update(kw)
    return d


def metrics(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def ref(judge_path) -> TransformersBackend:
    return TransformersBackend(judge_path, device="cpu")


def serve(judge_path: str, **settings):
    """(ServerThread, url) of a ready server with these settings (keys default to KEY)."""
    settings.setdefault("api_keys", frozenset({KEY, "test-key-b"}))
    thread = ServerThread(
        build_server(
            lambda: TransformersBackend(judge_path, device="cpu"), ServerSettings(**settings), port=0
        )
    )
    url = thread.start()
    JudgeClient(url).wait_ready(120)
    return thread, url


@pytest.fixture(scope="module")
def ray_local(ray_session):
    """The session's Ray instance (tests/conftest.py) for the module's Serve deployments; Serve ends with the
    module."""
    yield
    judge_serve.shutdown()


def serve_on_ray(judge_path: str, **settings) -> judge_serve.JudgeDeployment:
    """The same app on Ray Serve, one replica (so that /metrics counts every request), ready."""
    settings.setdefault("api_keys", frozenset({KEY, "test-key-b"}))
    deployment = judge_serve.JudgeDeployment(
        lambda: TransformersBackend(judge_path, device="cpu"),
        ServerSettings(**settings),
        judge_serve.Scaling(replicas=1),
        port=0,
        num_cpus=0.5,
    )
    JudgeClient(deployment.url).wait_ready(120)
    return deployment


@pytest.fixture(scope="module", params=["uvicorn", "ray-serve"])
def server(request, judge_path):
    settings = dict(
        max_items=8, max_text_chars=8000, max_body_bytes=64 * 1024, max_batch_size=16, max_wait_ms=20.0,
        max_choices=4, max_item_chars=12000,
    )
    if request.param == "uvicorn":
        thread, url = serve(judge_path, **settings)
        yield url
        thread.stop(60)
    else:
        request.getfixturevalue("ray_local")
        deployment = serve_on_ray(judge_path, **settings)
        yield deployment.url
        deployment.close()


# ------------------------------------------------------------------------------------------------ public routes


def test_health_ready_and_metrics_are_public(server):
    url = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    r = httpx.get(f"{url}/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "judge_requests_total" in r.text and "judge_queue_depth" in r.text


@pytest.mark.parametrize("method,path", [("POST", "/v1/judge"), ("POST", "/get_reward"), ("GET", "/v1/info")])
def test_protected_routes_need_a_valid_bearer_key(server, method, path):
    url = server
    body = (
        {"items": [item(0)]} if path == "/v1/judge" else {"query": ["p a"], "prompts": ["p"], "labels": ["a"]}
    )
    for headers, message in [
        ({}, "missing API key"),
        ({"Authorization": "Bearer wrong"}, "invalid API key"),
        ({"Authorization": f"Basic {KEY}"}, "invalid API key"),
        ({"Authorization": "Bearer"}, "invalid API key"),
    ]:
        r = httpx.request(method, f"{url}{path}", json=body if method == "POST" else None, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert message in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
    # Unauthenticated garbage gets 401, not a schema error: auth runs before the body is read.
    assert httpx.request(method, f"{url}{path}", content=b"{not json").status_code == 401
    r = httpx.request(
        method,
        f"{url}{path}",
        json=body if method == "POST" else None,
        headers={"Authorization": "Bearer test-key-b"},
    )
    assert r.status_code == 200, r.text


def test_info_reports_model_backend_prompts_and_limits(server, judge_path):
    url = server
    info = JudgeClient(url, api_key=KEY).info()
    assert (info.model, info.backend, info.prompt_version, info.auth) == (
        Path(judge_path).name,  # the model's name, never its path
        "transformers",
        "judge-v2",
        True,
    )
    assert info.prompts == {"consistency": "consistency-v2", "think_quality": "think-quality-v2"}
    assert info.scores == ["consistency", "think_quality"]
    assert (info.limits.max_items, info.limits.max_text_chars, info.limits.max_body_bytes) == (
        8,
        8000,
        64 * 1024,
    )
    assert (info.limits.max_choices, info.limits.max_item_chars) == (4, 12000)
    assert (info.limits.max_batch_size, info.limits.max_wait_ms, info.limits.request_timeout_s) == (
        16,
        20.0,
        60.0,
    )


def test_openapi_is_generated_from_the_schemas_with_bearer_auth(server):
    url = server
    spec = httpx.get(f"{url}/openapi.json").json()
    assert {"JudgeRequest", "JudgeItem", "JudgeResponse", "RewardRequest", "RewardResponse"} <= set(
        spec["components"]["schemas"]
    )
    assert spec["paths"]["/v1/judge"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/health"]["get"]


# ------------------------------------------------------------------------------------------------ /v1/judge


def test_judge_returns_results_in_order_equal_to_in_process_scoring(server, ref, judge_path):
    url = server
    items = [item(0), item(1, choices=["first", "second"]), item(2, think="No idea.", answer="first")]
    r = httpx.post(f"{url}/v1/judge", json={"items": items}, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == Path(judge_path).name and body["prompt_version"] == "judge-v2"
    expected = score_items(ref, [JudgeItem(**i) for i in items])
    assert len(body["results"]) == 3
    for got, want in zip(body["results"], expected):
        assert got["consistency_prob"] == pytest.approx(want.consistency_prob, abs=1e-5)
        assert got["think_quality"] == pytest.approx(want.think_quality, abs=1e-5)
        assert got["consistency"] == int(got["consistency_prob"] >= 0.5)


def test_judge_computes_only_the_scores_asked_for(server, ref):
    url = server
    client = JudgeClient(url, api_key=KEY)
    only_quality = client.judge([item(3)], scores=["think_quality"])[0]
    assert only_quality.consistency is None and only_quality.consistency_prob is None
    assert only_quality.think_quality == pytest.approx(
        score_items(ref, [JudgeItem(**item(3))])[0].think_quality, abs=1e-5
    )
    only_consistency = client.judge([item(3)], scores=["consistency"])[0]
    assert only_consistency.think_quality is None and only_consistency.consistency in (0, 1)


def test_score_mode_per_request_with_the_server_default(server, ref):
    url = server
    items = [item(4), item(5, think="No idea.", answer="first")]
    body = httpx.post(f"{url}/v1/judge", json={"items": items}, headers=AUTH).json()
    assert body["score_mode"] == "expected"  # ServerSettings default
    client = JudgeClient(url, api_key=KEY)
    argmax = client.judge(items, score_mode="argmax")
    want = score_items(ref, [JudgeItem(**i) for i in items], score_mode="argmax")
    for got, w, e in zip(argmax, want, body["results"]):
        assert got.think_quality == pytest.approx(w.think_quality, abs=1e-5)
        assert round(got.think_quality * 9, 6).is_integer()  # on the 0..9 grid
        assert got.consistency == e["consistency"]  # consistency does not depend on the mode
    r = httpx.post(f"{url}/v1/judge", json={"items": items, "score_mode": "mean"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "score_mode"]


@pytest.mark.parametrize(
    "body,loc,fragment",
    [
        (
            {"items": [{"question": "q", "answer": "a"}]},
            ["body", "items", 0, "think"],
            "body.items.0.think: Field required",
        ),
        (
            {"items": [item(0, thinking="x")]},
            ["body", "items", 0, "thinking"],
            "body.items.0.thinking: Extra inputs",
        ),
        (
            {"items": [item(0)], "scores": ["quality"]},
            ["body", "scores", 0],
            "body.scores.0: Input should be",
        ),
        ({"items": []}, ["body", "items"], "body.items: List should have at least 1 item"),
        (
            {"items": [item(0)], "scores": ["consistency", "consistency"]},
            ["body", "scores"],
            "duplicated score names",
        ),
        (
            {"items": [item(0, think=5)]},
            ["body", "items", 0, "think"],
            "body.items.0.think: Input should be a valid string",
        ),
    ],
)
def test_schema_errors_are_422_naming_the_field(server, body, loc, fragment):
    url = server
    r = httpx.post(f"{url}/v1/judge", json=body, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == loc
    assert fragment in r.json()["message"]


def test_invalid_unicode_is_422_naming_the_field(server):
    url = server
    body = b'{"items": [{"question": "q", "think": "bad \\ud800 text", "answer": "a"}]}'  # a lone surrogate
    r = httpx.post(f"{url}/v1/judge", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 0, "think"]
    assert "invalid unicode" in r.json()["message"] and "ud800" not in r.text


def test_malformed_json_is_422(server):
    url = server
    r = httpx.post(
        f"{url}/v1/judge", content=b'{"items": [', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "JSON" in r.json()["message"]


def test_limits_are_413_with_the_field_and_the_limit(server):
    url = server
    r = httpx.post(f"{url}/v1/judge", json={"items": [item(i) for i in range(9)]}, headers=AUTH)
    assert r.status_code == 413 and r.json()["detail"] == "items: 9 entries, the limit is 8 per request"
    r = httpx.post(f"{url}/v1/judge", json={"items": [item(0), item(1, think="x" * 8001)]}, headers=AUTH)
    assert r.status_code == 413 and r.json()["detail"] == "items[1].think: 8001 characters, the limit is 8000"
    r = httpx.post(f"{url}/v1/judge", json={"items": [item(0, choices=["a", "b" * 8001])]}, headers=AUTH)
    assert r.status_code == 413 and r.json()["detail"].startswith("items[0].choices[1]: 8001 characters")
    r = httpx.post(f"{url}/v1/judge", json={"items": [item(0, choices=list("abcde"))]}, headers=AUTH)
    assert r.status_code == 413 and r.json()["detail"] == "items[0].choices: 5 choices, the limit is 4"
    r = httpx.post(f"{url}/v1/judge", json={"items": [item(0, question="q" * 7000, think="t" * 7000)]}, headers=AUTH)
    assert r.status_code == 413
    assert r.json()["detail"] == "items[0]: 14006 characters in all, the limit is 12000 per item"
    # Within the character limit but longer than the judge's context (rare byte sequences: ~1 token per byte).
    r = httpx.post(f"{url}/v1/judge", json={"items": [item(0, think="zqxjkv" * 1300)]}, headers=AUTH)
    assert r.status_code == 413 and "items[0]: the consistency prompt is" in r.json()["detail"]
    r = httpx.post(
        f"{url}/get_reward",
        json={"query": ["p"] * 9, "prompts": ["p"] * 9, "labels": ["a"] * 9},
        headers=AUTH,
    )
    assert r.status_code == 413 and r.json()["detail"] == "query: 9 entries, the limit is 8 per request"


def test_a_body_over_the_limit_is_413_with_or_without_content_length(server):
    url = server
    big = json.dumps({"items": [item(0, think="y" * 70000)]}).encode()
    r = httpx.post(f"{url}/v1/judge", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "65536 bytes" in r.json()["detail"]

    def chunks():  # chunked transfer: no Content-Length, counted while reading
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    r = httpx.post(f"{url}/v1/judge", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413


# ------------------------------------------------------------------------------------------------ /get_reward


def test_get_reward_follows_the_documented_formula(server, ref):
    url = server
    prompt = "<|im_start|>user\nWhich beep is louder?<|im_end|>\n<|im_start|>assistant\n"
    responses = [
        "<think>The second one is louder.</think><answer>Second</answer><|im_end|>",  # think, correct (case)
        "<answer>second</answer>",  # no_think, correct
        "<answer>first</answer>",  # no_think, wrong
        "the second one",  # invalid
    ]
    reward = JudgeClient(url, api_key=KEY).get_reward(
        [prompt + r for r in responses], [prompt] * 4, ["second"] * 4
    )
    # The judge sees the question, not the chat scaffolding around it.
    question = "Which beep is louder?"
    v = score_items(ref, [JudgeItem(question=question, think="The second one is louder.", answer="Second")])[0]
    c, t = v.consistency, v.think_quality
    # R = R_a * (1 + 0.5 R_c) + 0.5 R_f + R_t with base ATAR accuracy (+1 / +2 / -1), R_c only when correct,
    # no_think R_c = 1 and R_t = mean R_t of the request's think samples, invalid R_a = -1 (the worst), rest 0.
    expected = [1.0 * (1 + 0.5 * c) + 0.5 + t, 2.0 * 1.5 + 0.5 + t, -1.0 + 0.5 + t, -1.0]
    assert reward.rewards == pytest.approx(expected, abs=1e-5)
    assert reward.scores == [1.0, 1.0, 0.0, 0.0]
    logs = reward.extra_logs
    assert logs["format_reward"] == [1.0, 1.0, 1.0, 0.0]
    assert logs["accuracy_reward"] == [1.0, 2.0, -1.0, -1.0]
    assert logs["consistency_reward"] == [float(c), 1.0, 0.0, 0.0]
    assert logs["think_reward"] == pytest.approx([t, t, t, 0.0], abs=1e-5)
    assert logs["think_mode"] == [1.0, 0.0, 0.0, 0.0] and logs["correct"] == [1.0, 1.0, 0.0, 0.0]


def test_get_reward_rejects_what_it_cannot_score(server):
    url = server

    def post(body):
        return httpx.post(f"{url}/get_reward", json=body, headers=AUTH)

    r = post({"query": ["p a", "p b"], "prompts": ["p"], "labels": ["a", "b"]})
    assert r.status_code == 422 and "prompts has 1 entries but query has 2" in r.json()["message"]
    r = post({"query": ["p a", "x b"], "prompts": ["p", "p"], "labels": ["a", "b"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "query", 1]
    r = post({"query": ["p <answer>a</answer>"], "prompts": ["p"], "labels": [" "]})
    assert r.status_code == 422 and "labels[0] is empty" in r.json()["detail"][0]["msg"]
    r = post({"query": ["p"], "prompts": ["p"]})
    assert r.status_code == 422 and "body.labels: Field required" in r.json()["message"]


# ------------------------------------------------------------------------------------------------ batching, metrics


def test_concurrent_clients_each_get_their_own_results(server, ref):
    url = server
    requests = [
        ([item(100 + 10 * r + k) for k in range(r % 3 + 1)], ["consistency", "think_quality"][: 1 + r % 2])
        for r in range(24)
    ]
    before = value(metrics(url), "judge_batch_size_count")

    async def main():
        async with AsyncJudgeClient(url, api_key=KEY) as client:
            return await asyncio.gather(*(client.judge(items, scores=scores) for items, scores in requests))

    answers = asyncio.run(main())
    for (items, scores), got in zip(requests, answers):
        want = score_items(ref, [JudgeItem(**i) for i in items], scores)
        assert len(got) == len(items)
        for g, w in zip(got, want):
            assert g.consistency_prob == pytest.approx(w.consistency_prob, abs=1e-5)
            if "think_quality" in scores:
                assert g.think_quality == pytest.approx(w.think_quality, abs=1e-5)
            else:
                assert g.think_quality is None
    batches = value(metrics(url), "judge_batch_size_count") - before
    assert 0 < batches < len(requests)  # requests were merged


def test_metrics_count_what_happened(server):
    url = server
    before = metrics(url)
    client = JudgeClient(url, api_key=KEY)
    client.judge([item(0), item(1)])
    client.judge([item(2)], scores=["think_quality"])
    assert httpx.post(f"{url}/v1/judge", json={"items": [item(0)]}).status_code == 401
    assert httpx.post(f"{url}/v1/judge", json={"items": []}, headers=AUTH).status_code == 422
    after = metrics(url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("judge_requests_total", route="/v1/judge", method="POST", status="200") == 2
    assert delta("judge_requests_total", route="/v1/judge", method="POST", status="401") == 1
    assert delta("judge_requests_total", route="/v1/judge", method="POST", status="422") == 1
    assert delta("judge_items_total", score="consistency") == 2
    assert delta("judge_items_total", score="think_quality") == 3
    assert delta("judge_batch_size_sum") == 3 and delta("judge_batch_size_count") == 2
    assert delta("judge_request_duration_seconds_count", route="/v1/judge") == 4
    assert delta("judge_batch_duration_seconds_count") == 2
    assert value(after, "judge_queue_depth") == 0
    assert (
        delta("judge_requests_total", route="/metrics", method="GET", status="200") == 1
    )  # the first scrape


# ------------------------------------------------------------------------------------------------ 429, 504, 503


def test_queue_full_is_429_with_retry_after_and_only_then(judge_path):
    # A batch waits (up to 60 s) until it holds 4 items; the queue takes 4 items.
    thread, url = serve(judge_path, max_batch_size=4, max_wait_ms=60000.0, max_queue=4, max_items=4)
    try:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
            results = {}
            first = threading.Thread(
                target=lambda: results.update(
                    first=http.post("/v1/judge", json={"items": [item(1), item(2)]})
                )
            )
            first.start()
            wait_for(lambda: value(metrics(url), "judge_queue_depth") == 2)
            r = http.post("/v1/judge", json={"items": [item(3), item(4), item(5)]})  # 2 + 3 > 4
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert (
                r.json()["detail"] == "queue full: 2 of 4 items queued, this request has 3; retry after 1 s"
            )
            r = http.post(
                "/v1/judge", json={"items": [item(6), item(7)]}
            )  # 2 + 2 == 4: fits, fills the batch
            assert r.status_code == 200 and len(r.json()["results"]) == 2
            first.join(60)
            assert results["first"].status_code == 200 and len(results["first"].json()["results"]) == 2
    finally:
        thread.stop(60)


def test_a_request_past_its_deadline_is_504_and_leaves_the_queue(judge_path):
    thread, url = serve(judge_path, max_batch_size=8, max_wait_ms=60000.0, request_timeout_s=0.5)
    try:
        r = httpx.post(f"{url}/v1/judge", json={"items": [item(1)]}, headers=AUTH, timeout=30)
        assert r.status_code == 504 and r.json()["detail"] == "no answer within the request deadline of 0.5 s"
        assert value(metrics(url), "judge_queue_depth") == 0
        client = JudgeClient(url, api_key=KEY, max_retries=1, backoff_base_s=0.01)
        with pytest.raises(JudgeUnavailableError, match="failed after 2 attempts, last: HTTP 504") as info:
            client.judge([item(1)])
        assert info.value.status == 504
    finally:
        thread.stop(60)


def test_not_ready_while_loading_then_ready(judge_path):
    release = threading.Event()

    def slow_load():
        release.wait(60)
        return TransformersBackend(judge_path, device="cpu")

    thread = ServerThread(build_server(slow_load, ServerSettings(api_keys=frozenset({KEY})), port=0))
    url = thread.start()
    try:
        assert httpx.get(f"{url}/health").status_code == 200
        r = httpx.get(f"{url}/ready")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        r = httpx.post(f"{url}/v1/judge", json={"items": [item(0)]}, headers=AUTH)
        assert (
            r.status_code == 503
            and r.json()["detail"] == "judge is loading"
            and r.headers["retry-after"] == "1"
        )
        release.set()
        JudgeClient(url).wait_ready(60)
        assert JudgeClient(url, api_key=KEY).judge([item(0)])[0].consistency in (0, 1)
    finally:
        release.set()
        thread.stop(60)


def test_a_judge_that_fails_to_load_reports_it_and_build_server_exits(judge_path, tmp_path):
    missing = str(tmp_path / "no-such-model")
    app = create_app(lambda: TransformersBackend(missing), ServerSettings(api_keys=frozenset({KEY})))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on"))
    thread = ServerThread(server)  # no on_fatal: it stays up and says why
    url = thread.start()
    try:
        wait_for(lambda: httpx.get(f"{url}/ready").json()["status"] == "failed")
        ready, health = httpx.get(f"{url}/ready"), httpx.get(f"{url}/health")
        assert ready.status_code == 503 and health.status_code == 503
        # What failed, not where: the model's path stays in the server's log.
        assert ready.json()["error"] == "FileNotFoundError (the server log says why)" == health.json()["error"]
        assert missing not in ready.text
        r = httpx.post(f"{url}/v1/judge", json={"items": [item(0)]}, headers=AUTH)
        assert r.status_code == 503 and r.json()["detail"] == "judge is failed (the server log says why)"
        assert r.json()["request_id"] == r.headers["x-request-id"] and missing not in r.text
        with pytest.raises(JudgeUnavailableError, match="the judge failed to load: FileNotFoundError"):
            JudgeClient(url).wait_ready(60)  # at once, not after 60 s
    finally:
        thread.stop(60)
    # build_server wires on_fatal: the server stops by itself.
    built = build_server(
        lambda: TransformersBackend(missing), ServerSettings(api_keys=frozenset({KEY})), port=0
    )
    own = ServerThread(built)
    own.thread.start()
    own.thread.join(60)
    assert not own.thread.is_alive() and built.config.app.state.judge.status == "failed"


class FailsAfterWarmUp(TransformersBackend):
    """A backend whose scoring breaks with an unexpected error after the warm-up forward."""

    calls = 0

    def label_logprobs(self, prompt_ids):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("boom at /secret/models/judge")
        return super().label_logprobs(prompt_ids)


def test_an_unexpected_error_is_a_generic_500_with_the_request_id(judge_path, caplog):
    server = build_server(lambda: FailsAfterWarmUp(judge_path, device="cpu"), ServerSettings(api_keys=frozenset({KEY})),
                          port=0)  # fmt: skip
    with ServerThread(server) as url:
        JudgeClient(url).wait_ready(60)
        r = httpx.post(f"{url}/v1/judge", json={"items": [item(0)]}, headers=AUTH)
    rid = r.headers["x-request-id"]
    assert r.status_code == 500 and r.json() == {"detail": "internal error", "request_id": rid}
    assert f"request {rid}" in caplog.text and "boom at /secret/models/judge" in caplog.text  # details: the log


def test_graceful_shutdown_answers_requests_in_flight_then_refuses(judge_path):
    thread, url = serve(judge_path, max_batch_size=64, max_wait_ms=3000.0)
    results = {}
    inflight = threading.Thread(
        target=lambda: results.update(
            r=httpx.post(f"{url}/v1/judge", json={"items": [item(1)]}, headers=AUTH, timeout=60)
        )
    )
    inflight.start()
    wait_for(lambda: value(metrics(url), "judge_queue_depth") == 1)
    thread.server.should_exit = True

    def refused() -> bool:
        try:
            httpx.get(f"{url}/health", timeout=1)
        except httpx.TransportError:
            return True
        return False

    wait_for(refused, 10)
    assert inflight.is_alive()  # still waiting for its batch while new connections are refused
    inflight.join(60)
    thread.stop(60)
    assert results["r"].status_code == 200 and len(results["r"].json()["results"]) == 1
    assert thread.server.config.app.state.judge.status == "stopping"


# ------------------------------------------------------------------------------------------------ auth set-up


def test_api_keys_from_env_and_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# team keys\nfile-key-1\n\n  file-key-2  \n")
    assert load_api_keys(str(f), env={API_KEYS_ENV: "env-1, env-2,,"}) == {
        "env-1",
        "env-2",
        "file-key-1",
        "file-key-2",
    }
    assert load_api_keys(None, env={}) == frozenset()
    f.write_text("good\nbad key\n")
    with pytest.raises(AuthConfigError, match=r"keys:2: an API key must not contain whitespace"):
        load_api_keys(str(f), env={})
    with pytest.raises(AuthConfigError, match="does not exist"):
        load_api_keys(str(tmp_path / "nope"), env={})


def test_running_without_keys_needs_no_auth_and_a_loopback_host():
    keys = frozenset({"k"})
    check_auth_setup("0.0.0.0", keys, no_auth=False)
    check_auth_setup("127.0.0.1", frozenset(), no_auth=True)
    check_auth_setup("::1", frozenset(), no_auth=True)
    with pytest.raises(AuthConfigError, match="no API keys"):
        check_auth_setup("127.0.0.1", frozenset(), no_auth=False)
    with pytest.raises(AuthConfigError, match="non-loopback host '0.0.0.0'"):
        check_auth_setup("0.0.0.0", frozenset(), no_auth=True)
    with pytest.raises(AuthConfigError, match="choose one"):
        check_auth_setup("127.0.0.1", keys, no_auth=True)
    with pytest.raises(AuthConfigError, match="non-loopback"):
        build_server(lambda: None, ServerSettings(), host="10.0.0.5", no_auth=True)


def test_without_keys_only_loopback_clients_are_served():
    app = create_app(lambda: None, ServerSettings())  # lifespan not run: nothing loads

    async def post(client_host: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_host, 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://judge") as http:
            return await http.post("/v1/judge", json={"items": [item(0)]})

    remote = asyncio.run(post("10.1.2.3"))
    assert remote.status_code == 401 and "loopback clients only" in remote.json()["detail"]
    assert asyncio.run(post("127.0.0.1")).status_code == 503  # past the guard: the judge is not loaded


def test_cli_refuses_to_serve_without_keys_or_a_model_before_it_loads(tmp_path, monkeypatch, capsys, judge_path):
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    model = str(judge_path)
    refused = {
        "no API keys": ["--model", model],
        "--backend openai needs --openai-base-url": ["--model", model, "--backend", "openai", "--no-auth"],
        "--max-items: max_items (9) > max_queue (8)": ["--model", model, "--max-items", "9", "--max-queue", "8"],
        "--api-key-file": ["--model", model, "--api-key-file", str(tmp_path / "no-keys")],
        f"--model {tmp_path / 'missing'}: no such folder": ["--model", str(tmp_path / "missing"), "--no-auth"],
        f"--model {tmp_path}: not a Hugging Face model folder": ["--model", str(tmp_path), "--no-auth"],
    }
    for message, argv in refused.items():
        assert cli_main(["serve-judge", *argv, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("audio-thinker serve-judge: ") and err.count("\n") == 1 and message in err


def test_asgi_factory_reads_the_environment(judge_path, monkeypatch):
    monkeypatch.delenv("AUDIO_THINKER_JUDGE_MODEL", raising=False)
    with pytest.raises(RuntimeError, match="AUDIO_THINKER_JUDGE_MODEL"):
        app_from_env()
    monkeypatch.setenv("AUDIO_THINKER_JUDGE_MODEL", judge_path)
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    with pytest.raises(RuntimeError, match="no API keys"):
        app_from_env()
    monkeypatch.setenv(API_KEYS_ENV, "env-key")
    thread = ServerThread(
        uvicorn.Server(uvicorn.Config(app_from_env(), host="127.0.0.1", port=0, log_config=None))
    )
    url = thread.start()
    try:
        JudgeClient(url).wait_ready(60)
        assert JudgeClient(url, api_key="env-key").info().backend == "transformers"
        assert httpx.get(f"{url}/v1/info").status_code == 401
    finally:
        thread.stop(60)


def test_client_and_schemas_import_without_torch():
    code = "import sys, reward_server.client, reward_server.schemas; assert 'torch' not in sys.modules, 'torch in'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def test_client_does_not_retry_a_refused_request(server):
    url = server
    with pytest.raises(JudgeRequestError, match="HTTP 401") as info:
        JudgeClient(url, api_key="wrong").judge([item(0)])
    assert info.value.status == 401
    with pytest.raises(JudgeRequestError, match="HTTP 413"):
        JudgeClient(url, api_key=KEY).judge([item(i) for i in range(9)])
