"""What both adapters share: one pooled client per judge, and `/get_reward` in chunks the server accepts."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from reward_server.client import API_KEY_ENV, MAX_RETRIES, TIMEOUT_S, JudgeClient
from reward_server.schemas import RewardResponse

URL_ENV = "AUDIO_THINKER_JUDGE_URL"
TERMS = ("total", "format_reward", "accuracy_reward", "consistency_reward", "think_reward")

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


def rewards(
    client: JudgeClient, queries: Sequence[str], prompts: Sequence[str], labels: Sequence[str], chunk: int
) -> list[RewardResponse]:
    """`/get_reward` over the samples, `chunk` per request (the server's max_items is the bound)."""
    return [
        client.get_reward(queries[i : i + chunk], prompts[i : i + chunk], labels[i : i + chunk])
        for i in range(0, len(queries), chunk)
    ]


def term_values(responses: Sequence[RewardResponse], term: str) -> list[float]:
    """One reward term of every sample: `total` is the Audio-Thinker reward with the ATAR factors at 1 (the
    same as `/get_reward`'s `rewards`), the others its parts (docs/judge.md)."""
    if term not in TERMS:
        raise ValueError(f"term {term!r}: expected one of {', '.join(TERMS)}")
    out: list[float] = []
    for r in responses:
        out += r.rewards if term == "total" else r.extra_logs[term]
    return out
