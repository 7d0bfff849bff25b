"""The judge's sections of a run's config: a judge server's limits and scoring (shared with `serve-judge` and the
service itself, one default each) and how a run reaches its judge (`JudgeConfig`)."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from audio_thinker.core.section import Section
from audio_thinker.core.vocab import JudgeBackendName, ScoreMode


class JudgeLimits(Section):
    """Limits of one judge server: the same defaults for `serve-judge`, the service and a training run's judge."""

    max_batch_size: int = Field(32, ge=1, description="Items per model call (micro-batch size).")
    max_wait_ms: float = Field(5.0, ge=0, description="How long a micro-batch waits to fill up.")
    max_queue: int = Field(1024, ge=1, description="Queued items before the server answers 429.")
    max_items: int = Field(256, ge=1, description="Items per request before the server answers 413.")
    max_text_chars: int = Field(16000, ge=1, description="Characters per text field before 413.")
    max_choices: int = Field(64, ge=1, description="Choices per item before 413 (checked before any tokenizing).")
    max_item_chars: int = Field(
        32000, ge=1, description="Characters of one item, all its texts together, before 413 (checked before any "
        "tokenizing)."
    )
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="Request body size in bytes before 413.")
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline of one request inside the server before 504.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds of 429 and 503 answers.")

    @field_validator("max_items")
    @classmethod
    def _fits(cls, max_items: int, info: ValidationInfo) -> int:
        """A field check (max_queue is validated first), so that the error names max_items."""
        max_queue = info.data.get("max_queue")
        if max_queue is not None and max_items > max_queue:
            raise ValueError(f"max_items ({max_items}) > max_queue ({max_queue}): a full request could never be queued")
        return max_items

    def limits(self) -> JudgeLimits:
        """Only the limits (a subclass's other fields dropped)."""
        return JudgeLimits(**{k: getattr(self, k) for k in JudgeLimits.model_fields})


class JudgeScoring(Section):
    """How a judge turns label distributions into scores: the same default for a run's judge and `serve-judge`."""

    score_mode: ScoreMode = Field(
        "expected",
        description="How the judge turns its label distribution into a think-quality score: expected = the "
        "expected digit / 9 (smooth); argmax = the most likely digit / 9, the paper's discrete score (the 7B "
        "presets). A run's judge client sends it with every request. Consistency is the same in both "
        "(1 when P(yes) >= P(no)).",
    )


class JudgeConfig(JudgeLimits, JudgeScoring):
    url: str | None = Field(
        None,
        description="External judge base URL (http://host:port). None: the driver starts a judge actor in the cluster.",
    )
    api_key: SecretStr | None = Field(
        None,
        exclude=True,
        description="Bearer key for an external judge (else AUDIO_THINKER_JUDGE_API_KEY). A secret: shown as "
        "'**********', never written to the run's config.yaml nor sent to loggers (give it again on resume).",
    )
    backend: JudgeBackendName = Field("transformers", description="Backend of an in-cluster judge.")
    call_timeout_s: float = Field(120.0, gt=0, description="Deadline of one judge request (the client's timeout).")
    max_retries: int = Field(5, ge=0, description="Client retries on 429/5xx/connection errors before the step fails.")
    request_chunk: int = Field(32, ge=1, description="Items per judge request; requests of a step run concurrently.")
    num_cpus: float = Field(0.25, gt=0, description="Ray CPUs of the judge actor (of each replica on Ray Serve).")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs of the judge actor (of each replica on Ray Serve).")
    replicas: int | None = Field(
        None, ge=1, description="In-cluster judge on Ray Serve with this many replicas (none: one judge actor)."
    )
    max_restarts: int = Field(
        2, ge=0, description="Restarts of a dead or unresponsive in-cluster judge actor before the run fails."
    )
    startup_timeout_s: float = Field(
        300.0, gt=0, description="Deadline for the in-cluster judge to start (or restart) and answer /ready."
    )

    def api_key_value(self) -> str | None:
        """The key itself, for the one place that sends it (the judge client's Authorization header)."""
        return self.api_key.get_secret_value() if self.api_key is not None else None
