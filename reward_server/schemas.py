"""Wire types of the judge API, shared by the server and the client (pydantic only: no torch here).

The schemas are strict (unknown fields are refused) so that a typo in a caller's payload is a 422 that
names the field instead of a silently ignored option. Limits that depend on the deployment (items per
request, characters per field) are checked by the server and answered with 413, not encoded here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from audio_thinker.core.vocab import ScoreMode

ScoreName = Literal["consistency", "think_quality"]
ALL_SCORES: tuple[ScoreName, ...] = ("consistency", "think_quality")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JudgeItem(_Strict):
    """One response to judge: the question, the reasoning and the final answer, as the policy wrote them."""

    question: str = Field(
        description="The question the policy answered (with its audio described or omitted)."
    )
    think: str = Field(description="The reasoning: the text inside <think>...</think>, without the tags.")
    answer: str = Field(
        description="The final answer: the text inside <answer>...</answer>, without the tags."
    )
    choices: list[str] | None = Field(
        None, description="The options offered to the policy, when multiple choice."
    )


class JudgeRequest(_Strict):
    items: list[JudgeItem] = Field(
        min_length=1, description="Responses to judge; results come back in this order."
    )
    scores: list[ScoreName] = Field(
        default_factory=lambda: list(ALL_SCORES),
        min_length=1,
        description="Which scores to compute (default both).",
    )
    score_mode: ScoreMode | None = Field(
        None,
        description="How think_quality is read from the judge's label distribution: `expected` (the expected "
        "digit / 9) or `argmax` (the most likely digit / 9). Null: the server's default. Consistency is the same "
        "in both modes.",
    )

    @field_validator("scores")
    @classmethod
    def _no_duplicates(cls, scores: list[ScoreName]) -> list[ScoreName]:
        if len(set(scores)) != len(scores):
            raise ValueError(f"duplicated score names in {scores}")
        return scores


class JudgeResult(BaseModel):
    """Scores of one item; a score that was not asked for is null."""

    consistency: Literal[0, 1] | None = Field(
        None, description="1 when the reasoning supports the final answer (consistency_prob >= 0.5), else 0."
    )
    consistency_prob: float | None = Field(
        None, ge=0.0, le=1.0, description="P(yes) / (P(yes) + P(no)) of the judge's verdict token."
    )
    think_quality: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Score of the reasoning's soundness, 0 (worthless) .. 1 (excellent): the expected or the most "
        "likely digit / 9 (score_mode).",
    )


class JudgeResponse(BaseModel):
    results: list[JudgeResult] = Field(description="One result per request item, in request order.")
    model: str = Field(description="The judge model that produced the scores.")
    prompt_version: str = Field(
        description="Version of the judging prompts (scores are comparable within one)."
    )
    score_mode: ScoreMode | None = Field(
        None, description="The score mode the results were read with (null from servers that predate it)."
    )


class RewardRequest(_Strict):
    """The OpenRLHF remote reward-model contract: full texts, their prompts, and the gold answers."""

    query: list[str] = Field(
        min_length=1, description="Prompt + response texts, as the trainer decoded them."
    )
    prompts: list[str] = Field(description="The prompt of each query; the response is what follows it.")
    labels: list[str] = Field(
        description="The gold answer text of each query (compared to the <answer> text)."
    )

    @model_validator(mode="after")
    def _same_lengths(self) -> RewardRequest:
        n = len(self.query)
        for name in ("prompts", "labels"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries but query has {n}")
        return self


class RewardResponse(BaseModel):
    rewards: list[float] = Field(
        description="The Audio-Thinker total reward of each query (see docs/judge.md)."
    )
    scores: list[float] = Field(
        description="1.0 when the answer matches the label, else 0.0 (for dynamic filtering)."
    )
    extra_logs: dict[str, list[float]] = Field(
        description="Every reward term per query, for the trainer's logs."
    )


class Limits(BaseModel):
    max_items: int = Field(description="Items per /v1/judge request (queries per /get_reward) before 413.")
    max_text_chars: int = Field(description="Characters per text field before 413.")
    max_body_bytes: int = Field(description="Request body size before 413.")
    max_batch_size: int = Field(description="Items per model forward (micro-batch).")
    max_wait_ms: float = Field(description="How long a micro-batch waits to fill up.")
    max_queue: int = Field(description="Items waiting for the model before 429.")
    request_timeout_s: float = Field(description="Deadline of one request before 504.")


class InfoResponse(BaseModel):
    model: str
    backend: str
    prompt_version: str
    prompts: dict[str, str] = Field(description="Version of each judging prompt, by score name.")
    scores: list[str] = Field(description="Score names /v1/judge accepts.")
    limits: Limits
    auth: bool = Field(description="Whether /v1/* and /get_reward need a bearer API key.")
