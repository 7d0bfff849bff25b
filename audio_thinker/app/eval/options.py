"""The options of `audio-thinker eval` and `audio-thinker eval score`, as typed models that the parsers are
derived from; light to import (no torch), so that `--help` and the input checks run before any model loads."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from audio_thinker.app.errors import EvalError
from audio_thinker.core.chat import detect_family
from audio_thinker.core.options import add_model_arguments
from audio_thinker.core.vocab import AnswerExtraction, Benchmark, Dtype, EngineName, PromptMode


class EvalOptions(BaseModel):
    """What to evaluate and how."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="Policy folder (Qwen2-Audio, or a Qwen2.5-Omni / Qwen3-Omni folder, full or thinker-only)."
    )
    bench: Benchmark = Field(
        description="Benchmark of --data: mmau (the paper's MMAU test-mini release), mmau-v05.15.25 (its revised "
        "release), mmau-pro (its multiple-choice part), mmar, mmsu, air (AIR-Bench foundation), synthetic."
    )
    data: str = Field(
        description="The benchmark's file (mmau-test-mini.json, test.parquet, MMAR-meta.json, MMSU rows, "
        "Foundation_meta.json, ...; docs/eval.md)."
    )
    audio_root: str | None = Field(None, description="Folder relative audio paths start from (none: --data's folder).")
    out: str | None = Field(None, description="Output folder (none: eval_results/<model>-<bench>-<prompt>).")
    prompt: PromptMode = Field(
        "adaptive", description="adaptive: the model decides; think: forced reasoning; no_think: answer only."
    )
    template_file: str | None = Field(
        None, description="Instruction template with {question} and {choices} (none: the packaged one of --prompt)."
    )
    letter_choices: bool = Field(False, description="List choices as (A) ... and accept a bare letter as the answer.")
    answer_extraction: AnswerExtraction = Field(
        "lenient",
        description="lenient: the last <answer>...</answer>, else the official scripts' free-text rule (the "
        "benchmarks' own numbers); strict: the training parser (stray text makes a response invalid).",
    )
    engine: EngineName = Field("transformers", description="Generation engine (vllm on GPU nodes).")
    limit: int | None = Field(None, ge=1, description="Evaluate the first N questions only (none: all).")
    batch_size: int = Field(8, ge=1, description="Questions per engine call.")
    max_new_tokens: int = Field(1024, ge=1, description="Generation budget per question.")
    temperature: float | None = Field(
        None, gt=0, description="Sample at this temperature, seeded per question (none: greedy)."
    )
    top_p: float = Field(1.0, gt=0, le=1, description="With --temperature: nucleus sampling threshold.")
    seed: int = Field(0, description="Sampling seed (per question).")
    judge_url: str | None = Field(
        None, description="Judge base URL: audit the consistency of think responses (none: no audit)."
    )
    judge_api_key: str | None = Field(None, description="Judge API key (none: AUDIO_THINKER_JUDGE_API_KEY).")
    dtype: Dtype | None = Field(None, description="Weights dtype (none: bfloat16 on GPU, float32 on CPU).")
    device: str | None = Field(
        None, description="Torch device of the transformers engine (none: cuda if available, else cpu)."
    )
    max_model_len: int = Field(4096, ge=128, description="vLLM context length (prompt with audio tokens + answer).")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM GPU memory share.")

    @property
    def out_dir(self) -> Path:
        name = f"{Path(self.model).name}-{self.bench}-{self.prompt}"
        return Path(self.out) if self.out else Path("eval_results") / name

    def check_inputs(self) -> str:
        """Fail fast on inputs that do not exist, before an engine loads; returns the policy's family."""
        if not Path(self.data).is_file():
            raise FileNotFoundError(f"--data {self.data} is not a file")
        if Path(self.data).stat().st_size == 0:
            raise EvalError(f"--data {self.data} is empty")
        if self.template_file is not None and not Path(self.template_file).is_file():
            raise FileNotFoundError(f"--template-file {self.template_file} is not a file")
        if self.out is not None and Path(self.out).is_file():
            raise EvalError(f"--out {self.out} is a file, not a folder")
        if self.audio_root is not None and not Path(self.audio_root).is_dir():
            raise FileNotFoundError(f"--audio-root {self.audio_root} is not a folder")
        try:
            return detect_family(self.model)
        except (FileNotFoundError, ValueError) as exc:
            raise EvalError(f"--model: {exc}") from None


class ScoreOptions(BaseModel):
    """Score a predictions file that already exists (ours or another system's)."""

    model_config = ConfigDict(extra="forbid")

    bench: Benchmark = Field(description="Benchmark layout of --predictions.")
    predictions: str = Field(description="The benchmark's file with a prediction per row (e.g. predictions.json).")


def add_eval_parser(
    subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """`eval` (options from EvalOptions) with its `score` sub-command (options from ScoreOptions)."""
    parser = subparsers.add_parser(
        "eval",
        parents=list(parents),
        help="evaluate a model on MMAU / MMAU-v05.15.25 / MMAU-Pro / MMAR / MMSU / AIR-Bench / synthetic, or score "
        "predictions (docs/eval.md)",
        description="Run: audio-thinker eval --model DIR --bench B --data FILE [...]. "
        "Score an existing predictions file: audio-thinker eval score --bench B --predictions FILE.",
    )
    add_model_arguments(parser, EvalOptions, required=False)  # `eval score` needs none of them
    score = parser.add_subparsers(dest="eval_command", metavar="score").add_parser(
        "score",
        parents=list(parents),
        help="score an existing predictions file; prints the results.json object",
        description=ScoreOptions.__doc__,
    )
    add_model_arguments(score, ScoreOptions)
    return parser
