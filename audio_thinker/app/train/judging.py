"""The judge's part of a step: which records need which verdicts, and asking for them concurrently over HTTP
(through `reward_server.client`, the one owner of judge HTTP calls).

A request the client gave up on (judge dead, hung or overloaded past its retries) is sent again, whole, once the
in-cluster judge has been recovered (restarted by Ray, or its Serve replicas replaced), up to
`judge.max_restarts` times; a request's results are written into the records once, when it succeeds, so no
item is lost, none is counted twice, and none becomes a default score.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from actors.judge_serve import JudgeDeployment
from actors.judge_server import JudgeService
from audio_thinker.core.judge_config import JudgeConfig
from audio_thinker.core.records import RolloutRecord
from reward_server.client import AsyncJudgeClient, JudgeClient, JudgeUnavailableError


@dataclass
class Judge:
    """Where a run's judge answers: an external URL, or the in-cluster server the driver started (one actor,
    or replicas on Ray Serve)."""

    url: str
    api_key: str | None
    service: JudgeService | JudgeDeployment | None = None
    recoveries: int = 0
    recoveries_taken: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def recover(self, failed_url: str, timeout_s: float) -> str:
        """The URL to send a failed request to again: the in-cluster judge recovered (within `timeout_s`) once
        per failure, however many concurrent requests saw it fail."""
        with self.lock:
            if self.url != failed_url or self.service is None:
                return self.url
            self.url = self.service.recover(timeout_s)
            self.recoveries += 1
            return self.url

    def ready(self, timeout_s: float) -> Judge:
        """Wait until the judge answers /ready (an in-cluster actor: until it has started and loaded its model)."""
        if isinstance(self.service, JudgeService):
            self.url = self.service.ready().url
            return self
        with JudgeClient(self.url, api_key=self.api_key, timeout_s=timeout_s) as client:
            client.wait_ready(timeout_s)
        return self

    def take_recovery(self) -> dict[str, int]:
        """Judge recoveries since the last ask (a step's metrics, like the rollout workers' and the reference's)."""
        with self.lock:
            recoveries, self.recoveries_taken = self.recoveries - self.recoveries_taken, self.recoveries
        return {"recovery/judge_restarts": recoveries}

    def close(self) -> None:
        if isinstance(self.service, JudgeDeployment):
            self.service.close(stop_serve=True)
        elif self.service is not None:
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


def judge_item(record: RolloutRecord) -> dict:
    """The judge API's item for a record: what the judge reads of it."""
    return {"question": record.question, "think": record.think, "answer": record.answer_text, "choices": record.choices}


def call_judge(judge: Judge, config: JudgeConfig, records: Sequence[RolloutRecord], needed: set[str]) -> int:
    """Fill the records' verdicts from the judge; concurrent chunked requests. Returns the items judged."""
    groups = judge_items(records, needed)
    chunk = config.request_chunk

    clients: dict[str, AsyncJudgeClient] = {}

    def client_for(url: str) -> AsyncJudgeClient:
        if url not in clients:
            clients[url] = AsyncJudgeClient(
                url, api_key=judge.api_key, timeout_s=config.call_timeout_s, max_retries=config.max_retries
            )
        return clients[url]

    async def ask(items: list[dict], scores: tuple[str, ...]) -> list:
        url, attempt = judge.url, 0
        while True:
            try:
                return await client_for(url).judge(items, scores=list(scores), score_mode=config.score_mode)
            except JudgeUnavailableError:
                if judge.service is None or attempt >= config.max_restarts:
                    raise
                attempt += 1
                url = await asyncio.to_thread(judge.recover, url, config.startup_timeout_s)

    async def run() -> None:
        try:
            jobs = []
            for scores, idx in groups.items():
                for k in range(0, len(idx), chunk):
                    part = idx[k : k + chunk]
                    items = [judge_item(records[i]) for i in part]
                    jobs.append((part, scores, ask(items, scores)))
            results = await asyncio.gather(*(job for _, _, job in jobs))
            for (part, scores, _), res in zip(jobs, results):
                for i, r in zip(part, res):
                    if "consistency" in scores:
                        records[i].consistency = int(r.consistency)
                        records[i].consistency_prob = float(r.consistency_prob)
                    if "think_quality" in scores:
                        records[i].think_quality = float(r.think_quality)
        finally:
            for c in clients.values():
                await c.aclose()

    asyncio.run(run())
    return sum(len(idx) for idx in groups.values())
