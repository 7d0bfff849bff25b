"""`audio-thinker make-cot`: chain-of-thought rationales for a training set, the paper's recipe in two steps.

1. Captions: the policy model describes every clip (the packaged `prompts/cot_caption_v1.txt`), greedy and
   batched through the project's rollout engine (transformers or vLLM), or, with a `--captioner` URL, by an
   OpenAI-compatible endpoint serving an audio model (the clip as a base64 wav `input_audio` part; a caption
   request that fails after retries is counted and asked again on a rerun). Lines go to `OUT.captions.jsonl`.
2. Rationales: an OpenAI-compatible chat endpoint (the paper: Qwen2.5-72B-Instruct) writes the reasoning from the
   caption, the question, the choices and the correct answer (`prompts/cot_rationale_v1.txt`, our own prompt:
   the paper's appendix is not in our copy). A rationale is kept only if its last "answer is ..." names the
   correct choice and it holds no protocol tag; otherwise it goes to `OUT.rejected.jsonl` with the reason.

`OUT` holds the accepted rows: each source row unchanged (so `audio_path` still resolves against the same audio
root) plus `caption`, `rationale`, `cot_prompt` and `cot_model`. `OUT.report.json` counts everything: captions
made, accepted, rejected by reason, failed requests (listed; a rerun retries them). Every file is append-only
while running, so a killed run loses at most the lines in flight, and a rerun does only what is missing; at the
end OUT and the rejected file are rewritten in the data's order, so the same answers give the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections import Counter
from pathlib import Path

from audio_thinker.app.data.chat_client import ChatClient, ChatError
from audio_thinker.app.data.options import CotOptions, is_url
from audio_thinker.app.errors import CotError
from audio_thinker.core.audio import wav_bytes
from audio_thinker.core.data import Dataset, load_dataset
from audio_thinker.core.chat import detect_family, render_chat
from audio_thinker.core.log import get_logger
from audio_thinker.core.progress import progress
from audio_thinker.core.protocol import format_choices
from audio_thinker.core.vocab import normalize_text
from rollout.build import build_engine
from rollout.engine import GenerationRequest, SamplingConfig

log = get_logger(__name__)

PROMPT_DIR = Path(__file__).parent / "prompts"
CAPTION_PROMPT = PROMPT_DIR / "cot_caption_v1.txt"
RATIONALE_PROMPT = PROMPT_DIR / "cot_rationale_v1.txt"
PLACEHOLDERS = ("caption", "question", "choices", "answer")
PROTOCOL_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
MAX_AUDIO_SECONDS = 30.0  # what the Whisper encoders of both families see
API_KEY_ENV = "AUDIO_THINKER_COT_API_KEY"


def side_files(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("") if out.suffix == ".jsonl" else out
    return {name: stem.with_name(f"{stem.name}.{name}") for name in ("captions.jsonl", "rejected.jsonl", "report.json")}


def read_prompt(path: str | Path, placeholders: tuple[str, ...]) -> tuple[str, str]:
    """(name, text) of a prompt file that uses every placeholder (`{caption}`, ...) it must."""
    path = Path(path)
    if not path.is_file():
        raise CotError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8").strip()
    missing = [p for p in placeholders if f"{{{p}}}" not in text]
    if missing:
        raise CotError(f"prompt file {path} lacks the placeholder(s) {', '.join('{' + p + '}' for p in missing)}")
    return path.stem, text


def fill(template: str, values: dict[str, str]) -> str:
    """One pass over the placeholders, so braces inside a caption or a question are left alone."""
    return re.sub(r"\{(" + "|".join(values) + r")\}", lambda m: values[m.group(1)], template)


def _bare(text: str) -> str:
    """A final answer without the quotes, emphasis and full stop around it, normalised."""
    return normalize_text(text.strip().strip("\"'*`").rstrip(".!").strip("\"'*`"))


def check_rationale(text: str, answer: str) -> str | None:
    """Why a rationale is rejected (None: accepted). It must end at the correct answer: the text after its last
    "answer is" (trailing punctuation, quotes and emphasis aside) is the correct choice."""
    if not text.strip():
        return "empty rationale"
    if any(tag in text for tag in PROTOCOL_TAGS):
        return "protocol tag: the rationale contains a <think>/<answer> tag"
    at = text.lower().rfind("answer is")
    if at < 0:
        return "no final answer: the rationale does not end with 'the answer is <choice>'"
    final = text[at + len("answer is") :].lstrip(" \t\n:")
    if _bare(final) != _bare(answer):
        return f"wrong final answer: it ends at {final[:80]!r}, not at the correct answer {answer!r}"
    return None


def read_lines(path: Path) -> list[dict]:
    """The complete lines of an append-only jsonl (a last line cut by a kill is dropped, with a warning)."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n != len(lines):
                raise CotError(f"{path} line {n} is not valid JSON; it is not an append-only file of ours") from None
            log.warning("%s line %d is incomplete (interrupted write); that item is done again", path, n)
    return rows


def _append(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _rewrite(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def _client(options: CotOptions, url: str) -> ChatClient:
    return ChatClient(
        url, options.api_key or os.environ.get(API_KEY_ENV), timeout_s=options.timeout_s,
        max_retries=options.max_retries, backoff_s=options.backoff_s, concurrency=options.concurrency,
    )  # fmt: skip


async def _captions_over_http(
    options: CotOptions, data: Dataset, todo: list[int], path: Path, prompt: tuple[str, str]
) -> list[dict]:
    """Step 1 against an endpoint: one chat request per clip (audio part + the caption instruction), greedy;
    returns the items whose request failed (id, error)."""
    client = _client(options, options.captioner)
    failed: list[dict] = []
    bar = iter(progress(range(len(todo)), desc="captioning clips", unit="clip"))
    try:
        model = options.captioner_model or await client.served_model()

        async def one(i: int) -> None:
            audio = base64.b64encode(wav_bytes(data.audio(i))).decode("ascii")
            content = [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                       {"type": "text", "text": prompt[1]}]  # fmt: skip
            try:
                text = await client.complete(model, [{"role": "user", "content": content}], options.caption_max_tokens)
            except ChatError as exc:
                failed.append({"id": data[i].id, "error": f"caption: {exc}"})
            else:
                _append(path, {"id": data[i].id, "caption": text.strip(), "caption_prompt": prompt[0]})
            next(bar, None)

        await asyncio.gather(*(one(i) for i in todo))
    finally:
        await client.aclose()
    return sorted(failed, key=lambda f: str(f["id"]))


def caption_clips(
    options: CotOptions, data: Dataset, todo: list[int], path: Path, prompt: tuple[str, str]
) -> list[dict]:
    """Step 1: greedy captions of items `todo`, appended to `path` as they come; returns the failed items."""
    if not todo:
        return []
    if is_url(options.captioner):
        return asyncio.run(_captions_over_http(options, data, todo, path, prompt))
    family = detect_family(options.captioner)
    engine = build_engine(options.engine, options.captioner, family, options.dtype, device=options.device)
    sampling = SamplingConfig(n=1, max_new_tokens=options.caption_max_tokens, logprobs=False, greedy=True)
    chat = render_chat(family, prompt[1])
    batches = [todo[i : i + options.batch_size] for i in range(0, len(todo), options.batch_size)]
    try:
        for batch in progress(batches, desc="captioning clips", unit="batch"):
            requests = [GenerationRequest(chat, data.audio(i)) for i in batch]
            for i, samples in zip(batch, engine.generate(requests, sampling)):
                _append(path, {"id": data[i].id, "caption": samples[0].text.strip(), "caption_prompt": prompt[0]})
    finally:
        engine.close()
    return []


async def _rationales(
    options: CotOptions, data: Dataset, todo: list[int], captions: dict[str, str], files: dict[str, Path],
    prompt: tuple[str, str],
) -> tuple[Counter, list[dict]]:  # fmt: skip
    """Step 2: one request per item, `options.concurrency` in flight; accepted / rejected lines appended as they
    come. Returns the counts and the failed items (id, error)."""
    counts: Counter = Counter()
    failed: list[dict] = []
    client = _client(options, options.rationale_url)
    bar = progress(range(len(todo)), desc="asking for rationales", unit="item")
    ticks = iter(bar)
    try:
        model = options.rationale_model or await client.served_model()

        async def one(i: int) -> None:
            item = data[i]
            values = {
                "caption": captions[item.id],
                "question": item.question,
                "choices": format_choices(item.choices, letters=False),
                "answer": item.answer,
            }
            messages = [{"role": "user", "content": fill(prompt[1], values)}]
            try:
                text = (await client.complete(model, messages, options.rationale_max_tokens)).strip()
            except ChatError as exc:
                failed.append({"id": item.id, "error": str(exc)})
                counts["failed"] += 1
            else:
                reason = check_rationale(text, item.answer)
                if reason is None:
                    row = {**item.source, "caption": captions[item.id], "rationale": text}
                    _append(files["out"], {**row, "cot_prompt": prompt[0], "cot_model": model})
                    counts["accepted"] += 1
                else:
                    _append(files["rejected.jsonl"], {"id": item.id, "reason": reason, "rationale": text})
                    counts["rejected"] += 1
            next(ticks, None)

        await asyncio.gather(*(one(i) for i in todo))
    finally:
        await client.aclose()
    return counts, sorted(failed, key=lambda f: str(f["id"]))


def make_cot(options: CotOptions) -> dict:
    """Both steps for the rows that lack them; returns (and writes) the report."""
    out = Path(options.out)
    files = {"out": out, **side_files(out)}
    caption_prompt = read_prompt(options.caption_prompt or CAPTION_PROMPT, ())
    rationale_prompt = read_prompt(options.rationale_prompt or RATIONALE_PROMPT, PLACEHOLDERS)
    data = load_dataset(options.data, "avqa", options.audio_root, max_seconds=MAX_AUDIO_SECONDS)
    data.items = data.items[: options.max_items]
    index = {}
    for i, item in enumerate(data):
        if item.id in index:
            raise CotError(f"{options.data}: id {item.id!r} is on rows {data[index[item.id]].row} and {item.row}; "
                           "make-cot needs unique ids (they key its resumable files)")  # fmt: skip
        index[item.id] = i
    out.parent.mkdir(parents=True, exist_ok=True)

    done_rows = read_lines(out)
    for row in done_rows:
        if row.get("cot_prompt") != rationale_prompt[0]:
            raise CotError(
                f"{out} was made with the rationale prompt {row.get('cot_prompt')!r}, not {rationale_prompt[0]!r}: "
                "write a new --out instead of mixing two prompts"
            )
        if options.rationale_model and row.get("cot_model") != options.rationale_model:
            raise CotError(f"{out} was made by {row.get('cot_model')!r}, not --rationale-model "
                           f"{options.rationale_model!r}: write a new --out")  # fmt: skip
    captions = {str(r["id"]): r["caption"] for r in read_lines(files["captions.jsonl"])}
    todo_captions = [i for i, item in enumerate(data) if item.id not in captions]
    caption_failed = caption_clips(options, data, todo_captions, files["captions.jsonl"], caption_prompt)
    made = len(todo_captions) - len(caption_failed)
    captions = {str(r["id"]): r["caption"] for r in read_lines(files["captions.jsonl"])}

    # A clip whose caption request failed waits for a rerun: no rationale is asked without a caption.
    done = {str(r["id"]) for r in done_rows} | {str(r["id"]) for r in read_lines(files["rejected.jsonl"])}
    done |= {f["id"] for f in caption_failed}
    for item in data:
        if item.id not in done and not captions[item.id]:
            _append(files["rejected.jsonl"], {"id": item.id, "reason": "empty caption", "rationale": ""})
            done.add(item.id)
    todo = [i for i, item in enumerate(data) if item.id not in done]
    counts, failed = Counter(), []
    if todo:
        counts, failed = asyncio.run(_rationales(options, data, todo, captions, files, rationale_prompt))
    failed = sorted(caption_failed + failed, key=lambda f: str(f["id"]))

    order = {item.id: i for i, item in enumerate(data)}
    accepted = sorted(read_lines(out), key=lambda r: order.get(str(r["id"]), len(order)))
    rejected = sorted(read_lines(files["rejected.jsonl"]), key=lambda r: order.get(str(r["id"]), len(order)))
    _rewrite(out, accepted)
    _rewrite(files["rejected.jsonl"], rejected)
    reasons = Counter(r["reason"].split(":")[0] for r in rejected)
    report = {
        "data": str(options.data),
        "items": len(data),
        "captions_made": made,
        "requests_this_run": len(todo),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "failed": len(failed),
        "failed_items": failed,
        "accepted_this_run": counts["accepted"],
        "rejected_this_run": counts["rejected"],
        "rationale_prompt": rationale_prompt[0],
        "caption_prompt": caption_prompt[0],
        "files": {k: str(v) for k, v in files.items()},
    }
    files["report.json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if failed:
        log.warning("%d requests failed (first: %s); rerun to retry them", len(failed), failed[0]["error"])
    return report
