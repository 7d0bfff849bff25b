"""The openai and vllm backends give the transformers backend's scores on the tiny judge.

- openai: against a real OpenAI-compatible `/v1/completions` server on 127.0.0.1 (FastAPI + uvicorn, started
  here) whose logprobs come from a forward pass of the same tiny judge; it speaks both vLLM's exact
  `logprob_token_ids` and plain top-k `logprobs`.
- vllm: `audio-thinker serve-judge --backend vllm` in a subprocess (the real vLLM CPU engine, in-process
  in that server), compared with in-process transformers scoring, then stopped with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from reward_server.app import ServerSettings
from reward_server.backends import OpenAIBackend, TransformersBackend
from reward_server.cli import ServerThread, build_server
from reward_server.client import JudgeClient, JudgeUnavailableError
from reward_server.prompts import PROMPTS, render_ids
from reward_server.schemas import JudgeItem
from reward_server.scoring import BackendError, score_items
from conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = [
    JudgeItem(
        question="Which instrument plays?",
        think="Bowed strings, high pitch, so a violin.",
        answer="violin",
        choices=["violin", "drums"],
    ),
    JudgeItem(question="How many beeps?", think="One, two, three: three beeps.", answer="three"),
    JudgeItem(question="Is it raining?", think="There is a steady hiss like water.", answer="yes"),
    JudgeItem(question="Who speaks?", think="A low voice.", answer="a man"),
]


def completions_app(model_path: str) -> FastAPI:
    """A minimal OpenAI-compatible completions server: token-id prompts, one token, logprobs from the judge."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    net = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    app = FastAPI()
    app.state.fail = False
    app.state.bodies = []

    def next_token_logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(net(torch.tensor([ids])).logits[0, -1].double(), -1)

    app.state.next_token_logprobs = next_token_logprobs

    @app.post("/v1/completions")
    def completions(body: dict):
        app.state.bodies.append(body)
        if app.state.fail:
            return JSONResponse({"error": {"message": "engine is down"}}, status_code=500)
        choices = []
        for i, ids in enumerate(body["prompt"]):
            logp = next_token_logprobs(ids)
            wanted = body.get("logprob_token_ids") or torch.topk(logp, body["logprobs"]).indices.tolist()
            top = {tokenizer.decode([t]): float(logp[t]) for t in wanted}
            best = int(logp.argmax())
            choices.append(
                {
                    "index": i,
                    "text": tokenizer.decode([best]),
                    "finish_reason": "length",
                    "logprobs": {
                        "tokens": [tokenizer.decode([best])],
                        "token_logprobs": [float(logp[best])],
                        "top_logprobs": [top],
                    },
                }
            )
        return {"id": "cmpl-test", "object": "text_completion", "model": body["model"], "choices": choices}

    return app


@pytest.fixture(scope="module")
def ref(judge_path) -> TransformersBackend:
    return TransformersBackend(judge_path, device="cpu")


@pytest.fixture(scope="module")
def remote(judge_path):
    app = completions_app(judge_path)
    thread = ServerThread(uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None)))
    url = thread.start()
    yield url, app.state
    thread.stop(30)


def test_a_transformers_backend_loads_without_its_bar_when_asked_and_leaves_the_bar_as_it_was(judge_path, capfd):
    capfd.readouterr()
    TransformersBackend(judge_path, device="cpu", dtype="float32", progress=False)
    assert "Loading weights" not in capfd.readouterr().err and hf_logging.is_progress_bar_enabled()
    TransformersBackend(judge_path, device="cpu", dtype="float32")
    assert "Loading weights" in capfd.readouterr().err  # the default keeps it (a 7B load takes minutes)


def test_openai_backend_exact_mode_equals_transformers(remote, ref, judge_path):
    url, state = remote
    backend = OpenAIBackend(url, "tiny-judge", tokenizer_path=judge_path)
    got, want = score_items(backend, ITEMS), score_items(ref, ITEMS)
    for g, w in zip(got, want):
        assert g.consistency_prob == pytest.approx(w.consistency_prob, abs=1e-6)
        assert g.think_quality == pytest.approx(w.think_quality, abs=1e-6)
        assert g.consistency == w.consistency
    body = state.bodies[-1]
    assert (
        body["logprob_token_ids"] == backend.label_ids
        and body["max_tokens"] == 1
        and body["model"] == "tiny-judge"
    )
    assert body["prompt"][0] == render_ids(PROMPTS["consistency"], ITEMS[0], ref.tokenizer).ids  # as locally
    backend.close()


def test_openai_backend_top_k_mode_sees_only_the_top_k(remote, ref, judge_path):
    url, state = remote
    ids = [render_ids(PROMPTS[name], item, ref.tokenizer).ids for item in ITEMS for name in PROMPTS]
    want = ref.label_logprobs(ids)
    vocab = len(state.next_token_logprobs(ids[0]))
    full = OpenAIBackend(url, "tiny-judge", tokenizer_path=judge_path, top_logprobs=vocab)
    np.testing.assert_allclose(
        full.label_logprobs(ids), want, atol=1e-6
    )  # k = vocabulary: every label visible
    k = 40
    topk = OpenAIBackend(url, "tiny-judge", tokenizer_path=judge_path, top_logprobs=k).label_logprobs(ids)
    for row, prompt_ids in enumerate(ids):
        kth = float(torch.topk(state.next_token_logprobs(prompt_ids), k).values[-1])
        visible = want[row] >= kth
        np.testing.assert_allclose(topk[row][visible], want[row][visible], atol=1e-6)
        assert np.all(
            np.isneginf(topk[row][~visible])
        )  # outside the top-k: unknown, counted as probability 0


def test_openai_backend_failures_are_errors_and_the_server_answers_502(remote, judge_path):
    url, state = remote
    backend = OpenAIBackend(url, "tiny-judge", tokenizer_path=judge_path)
    state.fail = True
    try:
        with pytest.raises(BackendError, match="HTTP 500"):
            backend.label_logprobs([[1, 2, 3]])
    finally:
        state.fail = False
    with pytest.raises(BackendError, match="ConnectError") as refused:
        OpenAIBackend("http://user:s3cret@127.0.0.1:9", "tiny-judge", tokenizer_path=judge_path).label_logprobs(
            [[1, 2, 3]]
        )
    assert "s3cret" not in str(refused.value) and "http://127.0.0.1:9" in str(refused.value)  # what the log gets

    load = lambda: OpenAIBackend(url, "tiny-judge", tokenizer_path=judge_path)
    thread = ServerThread(build_server(load, ServerSettings(), port=0, no_auth=True))
    judge_url = thread.start()
    try:
        client = JudgeClient(judge_url, max_retries=1, backoff_base_s=0.01)
        client.wait_ready(60)
        assert client.info().backend == "openai"
        assert len(client.judge([ITEMS[0]])) == 1
        state.fail = True
        r = httpx.post(f"{judge_url}/v1/judge", json={"items": [ITEMS[0].model_dump()]})
        # Generic body with the request id; the upstream's URL and reply stay in the server's log.
        assert r.status_code == 502 and r.json() == {
            "detail": "the judge backend failed", "request_id": r.headers["x-request-id"]
        }
        with pytest.raises(JudgeUnavailableError, match="HTTP 502") as info:
            client.judge([ITEMS[0]])
        assert info.value.status == 502
    finally:
        state.fail = False
        thread.stop(30)


def test_vllm_backend_served_by_the_cli_equals_transformers(ref, judge_path, tmp_path):
    port = free_port()
    log_path = tmp_path / "serve-judge.log"
    cmd = [
        sys.executable,
        "-m",
        "audio_thinker.app.cli.main",
        "serve-judge",
        "--model",
        judge_path,
        "--backend",
        "vllm",
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--enforce-eager",
        "--no-auth",
        "--port",
        str(port),
    ]
    env = {**os.environ, "PYTHONPATH": ROOT}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = JudgeClient(f"http://127.0.0.1:{port}", max_retries=0)
        deadline = time.monotonic() + 300
        while not client.is_ready():
            assert proc.poll() is None, (
                f"serve-judge exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, (
                f"vLLM judge not ready in 300 s:\n{log_path.read_text()[-3000:]}"
            )
            time.sleep(0.5)
        assert client.info().backend == "vllm"
        got, want = client.judge(ITEMS), score_items(ref, ITEMS)
        for g, w in zip(got, want):
            assert g.consistency_prob == pytest.approx(w.consistency_prob, abs=1e-5)
            assert g.think_quality == pytest.approx(w.think_quality, abs=1e-5)
        proc.send_signal(signal.SIGTERM)  # graceful: drain, close the engine, then uvicorn re-raises SIGTERM
        assert proc.wait(120) == -signal.SIGTERM, log_path.read_text()[-3000:]
        assert "Application shutdown complete" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
