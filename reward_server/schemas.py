"""Wire types of the judge API, shared by the server and the client (pydantic only: no torch here).

The schemas are strict (unknown fields are refused) so that a typo in a caller's payload is a 422 that
names the field instead of a silently ignored option. Limits that depend on the deployment (items per
request, characters per field) are checked by the server and answered with 413, not encoded here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from audio_thinker.core.vocab import InvalidAccuracy, RewardVariant, ScoreMode

ScoreName = Literal["consistency", "think_quality"]
ALL_SCORES: tuple[ScoreName, ...] = ("consistency", "think_quality")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unicode(text: str) -> str:
    """JSON may carry lone surrogates (\\ud800), which are no text: refused here (422) instead of failing later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"invalid unicode: a lone surrogate at character {exc.start}") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class JudgeItem(_Strict):
    """One response to judge: the question, the reasoning and the final answer, as the policy wrote them."""

    question: Text = Field(
        description="The question the policy answered (with its audio described or omitted)."
    )
    think: Text = Field(description="The reasoning: the text inside <think>...</think>, without the tags.")
    answer: Text = Field(
        description="The final answer: the text inside <answer>...</answer>, without the tags."
    )
    choices: list[Text] | None = Field(
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

    query: list[Text] = Field(
        min_length=1, description="Prompt + response texts, as the trainer decoded them."
    )
    prompts: list[Text] = Field(description="The prompt of each query; the response is what follows it.")
    labels: list[Text] = Field(
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
        description="The Audio-Thinker total reward of each query with both ATAR factors at 1 (see docs/judge.md)."
    )
    scores: list[float] = Field(
        description="1.0 when the answer matches the label, else 0.0 (for dynamic filtering)."
    )
    extra_logs: dict[str, list[float]] = Field(
        description="Every reward term per query, for the trainer's logs."
    )


class Rollout(_Strict):
    """One sampled response of a training batch, as /v1/rewards takes it."""

    group: Text = Field(description="Group id: the responses to one question share it (eq. 8's advantages).")
    question: Text = Field(description="The question, without chat scaffolding (the judge sees it).")
    response: Text = Field(
        description="The policy's completion: <think>T</think><answer>A</answer> or <answer>A</answer>."
    )
    answer: Text = Field(description="The gold answer (one of `choices` when they are given).")
    choices: list[Text] | None = Field(
        None, description="The options: the answer is matched by the benchmark rule; none: exact text match."
    )
    letters: bool = Field(False, description="Whether the prompt listed the choices with letters (A), (B), ...")


class RewardsRequest(_Strict):
    """A whole training batch: eq. 7 with ATAR needs its think share and the training step."""

    items: list[Rollout] = Field(min_length=1, description="Every response of the batch (its think share is lambda).")
    step: int = Field(ge=0, description="The training step s of the annealing (1 for the first step).")
    total_steps: int = Field(ge=1, description="The planned number of training steps T.")
    variant: RewardVariant = Field("atar_cr_tr", description="The reward variant (docs/rewards.md).")
    invalid_accuracy: InvalidAccuracy = Field("worst", description="R_a of invalid responses: worst or zero.")
    advantages: bool = Field(False, description="Also return eq. 8's group advantages.")
    score_mode: ScoreMode | None = Field(None, description="As in /v1/judge (null: the server's default).")

    @model_validator(mode="after")
    def _step_within(self) -> RewardsRequest:
        if self.step > self.total_steps:
            raise ValueError(f"step {self.step} is past total_steps {self.total_steps}")
        return self


class SampleTerms(BaseModel):
    mode: Literal["think", "no_think", "invalid"] = Field(description="What the strict parser made of the response.")
    correct: bool = Field(description="Whether the answer matches the gold answer.")
    format: float = Field(description="R_f.")
    accuracy: float = Field(description="R_a (ATAR, eq. 5).")
    consistency: float = Field(description="R_c (0 unless the answer is correct).")
    think: float = Field(description="R_t (no_think: the batch's mean think quality).")
    total: float = Field(description="Eq. 7: R_a (1 + 0.5 R_c) + 0.5 R_f + R_t.")
    advantage: float | None = Field(None, description="Eq. 8 within the group (when asked for).")
    judge_consistency: Literal[0, 1] | None = Field(None, description="The judge's verdict (think samples).")
    judge_think_quality: float | None = Field(None, description="The judge's score (think samples).")


class RewardsResponse(BaseModel):
    think_rate: float = Field(description="lambda: the share of think samples among the valid ones.")
    gamma_think: float = Field(description="gamma_t of eq. 3 at this step.")
    gamma_no_think: float = Field(description="gamma_n of eq. 4 at this step.")
    samples: list[SampleTerms] = Field(description="One entry per item, in request order.")
    model: str = Field(description="The judge model's name.")
    prompt_version: str = Field(description="Version of the judging prompts.")


class Limits(BaseModel):
    max_items: int = Field(
        description="Items per /v1/judge or /v1/rewards request (queries per /get_reward) before 413."
    )
    max_text_chars: int = Field(description="Characters per text field before 413.")
    max_choices: int = Field(description="Choices per item before 413.")
    max_item_chars: int = Field(description="Characters of one item, all its texts together, before 413.")
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
