"""The judge's part of a step: which records need which verdicts, and asking for them concurrently over HTTP
(through `reward_server.client`, the one owner of judge HTTP calls)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from actors.judge_server import JudgeService
from audio_thinker.core.config import JudgeConfig
from audio_thinker.core.records import RolloutRecord
from reward_server.client import AsyncJudgeClient


@dataclass
class Judge:
    """Where a run's judge answers: an external URL, or the in-cluster server the driver started."""

    url: str
    api_key: str | None
    service: JudgeService | None = None

    def close(self) -> None:
        if self.service is not None:
            self.service.close()


def judge_items(records: Sequence[RolloutRecord], needed: set[str]) -> dict[tuple[str, ...], list[int]]:
    """Which samples need which verdicts: consistency only for correct think answers (it is zeroed for wrong
    ones), think quality for every think answer."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, r in enumerate(records):
        if r.mode != "think":
            continue
        scores = tuple(s for s in ("consistency", "think_quality") if s in needed and (s != "consistency" or r.correct))
        if scores:
            groups.setdefault(scores, []).append(i)
    return groups


def call_judge(judge: Judge, config: JudgeConfig, records: Sequence[RolloutRecord], needed: set[str]) -> int:
    """Fill the records' verdicts from the judge; concurrent chunked requests. Returns the items judged."""
    groups = judge_items(records, needed)
    chunk = config.request_chunk

    async def run() -> None:
        async with AsyncJudgeClient(
            judge.url, api_key=judge.api_key, timeout_s=config.timeout_s, max_retries=config.max_retries
        ) as client:
            jobs = []
            for scores, idx in groups.items():
                for k in range(0, len(idx), chunk):
                    part = idx[k : k + chunk]
                    items = [
                        {
                            "question": records[i].question,
                            "think": records[i].think,
                            "answer": records[i].answer_text,
                            "choices": records[i].choices,
                        }
                        for i in part
                    ]
                    jobs.append((part, scores, client.judge(items, scores=list(scores), score_mode=config.score_mode)))
            results = await asyncio.gather(*(job for _, _, job in jobs))
            for (part, scores, _), res in zip(jobs, results):
                for i, r in zip(part, res):
                    if "consistency" in scores:
                        records[i].consistency = int(r.consistency)
                        records[i].consistency_prob = float(r.consistency_prob)
                    if "think_quality" in scores:
                        records[i].think_quality = float(r.think_quality)

    asyncio.run(run())
    return sum(len(idx) for idx in groups.values())
