"""Limits before work, on a live judge (uvicorn on 127.0.0.1, the tiny Qwen3 judge, its tokenizer behind a recorder):
a request the queue cannot take and an item over its limits are refused before any of their text is tokenized,
and requests take turns on the tokenizer thread item by item, so a small request does not wait for all of a
large one's tokenizing."""

from __future__ import annotations

import threading
import time

import httpx

from reward_server.app import ServerSettings
from reward_server.backends import TransformersBackend
from reward_server.cli import ServerThread, build_server
from reward_server.client import JudgeClient

KEY = "limits-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class RecordingTokenizer:
    """The judge's tokenizer, recording the user text of each field it encodes; a text holding `hold` waits for
    `release` first."""

    def __init__(self, tokenizer, hold: str):
        self.tokenizer, self.hold = tokenizer, hold
        self.seen: list[str] = []
        self.holding, self.release = threading.Event(), threading.Event()

    def encode(self, text: str, add_special_tokens: bool = False, split_special_tokens: bool = False) -> list[int]:
        if split_special_tokens:  # a user field
            self.seen.append(text)
            if self.hold in text:
                self.holding.set()
                self.release.wait(60)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens,
                                     split_special_tokens=split_special_tokens)  # fmt: skip


def item(name: str, **kw) -> dict:
    return {"question": f"{name}: which beep is louder?", "think": f"{name} thinks the second.", "answer": "second",
            **kw}  # fmt: skip


def wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def serve(judge_path: str, **limits) -> tuple[ServerThread, str, RecordingTokenizer]:
    """A ready judge whose tokenizer records the user texts it encodes (and holds the one naming BIG-0)."""
    recorder: dict[str, RecordingTokenizer] = {}

    def load():
        backend = TransformersBackend(judge_path, device="cpu")
        backend.tokenizer = recorder["t"] = RecordingTokenizer(backend.tokenizer, hold="BIG-0")
        return backend

    thread = ServerThread(build_server(load, ServerSettings(api_keys=frozenset({KEY}), **limits), port=0))
    url = thread.start()
    JudgeClient(url).wait_ready(60)
    recorder["t"].seen.clear()
    return thread, url, recorder["t"]


def post(url: str, answers: dict, name: str, items: list[dict]) -> threading.Thread:
    """Send in the background; the answer lands in answers[name]."""
    worker = threading.Thread(target=lambda: answers.update(
        {name: httpx.post(f"{url}/v1/judge", json={"items": items}, headers=AUTH, timeout=60)}))  # fmt: skip
    worker.start()
    return worker


def test_items_over_their_limits_and_requests_the_queue_cannot_take_are_never_tokenized(judge_path):
    # A batch waits (up to 5 s) for 8 items; the queue takes 4.
    thread, url, tok = serve(judge_path, max_items=4, max_queue=4, max_choices=3, max_batch_size=8,
                             max_wait_ms=5000.0)  # fmt: skip
    answers: dict[str, httpx.Response] = {}
    try:
        first = post(url, answers, "first", [item(f"FIRST-{k}") for k in range(3)])
        wait_for(lambda: thread.server.config.app.state.judge.batcher.queued_items == 3)
        r = httpx.post(f"{url}/v1/judge", json={"items": [item(f"FULL-{k}") for k in range(2)]}, headers=AUTH)
        assert r.status_code == 429 and r.json()["detail"].startswith("queue full: 3 of 4 items queued")
        r = httpx.post(f"{url}/v1/judge", json={"items": [item("CHOICES", choices=list("abcd"))]}, headers=AUTH)
        assert r.status_code == 413 and r.json()["detail"] == "items[0].choices: 4 choices, the limit is 3"
        assert any("FIRST-2" in t for t in tok.seen)  # the recorder sees what is tokenized...
        assert [t for t in tok.seen if "FULL" in t or "CHOICES" in t] == []  # ...and the refused were not
        first.join(60)
    finally:
        thread.stop(60)
    assert answers["first"].status_code == 200


def test_requests_take_turns_on_the_tokenizer_item_by_item(judge_path):
    thread, url, tok = serve(judge_path, max_items=4, max_batch_size=4, max_wait_ms=2.0)
    answers: dict[str, httpx.Response] = {}
    try:
        big = post(url, answers, "big", [item(f"BIG-{k}") for k in range(3)])
        wait_for(tok.holding.is_set)  # the big request's first item is being tokenized, and waits
        small = post(url, answers, "small", [item("SMALL")])
        wait_for(lambda: thread.server.config.app.state.judge.tokenizer_thread._work_queue.qsize() == 1)
        tok.release.set()
        big.join(60)
        small.join(60)
    finally:
        tok.release.set()
        thread.stop(60)
    assert answers["big"].status_code == answers["small"].status_code == 200
    order = [text.split(":")[0] for text in tok.seen if text.startswith(("BIG", "SMALL"))]
    assert order.index("SMALL") < order.index("BIG-1")  # right after the big request's first item, not its last
