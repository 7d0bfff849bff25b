"""A TRL `GRPOTrainer` reward function backed by the judge.

TRL calls every entry of `reward_funcs` as `f(prompts=..., completions=..., completion_ids=..., **columns)` with
the batch's dataset columns as keyword arguments, and wants one float per completion. Prompts and completions
are strings (standard datasets) or message lists (conversational: `[{"role": "assistant", "content": ...}]`).

    from reward_server.adapters.trl import JudgeReward
    trainer = GRPOTrainer(model=..., reward_funcs=[JudgeReward("http://judge:8000", label_column="answer")], ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reward_server.adapters.common import judge_client, rewards, term_values
from reward_server.client import MAX_RETRIES, TIMEOUT_S


def as_text(value: Any) -> str:
    """A standard (str) or conversational (list of {"role", "content"} messages) prompt or completion as text:
    the messages' contents joined by newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(str(m["content"]) for m in value)
    raise TypeError(f"expected a string or a list of messages with 'content', got {type(value).__name__}")


class JudgeReward:
    """The judge's reward of each completion (`term`: total, or one of its parts), from `/get_reward`.

    The gold answer is the dataset column `label_column`. A judge that cannot answer after the client's
    retries raises `JudgeUnavailableError`: the step fails loudly instead of training on made-up rewards.
    """

    def __init__(
        self,
        judge_url: str | None = None,
        api_key: str | None = None,
        label_column: str = "answer",
        term: str = "total",
        chunk: int = 64,
        timeout_s: float = TIMEOUT_S,
        max_retries: int = MAX_RETRIES,
    ):
        self.client = judge_client(judge_url, api_key, timeout_s, max_retries)
        self.label_column = label_column
        self.term = term
        self.chunk = chunk
        self.__name__ = f"audio_thinker_judge_{term}"  # TRL logs each reward function under its __name__
        term_values([], term)  # an unknown term fails here, not in the first step

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if self.label_column not in kwargs:
            raise KeyError(
                f"JudgeReward needs the dataset column {self.label_column!r} (the gold answer); "
                f"the batch has {sorted(kwargs)}"
            )
        labels = [str(label) for label in kwargs[self.label_column]]
        if not len(prompts) == len(completions) == len(labels):
            raise ValueError(f"{len(prompts)} prompts, {len(completions)} completions, {len(labels)} labels")
        prompt_texts = [as_text(p) for p in prompts]
        queries = [p + as_text(c) for p, c in zip(prompt_texts, completions)]
        return term_values(rewards(self.client, queries, prompt_texts, labels, self.chunk), self.term)
