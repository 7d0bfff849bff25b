"""Every closed vocabulary of the project, defined once: model families, prompt and response modes, reward
variants, data and benchmark layouts, engines, judge scores, reward and loss options. Config sections, parsers,
the CLI and the judge service import these instead of spelling the lists again."""

from __future__ import annotations

from typing import Literal, get_args

ModelFamily = Literal["qwen2_audio", "qwen2_5_omni", "qwen3_omni"]
PromptMode = Literal["adaptive", "think", "no_think"]
ResponseMode = Literal["think", "no_think", "invalid"]
RewardVariant = Literal["grpo", "grpo_cot", "atar", "atar_cr", "atar_cr_tr"]
DataFormat = Literal["avqa", "mmau", "mmar", "air", "mmau-pro", "mmsu"]
# MMAU-v05.15.25 is MMAU's revised release: MMAU's layout and scorer, its own name so its numbers never stand
# beside the paper's (which are on the previous release).
Benchmark = Literal["mmau", "mmau-v05.15.25", "mmau-pro", "mmar", "mmsu", "air", "synthetic"]
EngineName = Literal["vllm", "transformers"]
LoggerName = Literal["tensorboard", "wandb"]
JudgeBackendName = Literal["transformers", "vllm", "openai"]
Dtype = Literal["float32", "bfloat16", "float16"]
InvalidAccuracy = Literal["worst", "zero"]
ScoreMode = Literal["expected", "argmax"]
AnswerExtraction = Literal["strict", "lenient"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
RatioLevel = Literal["token", "sequence"]
IsCorrection = Literal["none", "token_tis", "seq_tis", "decoupled"]
SftTarget = Literal["answer", "cot"]
ReferencePlacement = Literal["colocate", "separate"]

FAMILIES: tuple[str, ...] = get_args(ModelFamily)
PROMPT_MODES: tuple[str, ...] = get_args(PromptMode)
RESPONSE_MODES: tuple[str, ...] = get_args(ResponseMode)
VARIANTS: tuple[str, ...] = get_args(RewardVariant)
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
BENCHMARKS: tuple[str, ...] = get_args(Benchmark)
ENGINES: tuple[str, ...] = get_args(EngineName)
JUDGE_BACKENDS: tuple[str, ...] = get_args(JudgeBackendName)
INVALID_ACCURACY: tuple[str, ...] = get_args(InvalidAccuracy)
SCORE_MODES: tuple[str, ...] = get_args(ScoreMode)
ANSWER_EXTRACTIONS: tuple[str, ...] = get_args(AnswerExtraction)
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
RATIO_LEVELS: tuple[str, ...] = get_args(RatioLevel)
IS_CORRECTIONS: tuple[str, ...] = get_args(IsCorrection)
SFT_TARGETS: tuple[str, ...] = get_args(SftTarget)
REFERENCE_PLACEMENTS: tuple[str, ...] = get_args(ReferencePlacement)


def normalize_text(text: str) -> str:
    """The one answer normalisation: collapse whitespace and case-fold (choice matching, answer checks)."""
    return " ".join(text.split()).casefold()
