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

import argparse
import json
import os
import sys
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from audio_thinker.app.eval.predictions import (
    FORMATS,
    PredictionRow,
    check_bench,
    prediction_row,
    prediction_text,
    write_predictions,
)
from audio_thinker.app.eval.report import BENCH_TITLES, PLOT_NAME, plot_no_think, render_report
from audio_thinker.app.eval.scoring import aggregate, score_file, score_row
from audio_thinker.core.audio import AudioError
from audio_thinker.core.data import DataError, Dataset, load_dataset
from audio_thinker.core.families import detect_family, render_chat
from audio_thinker.core.log import get_logger
from audio_thinker.core.progress import progress
from audio_thinker.core.protocol import TemplateError, build_instruction, load_template, parse_response
from rollout.build import build_engine
from rollout.engine import GenerationEngine, GenerationRequest, SamplingConfig

log = get_logger(__name__)

MAX_AUDIO_SECONDS = 30.0  # the Whisper encoders of both families see 30 s
JUDGE_CHUNK = 32  # think responses per judge request


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


@dataclass
class EvalSpec:
    """What to evaluate and how (the options of `audio-thinker eval`)."""

    model: str  # Hugging Face folder of the policy
    bench: str  # mmau | mmar | air | synthetic
    data: str  # the benchmark's manifest
    audio_root: str | None = None  # default: the manifest's folder
    out: str | None = None  # default: eval_results/<model>-<bench>-<prompt>
    prompt: str = "adaptive"  # adaptive | think | no_think
    template_file: str | None = None
    letters: bool = False  # list choices as (A) ... and accept a bare letter
    limit: int | None = None  # first N questions only
    batch_size: int = 8
    max_new_tokens: int = 1024
    temperature: float | None = None  # None: greedy
    top_p: float = 1.0
    seed: int = 0
    judge_url: str | None = None  # consistency audit of the think responses
    judge_api_key: str | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("eval_results") / f"{Path(self.model).name}-{self.bench}-{self.prompt}"

    def sampling(self) -> SamplingConfig:
        if self.temperature is None:
            return SamplingConfig(n=1, max_new_tokens=self.max_new_tokens, logprobs=False, greedy=True)
        return SamplingConfig(n=1, temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                              logprobs=False)


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
    engine: GenerationEngine, dataset: Dataset, prompts: list[str], spec: EvalSpec, partial: PartialLog
) -> int:
    """Generate, in batches, the questions `partial` lacks; each batch is on disk before the next starts."""
    sampling = spec.sampling()
    todo = [i for i in range(len(prompts)) if dataset[i].id not in partial.done]
    batches = [todo[k : k + spec.batch_size] for k in range(0, len(todo), spec.batch_size)]
    if len(todo) < len(prompts):
        log.info("%s: %d of %d questions already generated", partial.path, len(prompts) - len(todo), len(prompts))
    desc = f"eval {spec.bench} ({len(todo)} questions)"
    for batch in progress(batches, desc=desc, total=len(batches), unit="batch"):
        requests = [GenerationRequest(prompts[i], dataset.audio(i), seed=item_seed(spec.seed, dataset[i].id)) for i in batch]
        outputs = engine.generate(requests, sampling)
        partial.append([
            {"id": dataset[i].id, "row": dataset[i].row, "output": samples[0].text,
             "finish_reason": samples[0].finish_reason, "num_tokens": len(samples[0].token_ids)}
            for i, samples in zip(batch, outputs)
        ])
    return len(todo)


def consistency_audit(url: str, api_key: str | None, items: list[dict]) -> list[int]:
    """The judge's 0/1 consistency verdict for each think response (question, think, answer, choices)."""
    from reward_server.client import JudgeClient

    verdicts: list[int] = []
    with JudgeClient(url, api_key=api_key) as judge:
        chunks = [items[k : k + JUDGE_CHUNK] for k in range(0, len(items), JUDGE_CHUNK)]
        for chunk in progress(chunks, desc="consistency audit", total=len(chunks), unit="request"):
            verdicts += [int(r.consistency) for r in judge.judge(chunk, scores=["consistency"])]
    return verdicts


def run_settings(spec: EvalSpec, engine: GenerationEngine, template: str) -> dict:
    """What decides the outputs: a resumed run must match it exactly (the limit may change)."""
    return {
        "model": str(Path(spec.model).resolve()), "family": engine.family, "engine": type(engine).__name__,
        "bench": spec.bench, "data": str(Path(spec.data).resolve()), "prompt": spec.prompt, "template": template,
        "letters": spec.letters, "sampling": asdict(spec.sampling()), "seed": spec.seed,
    }


def run_eval(spec: EvalSpec, engine: GenerationEngine) -> dict:
    """Generate what is missing, then score everything and write the four output files; returns results."""
    check_bench(spec.bench)
    if spec.batch_size < 1:
        raise EvalError(f"batch size must be >= 1, got {spec.batch_size}")
    if spec.limit is not None and spec.limit < 1:
        raise EvalError(f"limit must be >= 1, got {spec.limit}")
    if spec.temperature is not None and spec.temperature <= 0:
        raise EvalError(f"temperature must be > 0, got {spec.temperature} (leave it out for greedy decoding)")
    template = load_template(spec.prompt, spec.template_file)
    dataset = load_dataset(spec.data, FORMATS[spec.bench], spec.audio_root, max_seconds=MAX_AUDIO_SECONDS)
    seen: dict[str, int] = {}
    for item in dataset:
        if item.id in seen:
            raise EvalError(f"{spec.data}: id {item.id!r} is on rows {seen[item.id]} and {item.row}; "
                            "evaluation needs unique ids (they key the resumable partial.jsonl)")
        seen[item.id] = item.row
    items = dataset.items[: spec.limit]
    prompts = [render_chat(engine.family, build_instruction(it.question, it.choices, spec.prompt, template, spec.letters))
               for it in items]
    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    partial = PartialLog(out / "partial.jsonl", run_settings(spec, engine, template))
    generate_missing(engine, dataset, prompts, spec, partial)

    parsed = [parse_response(partial.done[it.id]["output"]) for it in items]
    predictions = [prediction_text(spec.bench, p, it.choices, spec.letters) for it, p in zip(items, parsed)]
    scored = [
        score_row(PredictionRow(it.id, it.row, it.choices, it.answer, pred, it.task, it.difficulty, it.category, p.mode),
                  spec.bench)
        for it, p, pred in zip(items, parsed, predictions)
    ]
    details = [
        {"output": partial.done[it.id]["output"], "mode": p.mode, "think": p.think, "answer": p.answer,
         "finish_reason": partial.done[it.id]["finish_reason"], "status": s.status}
        for it, p, s in zip(items, parsed, scored)
    ]
    results = aggregate(scored)
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
    sampling = spec.sampling()
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


def run_eval_command(args: argparse.Namespace) -> int:
    """The `audio-thinker eval` and `audio-thinker eval score` handlers."""
    from reward_server.client import JudgeError

    try:
        if args.eval_command == "score":
            json.dump(score_file(args.predictions, args.bench), sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        missing = [f"--{name}" for name in ("model", "bench", "data") if getattr(args, name) is None]
        if missing:
            log.error("eval: %s required (or `audio-thinker eval score --bench B --predictions FILE`)",
                      ", ".join(missing))
            return 2
        spec = EvalSpec(
            model=args.model, bench=args.bench, data=args.data, audio_root=args.audio_root, out=args.out,
            prompt=args.prompt, template_file=args.template_file, letters=args.letter_choices, limit=args.limit,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_p=args.top_p, seed=args.seed, judge_url=args.judge_url, judge_api_key=args.judge_api_key,
        )
        try:
            family = detect_family(args.model)
        except (FileNotFoundError, ValueError) as exc:
            raise EvalError(str(exc)) from None
        engine = build_engine(
            args.engine, args.model, family, args.dtype, device=args.device, max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed,
        )
        try:
            results = run_eval(spec, engine)
        finally:
            engine.close()
    except (EvalError, DataError, AudioError, TemplateError, JudgeError) as exc:
        log.error("eval: %s", exc)
        return 1
    rate = results["no_think_rate"]["total"]
    rate = "n/a (no valid response)" if rate is None else f"{rate}%"
    print(f"accuracy {results['total']['accuracy']}% ({results['total']['correct']}/{results['total']['count']}), "
          f"no-think rate {rate}; see {spec.out_dir / 'report.md'}")
    return 0
