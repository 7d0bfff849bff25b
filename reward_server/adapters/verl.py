"""verl reward functions backed by the judge.

verl's reward managers call `custom_reward_function.name` (default `compute_score`) from the file at
`custom_reward_function.path` with keyword arguments plus `custom_reward_function.reward_kwargs`:

- the batch reward manager (`reward_model.reward_manager=batch`) calls `compute_score_batch(data_sources=...,
  solution_strs=..., ground_truths=..., extra_infos=...)` once per batch: the paper's reward, eq. 7 with ATAR
  over that batch. The step is `extra_info["global_steps"]`, which verl's trainer puts into every sample's
  extra_info (its `global_steps`, 1 for the first training step; a verl without it needs a reward manager that
  copies `batch.meta_info["global_steps"]` there), and T is the reward kwarg `total_steps`;
- the per-sample managers (naive, prime) call `compute_score(data_source=..., solution_str=..., ...)` for one
  response, which cannot see the batch: it returns `/get_reward`'s reward, both ATAR factors at 1.

The judge needs the question, which verl does not pass: it is read from `extra_info["question"]` (put it there in
the data preprocessing, as verl's examples do with `extra_info`), the choices from `extra_info["choices"]` (optional).

    custom_reward_function.path=<site-packages>/reward_server/adapters/verl.py
    custom_reward_function.name=compute_score_batch
    +custom_reward_function.reward_kwargs.judge_url=http://judge:8000
    +custom_reward_function.reward_kwargs.total_steps=1000
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reward_server.adapters.common import batch_term, judge_client, paper_rewards, rewards, term_values
from reward_server.schemas import Rollout

STEP_KEY = "global_steps"


def _info(extra_info: Any, where: str) -> dict:
    if not isinstance(extra_info, dict) or not isinstance(extra_info.get("question"), str):
        raise ValueError(f"{where} has no 'question' string: the judge scores the reasoning against the question")
    return extra_info


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[str],
    extra_infos: Sequence[dict | None],
    judge_url: str | None = None,
    api_key: str | None = None,
    total_steps: int | None = None,
    term: str = "total",
    variant: str = "atar_cr_tr",
    chunk: int = 64,
    **kwargs: Any,
) -> list[float]:
    """verl's batch reward manager: the paper's reward of every response of the batch (`term` of it)."""
    infos = [_info(info, f"extra_infos[{i}]") for i, info in enumerate(extra_infos)]
    steps = {info.get(STEP_KEY) for info in infos}
    if len(steps) != 1 or not isinstance(step := steps.pop(), int) or isinstance(step, bool):
        raise ValueError(f"extra_infos: {STEP_KEY!r} must be one integer for the batch (verl's trainer step), got "
                         f"{sorted(map(repr, steps))}")  # fmt: skip
    if total_steps is None:
        raise ValueError("compute_score_batch needs total_steps (reward_kwargs.total_steps: verl's training steps)")
    rollouts = [
        Rollout(group=q, question=q, response=s, answer=str(g), choices=info.get("choices"))
        for s, g, info in zip(solution_strs, ground_truths, infos)
        for q in [info["question"]]
    ]
    batch = paper_rewards(judge_client(judge_url, api_key), rollouts, step, int(total_steps), variant, chunk=chunk)
    return batch_term(batch, term)


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    judge_url: str | None = None,
    api_key: str | None = None,
    term: str = "total",
    **kwargs: Any,
) -> float:
    """verl's per-sample reward managers (naive, prime): `/get_reward`'s reward of one response (factors at 1)."""
    question = _info(extra_info, "extra_info")["question"]
    responses = rewards(judge_client(judge_url, api_key), [question + solution_str], [question], [str(ground_truth)], 1)
    return term_values(responses, term)[0]
