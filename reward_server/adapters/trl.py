"""A TRL `GRPOTrainer` reward function with the paper's reward (eq. 7 with ATAR) computed by the judge.

TRL calls every entry of `reward_funcs` once per generation batch as
`f(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_metric=..., **columns)` with the
batch's dataset columns as keyword arguments, and wants one float per completion. Prompts and completions are
strings (standard datasets) or message lists (conversational: `[{"role": "assistant", "content": ...}]`).

    from reward_server.adapters.trl import AudioThinkerReward
    reward = AudioThinkerReward("http://judge:8000", total_steps=1000)
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], args=GRPOConfig(max_steps=1000, ...), ...)

The batch is the one TRL passes in one call (on several processes: each process's share of it): lambda is the
think share of its valid samples, the step s = `trainer_state.global_step + 1` (the optimizer step being
computed, 1 for the first), T = `total_steps` (default: `trainer_state.max_steps`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from reward_server.adapters.common import batch_term, check_term, judge_client, paper_rewards
from reward_server.batch_rewards import question_text
from reward_server.client import MAX_RETRIES, TIMEOUT_S
from reward_server.schemas import Rollout


def _content(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))  # multimodal parts


def as_text(value: Any) -> str:
    """A standard (str) or conversational (list of {"role", "content"} messages) completion as text: the messages'
    contents joined by newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(_content(m) for m in value)
    raise TypeError(f"expected a string or a list of messages with 'content', got {type(value).__name__}")


def question_of(prompt: Any) -> str:
    """What the judge sees of a prompt: the last user message of a conversation, or a text prompt without its chat
    scaffolding (`question_text`)."""
    if isinstance(prompt, str):
        return question_text(prompt)
    users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return question_text(_content(users[-1]) if users else as_text(prompt))


class AudioThinkerReward:
    """Audio-Thinker's reward of each completion (`term`: `total`, or one part: `format_reward`, `accuracy_reward`,
    `consistency_reward`, `think_reward`), from the judge's verdicts and the batch.

    The gold answer is the dataset column `answer_column`; with a `choices_column` (a list of options per row) it
    is matched by the benchmark rule, else as text; `letters_column` (optional, bool) says the prompt lettered the
    choices. gamma_t, gamma_n and the think rate go to TRL's metrics (`audio_thinker/...`). A judge that cannot
    answer after the client's retries raises `JudgeUnavailableError`: the step fails instead of training on
    made-up rewards. Each instance asks the judge itself: put one (`total`) in `reward_funcs`.
    """

    def __init__(
        self,
        judge_url: str | None = None,
        api_key: str | None = None,
        total_steps: int | None = None,
        term: str = "total",
        variant: str = "atar_cr_tr",
        invalid_accuracy: str = "worst",
        answer_column: str = "answer",
        choices_column: str = "choices",
        letters_column: str = "letters",
        chunk: int = 64,
        timeout_s: float = TIMEOUT_S,
        max_retries: int = MAX_RETRIES,
    ):
        check_term(term)  # an unknown term fails here, not in the first step
        self.client = judge_client(judge_url, api_key, timeout_s, max_retries)
        self.total_steps, self.term, self.variant, self.invalid_accuracy = total_steps, term, variant, invalid_accuracy
        self.columns = (answer_column, choices_column, letters_column)
        self.chunk = chunk
        self.__name__ = f"audio_thinker_{term}"  # TRL logs each reward function under its __name__

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        step: int | None = None,
        **columns: Any,
    ) -> list[float]:
        """`step` (outside TRL) stands for trainer_state's global_step + 1."""
        answer_column, choices_column, letters_column = self.columns
        if answer_column not in columns:
            raise KeyError(f"AudioThinkerReward needs the dataset column {answer_column!r} (the gold answer); the "
                           f"batch has {sorted(columns)}")  # fmt: skip
        n = len(completions)
        answers, choices = columns[answer_column], columns.get(choices_column) or [None] * n
        letters = columns.get(letters_column) or [False] * n
        if not len(prompts) == n == len(answers) == len(choices) == len(letters):
            raise ValueError(f"{len(prompts)} prompts, {n} completions, {len(answers)} answers, "
                             f"{len(choices)} choices, {len(letters)} letters")  # fmt: skip
        if step is None and trainer_state is None:
            raise ValueError("AudioThinkerReward needs the training step: TRL passes trainer_state; else pass step=")
        step = step if step is not None else trainer_state.global_step + 1
        total = self.total_steps or (trainer_state.max_steps if trainer_state is not None else None)
        if not total:
            raise ValueError("AudioThinkerReward needs total_steps= (or TRL's max_steps) for the annealing")
        rollouts = []
        for p, c, a, ch, lt in zip(prompts, completions, answers, choices, letters):
            question = question_of(p)  # TRL repeats a prompt for its G completions: the group
            rollouts.append(Rollout(group=question, question=question, response=as_text(c), answer=str(a),
                                    choices=list(ch) if ch is not None else None, letters=bool(lt)))
        batch = paper_rewards(self.client, rollouts, step, total, self.variant, self.invalid_accuracy, self.chunk)
        if log_metric is not None:
            log_metric("audio_thinker/think_rate", batch.think_rate)
            log_metric("audio_thinker/gamma_think", batch.gamma_think)
            log_metric("audio_thinker/gamma_no_think", batch.gamma_no_think)
        return batch_term(batch, self.term)
