"""verl reward functions backed by the judge.

verl's reward managers call `custom_reward_function.name` (default `compute_score`) from the file at
`custom_reward_function.path` with keyword arguments: `data_source`, `solution_str` (the decoded response),
`ground_truth`, `extra_info`, plus `custom_reward_function.reward_kwargs`; the batch manager calls it with the
plural names and lists. The judge needs the question, which verl does not pass: it is read from
`extra_info["question"]` (put it there in the data preprocessing, as verl's examples do with `extra_info`).

    custom_reward_function.path=<site-packages>/reward_server/adapters/verl.py
    custom_reward_function.name=compute_score
    +custom_reward_function.reward_kwargs.judge_url=http://judge:8000
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reward_server.adapters.common import judge_client, rewards, term_values


def _question(extra_info: dict | None, i: int | None = None) -> str:
    where = "extra_info" if i is None else f"extra_infos[{i}]"
    if not isinstance(extra_info, dict) or not isinstance(extra_info.get("question"), str):
        raise ValueError(f"{where} has no 'question' string: the judge scores the reasoning against the question")
    return extra_info["question"]


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[str],
    extra_infos: Sequence[dict | None],
    judge_url: str | None = None,
    api_key: str | None = None,
    term: str = "total",
    chunk: int = 64,
    **kwargs: Any,
) -> list[float]:
    """verl's batch reward manager: one reward per response (the judge's `/get_reward`, `term` of it)."""
    client = judge_client(judge_url, api_key)
    questions = [_question(info, i) for i, info in enumerate(extra_infos)]
    queries = [q + s for q, s in zip(questions, solution_strs)]
    return term_values(rewards(client, queries, questions, [str(g) for g in ground_truths], chunk), term)


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
    """verl's per-sample reward managers (naive, prime): the judge's reward of one response."""
    question = _question(extra_info)
    return compute_score_batch(
        [data_source], [solution_str], [ground_truth], [{"question": question}], judge_url, api_key, term
    )[0]
