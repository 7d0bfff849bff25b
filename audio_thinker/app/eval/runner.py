"""`audio-thinker eval`: generate answers to a benchmark with either engine, score them, write the report.

One call of `run_eval` writes into `out`:
- `partial.jsonl`: append-only, a settings line then one line per generated question (the raw completion).
  A rerun with the same settings reloads it and generates only the questions it lacks, so an interrupted
  evaluation resumes where it stopped (also with a larger --limit); different settings are refused
  instead of mixing two models' outputs.
- `predictions.json` in the benchmark's own layout (see `predictions`), `results.json` (see `scoring`),
  `report.md` and `no_think_by_difficulty.png` (see `report`).

Decoding is greedy by default (one answer per question, as benchmarks are reported); `temperature` switches
to sampling, seeded per question so a rerun gives the same answers.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from audio_thinker.app.errors import EvalError
from audio_thinker.app.eval.extraction import prediction_from_text
from audio_thinker.app.eval.options import EvalOptions
from audio_thinker.app.eval.predictions import (
    FORMATS,
    PredictionRow,
    prediction_row,
    write_predictions,
)
from audio_thinker.app.eval.report import BENCH_TITLES, PLOT_NAME, plot_no_think, render_report, with_ci
from audio_thinker.app.eval.scoring import score_row
from audio_thinker.core.accuracy import aggregate
from audio_thinker.core.data import Dataset, load_dataset
from audio_thinker.core.chat import render_chat
from audio_thinker.core.log import get_logger
from audio_thinker.core.progress import progress
from audio_thinker.core.protocol import build_instruction, load_template, parse_response
from reward_server.client import JudgeClient
from rollout.build import build_engine
from rollout.engine import GenerationEngine, GenerationRequest, SamplingConfig

log = get_logger(__name__)

MAX_AUDIO_SECONDS = 30.0  # the Whisper encoders of both families see 30 s
JUDGE_CHUNK = 32  # think responses per judge request


def sampling_config(spec: EvalOptions) -> SamplingConfig:
    """Greedy unless a temperature is given; one answer per question."""
    if spec.temperature is None:
        return SamplingConfig(n=1, max_new_tokens=spec.max_new_tokens, logprobs=False, greedy=True)
    return SamplingConfig(n=1, temperature=spec.temperature, top_p=spec.top_p,
                          max_new_tokens=spec.max_new_tokens, logprobs=False)


def item_seed(seed: int, item_id: str) -> int:
    """A per-question sampling seed: the same question gets the same seed in every run and batch."""
    return zlib.crc32(f"{seed}:{item_id}".encode())


class PartialLog:
    """The append-only `partial.jsonl`: settings on line 1, then one generated question per line."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        self.done: dict[str, dict] = {}
        if path.is_file() and path.stat().st_size:
            self._load()
        else:
            path.write_text(json.dumps({"settings": self.settings}) + "\n")

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0])["settings"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EvalError(f"{self.path} line 1: not a settings line; use another --out or delete the file") from None
        if header != self.settings:
            changed = sorted(k for k in set(header) | set(self.settings) if header.get(k) != self.settings.get(k))
            raise EvalError(
                f"{self.path} holds outputs made with other settings (different: {', '.join(changed)}); "
                "use another --out, or delete the file to start over"
            )
        kept = lines[:1]
        for n, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):  # the run was killed while writing this line
                    log.warning("%s line %d is incomplete (interrupted write); that question is generated again",
                                self.path, n)
                    break
                raise EvalError(f"{self.path} line {n}: not valid JSON; delete the file to start over") from None
            self.done[record["id"]] = record
            kept.append(line)
        text = "".join(line + "\n" for line in kept)
        if text != self.path.read_text(encoding="utf-8"):  # drop a cut last line so appends start clean
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)

    def append(self, records: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.done[r["id"]] = r


def generate_missing(
    engine: GenerationEngine, dataset: Dataset, prompts: list[str], spec: EvalOptions, partial: PartialLog
) -> int:
    """Generate, in batches, the questions `partial` lacks; each batch is on disk before the next starts."""
    sampling = sampling_config(spec)
    todo = [i for i in range(len(prompts)) if dataset[i].id not in partial.done]
    batches = [todo[k : k + spec.batch_size] for k in range(0, len(todo), spec.batch_size)]
    if len(todo) < len(prompts):
        log.info("%s: %d of %d questions already generated", partial.path, len(prompts) - len(todo), len(prompts))
    desc = f"eval {spec.bench} ({len(todo)} questions)"
    for batch in progress(batches, desc=desc, total=len(batches), unit="batch"):
        requests = [
            GenerationRequest(prompts[i], dataset.audio(i), seed=item_seed(spec.seed, dataset[i].id)) for i in batch
        ]
        outputs = engine.generate(requests, sampling)
        partial.append([
            {"id": dataset[i].id, "row": dataset[i].row, "output": samples[0].text,
             "finish_reason": samples[0].finish_reason, "num_tokens": len(samples[0].token_ids)}
            for i, samples in zip(batch, outputs)
        ])
    return len(todo)


def consistency_audit(url: str, api_key: str | None, items: list[dict]) -> list[int]:
    """The judge's 0/1 consistency verdict for each think response (question, think, answer, choices)."""
    verdicts: list[int] = []
    with JudgeClient(url, api_key=api_key) as judge:
        chunks = [items[k : k + JUDGE_CHUNK] for k in range(0, len(items), JUDGE_CHUNK)]
        for chunk in progress(chunks, desc="consistency audit", total=len(chunks), unit="request"):
            verdicts += [int(r.consistency) for r in judge.judge(chunk, scores=["consistency"])]
    return verdicts


def run_settings(spec: EvalOptions, engine: GenerationEngine, template: str) -> dict:
    """What decides the outputs: a resumed run must match it exactly (the limit may change)."""
    return {
        "model": str(Path(spec.model).resolve()), "family": engine.family, "engine": type(engine).__name__,
        "bench": spec.bench, "data": str(Path(spec.data).resolve()), "prompt": spec.prompt, "template": template,
        "letters": spec.letter_choices, "sampling": asdict(sampling_config(spec)), "seed": spec.seed,
    }


def run_eval(spec: EvalOptions, engine: GenerationEngine) -> dict:
    """Generate what is missing, then score everything and write the four output files; returns results."""
    template = load_template(spec.prompt, spec.template_file)
    dataset = load_dataset(spec.data, FORMATS[spec.bench], spec.audio_root, max_seconds=MAX_AUDIO_SECONDS)
    seen: dict[str, int] = {}
    for item in dataset:
        if item.id in seen:
            raise EvalError(f"{spec.data}: id {item.id!r} is on rows {seen[item.id]} and {item.row}; "
                            "evaluation needs unique ids (they key the resumable partial.jsonl)")
        seen[item.id] = item.row
    items = dataset.items[: spec.limit]
    letters = spec.letter_choices
    prompts = [render_chat(engine.family, build_instruction(it.question, it.choices, spec.prompt, template, letters))
               for it in items]
    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    partial = PartialLog(out / "partial.jsonl", run_settings(spec, engine, template))
    generate_missing(engine, dataset, prompts, spec, partial)

    parsed = [parse_response(partial.done[it.id]["output"]) for it in items]
    predictions = [
        prediction_from_text(spec.bench, partial.done[it.id]["output"], it.choices, letters, spec.answer_extraction)
        for it in items
    ]
    scored = [
        score_row(
            PredictionRow(it.id, it.row, it.choices, it.answer, pred, it.task, it.difficulty, it.category, p.mode),
            spec.bench,
        )
        for it, p, pred in zip(items, parsed, predictions)
    ]
    details = [
        {"output": partial.done[it.id]["output"], "mode": p.mode, "think": p.think, "answer": p.answer,
         "finish_reason": partial.done[it.id]["finish_reason"], "status": s.status}
        for it, p, s in zip(items, parsed, scored)
    ]
    results = aggregate(scored)
    if dataset.excluded:
        results["excluded"] = dict(dataset.excluded)
    if spec.judge_url:
        think = [i for i, p in enumerate(parsed) if p.mode == "think"]
        verdicts = consistency_audit(spec.judge_url, spec.judge_api_key, [
            {"question": items[i].question, "think": parsed[i].think, "answer": parsed[i].answer,
             "choices": items[i].choices}
            for i in think
        ])
        for i, v in zip(think, verdicts):
            details[i]["consistency"] = v
        rate = round(100.0 * sum(verdicts) / len(verdicts), 2) if verdicts else None
        results["consistency"] = {"rate": rate, "consistent": sum(verdicts), "judged": len(verdicts)}

    write_predictions(out / "predictions.json", [
        prediction_row(spec.bench, it.source, pred, d) for it, pred, d in zip(items, predictions, details)
    ])
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    sampling = sampling_config(spec)
    decoding = "greedy" if sampling.greedy else f"sampling (temperature {sampling.temperature}, top_p {sampling.top_p})"
    meta = {"model": Path(spec.model).name, "bench": spec.bench, "data": str(spec.data), "prompt": spec.prompt,
            "engine": type(engine).__name__, "decoding": f"{decoding}, max {sampling.max_new_tokens} new tokens",
            "questions": str(len(items))}
    modes = Counter(p.mode for p in parsed)
    (out / "report.md").write_text(render_report(results, meta, modes))
    plot_no_think(results, out / PLOT_NAME, f"No-think rate: {meta['model']} on {BENCH_TITLES[spec.bench]}")
    log.info("eval %s: accuracy %s%% on %d questions; files in %s", spec.bench, results["total"]["accuracy"],
             results["total"]["count"], out)
    return results


def run_eval_command(spec: EvalOptions, family: str) -> int:
    """The `audio-thinker eval` handler, for inputs that `EvalOptions.check_inputs` passed (it gave `family`)."""
    engine = build_engine(
        spec.engine, spec.model, family, spec.dtype, device=spec.device,
        max_model_len=spec.max_model_len, gpu_memory_utilization=spec.gpu_memory_utilization, seed=spec.seed,
    )
    try:
        results = run_eval(spec, engine)
    finally:
        engine.close()
    rates = results["no_think_rate"]
    rate = with_ci(rates["total"], rates["ci95"]["total"]) + "%"
    rate = "n/a (no valid response)" if rates["total"] is None else rate
    total = results["total"]
    print(f"accuracy {with_ci(total['accuracy'], total['ci95'])}% ({total['correct']}/{total['count']}, "
          f"{spec.answer_extraction} answers; 95% interval in brackets), {results['invalid']} invalid, "
          f"no-think rate {rate}; see {spec.out_dir / 'report.md'}")
    return 0
