"""`audio-thinker make-cot` end to end: step 1 captions clips with the tiny policy through the rollout engine,
step 2 asks a real OpenAI-compatible HTTP server on loopback (FastAPI + uvicorn in a thread of this process) whose
answers are derived from each request: good rationales, a wrong final answer, a tag, a flaky endpoint (503 twice),
garbage bodies. Rejections and failures are counted and named; reruns resume; --max-items bounds the work."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from audio_thinker.app.cli.main import main
from audio_thinker.core.data import load_dataset
from conftest import free_port

MARKERS = ["", "[bold]", "[wrong]", "[flaky]", "[garbage]", "[tagged]"]  # one question each, in this order


def rationale_app(requests: Counter) -> FastAPI:
    """An OpenAI-compatible chat server whose text follows from the prompt (question, choices, correct answer)."""
    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "rationale-test", "object": "model"}]}

    def completion(body: dict, text: str) -> dict:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        if isinstance(prompt, list):  # a caption request: the clip as a base64 wav part, then the instruction
            part = next(p["input_audio"] for p in prompt if p["type"] == "input_audio")
            wav, rate = sf.read(io.BytesIO(base64.b64decode(part["data"])))
            requests["caption"] += 1
            if requests["caption"] == 1:  # the very first caption request is refused (a client error: no retry)
                return JSONResponse({"error": "bad request"}, status_code=400)
            return completion(body, f"A clip of {len(wav)} samples at {rate} Hz.")
        question = re.search(r"^Question: (.*)$", prompt, re.M).group(1)
        answer = re.search(r"^Correct answer: (.*)$", prompt, re.M).group(1)
        choices = re.findall(r"^- (.*)$", prompt, re.M)
        caption = re.search(r"^Description of the audio: (.*)$", prompt, re.M).group(1)
        marker = next((m for m in MARKERS[1:] if m in question), "")
        requests[marker] += 1
        text = (
            f"I hear what the clip holds ({len(caption)} characters of description). Therefore, the answer is {answer}."
        )
        if marker == "[bold]":
            text = f'Listening closely, the sound settles it. Therefore, the answer is: "**{answer}**".'
        elif marker == "[wrong]":
            text = f"I hear it. Therefore, the answer is {next(c for c in choices if c != answer)}."
        elif marker == "[tagged]":
            text = f"<think>I hear it.</think> Therefore, the answer is {answer}."
        elif marker == "[flaky]" and requests[marker] <= 2:
            return JSONResponse({"error": "overloaded"}, status_code=503)
        elif marker == "[garbage]":
            return PlainTextResponse("<html>upstream proxy error</html>")
        return completion(body, text)

    return app


@pytest.fixture(scope="module")
def endpoint():
    requests: Counter = Counter()
    server = uvicorn.Server(
        uvicorn.Config(rationale_app(requests), host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the rationale server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}", requests
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def manifest(synthetic, tmp_path) -> Path:
    rows = [json.loads(line) for line in (synthetic / "train.jsonl").read_text().splitlines()][: len(MARKERS)]
    for row, marker in zip(rows, MARKERS):
        row["question_text"] = f"{row['question_text']} {marker}".strip()
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_cot(manifest: Path, synthetic: Path, captioner: Path, url: str, out: Path, *extra: str) -> dict:
    args = ["make-cot", "--data", str(manifest), "--audio-root", str(synthetic), "--captioner", str(captioner)]
    args += ["--rationale-url", url, "--out", str(out), "--caption-max-tokens", "8", "--batch-size", "4"]
    assert main([*args, "--max-retries", "3", "--backoff-s", "0.01", "--concurrency", "3", *extra]) == 0
    return json.loads(out.with_name(out.stem + ".report.json").read_text())


def test_make_cot_captions_asks_checks_and_resumes(manifest, synthetic, tiny_models, endpoint, tmp_path):
    url, requests = endpoint
    out = tmp_path / "cot" / "train-cot.jsonl"
    policy = tiny_models["qwen2_audio"]

    first = make_cot(manifest, synthetic, policy, url, out, "--max-items", "4")
    assert (first["items"], first["captions_made"], first["requests_this_run"]) == (4, 4, 4)
    assert (first["accepted"], first["rejected"], first["failed"]) == (3, 1, 0)
    assert first["rejected_by_reason"] == {"wrong final answer": 1}
    assert requests == {"": 1, "[bold]": 1, "[wrong]": 1, "[flaky]": 3}  # two 503s, then an answer

    full = make_cot(manifest, synthetic, policy, url, out)
    assert (full["items"], full["captions_made"], full["requests_this_run"]) == (6, 2, 2)  # only the new rows
    assert (full["accepted"], full["rejected"], full["failed"]) == (3, 2, 1)
    assert full["rejected_by_reason"] == {"protocol tag": 1, "wrong final answer": 1}
    assert requests["[garbage]"] == 4 and "not a chat-completions response" in full["failed_items"][0]["error"]

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    source = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["id"] for r in rows] == [source[i]["id"] for i in (0, 1, 3)]  # the data's order
    assert rows[0]["rationale"].endswith(f"the answer is {source[0]['multi_choice'][source[0]['answer']]}.")
    assert rows[0]["cot_prompt"] == "cot_rationale_v1" and rows[0]["cot_model"] == "rationale-test"
    assert {k: rows[1][k] for k in source[1]} == source[1]  # the source row is kept as it was
    captions = [json.loads(line) for line in out.with_name("train-cot.captions.jsonl").read_text().splitlines()]
    assert len(captions) == 6 and all(c["caption_prompt"] == "cot_caption_v1" for c in captions)
    rejected = [json.loads(line) for line in out.with_name("train-cot.rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == [source[2]["id"], source[5]["id"]]
    assert "not at the correct answer" in rejected[0]["reason"]
    data = load_dataset(out, "avqa", synthetic)  # what `audio-thinker sft` reads
    assert len(data) == 3 and data[0].source["rationale"] == rows[0]["rationale"]

    # A rerun retries the failed request only; the accepted file stays byte-identical.
    before = out.read_bytes()
    again = make_cot(manifest, synthetic, policy, url, out)
    assert (again["captions_made"], again["requests_this_run"], again["failed"]) == (0, 1, 1)
    assert out.read_bytes() == before and requests["[garbage]"] == 8 and requests[""] == 1


def test_make_cot_captions_over_http_and_retries_a_failed_caption_on_a_rerun(manifest, synthetic, endpoint, tmp_path):
    url, requests = endpoint
    out = tmp_path / "cot" / "http-cot.jsonl"
    first = make_cot(manifest, synthetic, url, url, out, "--max-items", "2")  # one endpoint for both steps
    assert requests["caption"] == 1 + 1  # one refused, one answered
    assert (first["captions_made"], first["failed"], first["accepted"]) == (1, 1, 1)
    assert first["failed_items"][0]["error"].startswith("caption: ") and "HTTP 400" in first["failed_items"][0]["error"]
    again = make_cot(manifest, synthetic, url, url, out, "--max-items", "2")
    assert (again["captions_made"], again["failed"], again["accepted"], requests["caption"]) == (1, 0, 2, 3)
    captions = [json.loads(line) for line in out.with_name("http-cot.captions.jsonl").read_text().splitlines()]
    data = load_dataset(manifest, "avqa", synthetic)
    by_id = {c["id"]: c["caption"] for c in captions}
    for i in range(2):  # each caption was made from that row's own clip, sent as 16 kHz wav
        clip = data.audio(i)
        assert by_id[data[i].id] == f"A clip of {len(clip)} samples at 16000 Hz."


def test_make_cot_refuses_a_prompt_without_its_placeholders(manifest, tmp_path, capsys):
    prompt = tmp_path / "mine.txt"
    prompt.write_text("Explain {question} given {caption}.")
    args = ["make-cot", "--data", str(manifest), "--captioner", "http://127.0.0.1:9", "--rationale-url", "http://127.0.0.1:9"]
    assert main([*args, "--out", str(tmp_path / "o.jsonl"), "--rationale-prompt", str(prompt)]) == 2
    assert "lacks the placeholder(s) {choices}, {answer}" in capsys.readouterr().err
