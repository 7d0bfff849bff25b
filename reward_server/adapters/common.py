"""What the adapters share: one pooled client per judge, the paper's batch reward through the judge's /v1/judge
(in chunks the server accepts; `reward_server.batch_rewards` for the terms), and `/get_reward` for per-sample
callers."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from audio_thinker.core.rewards import RewardBatch
from reward_server.batch_rewards import batch_rewards, judge_requests, mark
from reward_server.client import API_KEY_ENV, MAX_RETRIES, TIMEOUT_S, JudgeClient
from reward_server.schemas import JudgeResult, RewardResponse, Rollout

URL_ENV = "AUDIO_THINKER_JUDGE_URL"
TERMS = ("total", "format_reward", "accuracy_reward", "consistency_reward", "think_reward")
_BATCH_FIELDS = {"total": "total", "format_reward": "format", "accuracy_reward": "accuracy",
                 "consistency_reward": "consistency", "think_reward": "think"}  # fmt: skip

_clients: dict[tuple[str, str | None], JudgeClient] = {}
_lock = threading.Lock()


def judge_client(
    url: str | None, api_key: str | None, timeout_s: float = TIMEOUT_S, max_retries: int = MAX_RETRIES
) -> JudgeClient:
    """A shared client for (url, key); `url` None reads AUDIO_THINKER_JUDGE_URL, `api_key` None reads
    AUDIO_THINKER_JUDGE_API_KEY. ValueError when no URL is given either way."""
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(f"no judge URL: pass judge_url=... or set {URL_ENV}")
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    with _lock:
        if (url, key) not in _clients:
            _clients[(url, key)] = JudgeClient(url, api_key=key, timeout_s=timeout_s, max_retries=max_retries)
        return _clients[(url, key)]


def check_term(term: str) -> None:
    if term not in TERMS:
        raise ValueError(f"term {term!r}: expected one of {', '.join(TERMS)}")


def paper_rewards(
    client: JudgeClient,
    rollouts: Sequence[Rollout],
    step: int,
    total_steps: int,
    variant: str = "atar_cr_tr",
    invalid_accuracy: str = "worst",
    chunk: int = 64,
) -> RewardBatch:
    """Eq. 7 with ATAR over the whole batch: the verdicts from /v1/judge (`chunk` items per request, the server's
    max_items is the bound), the terms by `batch_rewards`, as /v1/rewards and `audio-thinker rewards` compute them."""
    marked = [mark(r) for r in rollouts]
    asks = judge_requests(rollouts, marked, variant)
    verdicts: dict[int, JudgeResult] = {}
    for scores in dict.fromkeys(a[2] for a in asks):
        same = [a for a in asks if a[2] == scores]
        for k in range(0, len(same), chunk):
            part = same[k : k + chunk]
            results = client.judge([item for _, item, _ in part], scores=list(scores))
            verdicts.update((i, result) for (i, _, _), result in zip(part, results))
    return batch_rewards(rollouts, marked, verdicts, step, total_steps, variant, invalid_accuracy)


def batch_term(batch: RewardBatch, term: str) -> list[float]:
    """One term of every sample of a batch (`total`: eq. 7's total)."""
    check_term(term)
    return [getattr(s, _BATCH_FIELDS[term]) for s in batch.samples]


def rewards(
    client: JudgeClient, queries: Sequence[str], prompts: Sequence[str], labels: Sequence[str], chunk: int
) -> list[RewardResponse]:
    """`/get_reward` over the samples, `chunk` per request (the server's max_items is the bound)."""
    return [
        client.get_reward(queries[i : i + chunk], prompts[i : i + chunk], labels[i : i + chunk])
        for i in range(0, len(queries), chunk)
    ]


def term_values(responses: Sequence[RewardResponse], term: str) -> list[float]:
    """One term of `/get_reward`'s answers: `total` is the reward with both ATAR factors at 1, the others its parts
    (docs/judge.md)."""
    check_term(term)
    out: list[float] = []
    for r in responses:
        out += r.rewards if term == "total" else r.extra_logs[term]
    return out
