"""One judge app's running state: the backend, the micro-batcher, where in its life it is, and the path of a request
from its limits to its scores.

A request's work is bounded before it starts (docs/judge.md, "Limits"): its size limits are checked on the parsed
body (no tokenizing), then whether the queue has room (429 at once), then its prompts are tokenized one item at a
time on the tokenizer thread, within the request's deadline. Requests take turns item by item on that thread, so a
large request delays a small one by at most one item's tokenizing (itself bounded by `max_item_chars`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from fastapi import HTTPException

from audio_thinker.core.judge_config import JudgeLimits
from audio_thinker.core.vocab import ScoreMode
from reward_server.backends import JudgeBackend
from reward_server.batcher import DeadlineError, MicroBatcher, QueueFullError, ShuttingDownError
from reward_server.metrics import JudgeMetrics
from reward_server.middleware import request_id
from reward_server.schemas import ALL_SCORES, JudgeItem, JudgeResult, ScoreName
from reward_server.scoring import BackendError, Prepared, PromptTooLongError, prepare_item, score_items, score_prepared

log = logging.getLogger(__name__)
_WARMUP = JudgeItem(question="Is the sound a dog barking?", think="I hear short loud barks.", answer="yes")


def http_error(status: int, detail: str, retry_after: int | None = None) -> HTTPException:
    return HTTPException(
        status, detail, headers={"Retry-After": str(retry_after)} if retry_after is not None else None
    )


class JudgeRuntime:
    """Runtime state of one app: the backend, the batcher, and where in its life it is."""

    def __init__(self, load: Callable[[], JudgeBackend], settings: JudgeLimits, metrics: JudgeMetrics):
        self.load_backend = load
        self.settings = settings
        self.metrics = metrics
        self.status = "loading"  # -> ready | failed; -> stopping at shutdown
        self.error = ""  # why loading failed, for the server's log (never in a response: it may name paths)
        self.backend: JudgeBackend | None = None
        self.batcher: MicroBatcher[Prepared, JudgeResult] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="judge-model")
        # Tokenization has its own thread: off the event loop, never concurrent on one tokenizer.
        self.tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="judge-tokenize")

    async def start(self, on_fatal: Callable[[], None] | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            backend = await loop.run_in_executor(self.executor, self.load_backend)
            self.backend = backend
            await loop.run_in_executor(self.executor, score_items, backend, [_WARMUP], ALL_SCORES)
        except Exception as exc:
            log.exception("judge backend failed to load")
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            if on_fatal is not None:
                on_fatal()
            return
        s = self.settings
        self.batcher = MicroBatcher(
            lambda items: score_prepared(backend, items),
            s.max_batch_size,
            s.max_wait_ms,
            s.max_queue,
            self.executor,
            on_batch=self._observe_batch,
        )
        self.batcher.start()
        self.status = "ready"
        log.info("judge ready: %s backend, model %s", backend.name, backend.model)

    async def stop(self) -> None:
        if self.status != "failed":
            self.status = "stopping"
        if self.batcher is not None:
            await self.batcher.stop()
        if self.backend is not None:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.close)
        self.executor.shutdown(wait=True)
        self.tokenizer_thread.shutdown(wait=True)

    def _observe_batch(self, items: list[Prepared], seconds: float) -> None:
        self.metrics.batch_size.observe(len(items))
        self.metrics.batch_duration.observe(seconds)
        for item in items:
            for name in item.scores:
                self.metrics.items.labels(name).inc()

    @property
    def error_kind(self) -> str:
        """What the public routes may say of a failed load: the exception's type, no message (paths, URLs)."""
        return self.error.split(":", 1)[0]

    def ready_backend(self) -> JudgeBackend:
        if self.status != "ready" or self.backend is None:
            detail = f"judge is {self.status}" + (" (the server log says why)" if self.status == "failed" else "")
            raise http_error(503, detail, self.settings.retry_after_s)
        return self.backend

    def check_count(self, field: str, n: int) -> None:
        if n > self.settings.max_items:
            raise http_error(413, f"{field}: {n} entries, the limit is {self.settings.max_items} per request")

    def check_text(self, field: str, text: str) -> None:
        if len(text) > self.settings.max_text_chars:
            raise http_error(413, f"{field}: {len(text)} characters, the limit is {self.settings.max_text_chars}")

    def check_item(self, field: str, texts: Sequence[str], choices: Sequence[str] | None) -> None:
        """One item's limits, on the parsed request (no tokenizing): choices, each text, all texts together."""
        s = self.settings
        if choices and len(choices) > s.max_choices:
            raise http_error(413, f"{field}.choices: {len(choices)} choices, the limit is {s.max_choices}")
        total = sum(len(t) for t in texts) + sum(len(c) for c in choices or ())
        if total > s.max_item_chars:
            raise http_error(413, f"{field}: {total} characters in all, the limit is {s.max_item_chars} per item")

    def check_judge_item(self, field: str, item: JudgeItem) -> None:
        for name in ("question", "think", "answer"):
            self.check_text(f"{field}.{name}", getattr(item, name))
        for j, choice in enumerate(item.choices or ()):
            self.check_text(f"{field}.choices[{j}]", choice)
        self.check_item(field, (item.question, item.think, item.answer), item.choices)

    async def judge(
        self,
        items: Sequence[JudgeItem],
        scores: Sequence[Sequence[ScoreName]],
        score_mode: ScoreMode,
        where: Sequence[str] | None = None,
    ) -> list[JudgeResult]:
        """Scores of `items` (`scores[i]`: those of item i; `where[i]`: how errors name it, default `items[i]`)
        through the batcher; every failure becomes an HTTP error, never a made-up score. The caller has checked
        the items' limits."""
        backend, s = self.ready_backend(), self.settings
        assert self.batcher is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.request_timeout_s
        try:
            self.batcher.check_room(len(items))
            prepared = []
            for i, (item, names) in enumerate(zip(items, scores)):
                label = where[i] if where is not None else f"items[{i}]"
                step = loop.run_in_executor(self.tokenizer_thread, prepare_item, backend, label, item, names,
                                            score_mode)  # fmt: skip
                prepared.append(await asyncio.wait_for(step, max(deadline - loop.time(), 0.0)))
            return await self.batcher.submit(prepared, max(deadline - loop.time(), 0.0))
        except PromptTooLongError as exc:
            raise http_error(413, str(exc)) from None
        except QueueFullError as exc:
            raise http_error(429, f"{exc}; retry after {s.retry_after_s} s", s.retry_after_s) from None
        except (DeadlineError, TimeoutError):
            raise http_error(504, f"no answer within the request deadline of {s.request_timeout_s:g} s") from None
        except ShuttingDownError as exc:
            raise http_error(503, str(exc), s.retry_after_s) from None
        except BackendError as exc:
            log.warning("request %s: the judge backend failed: %s", request_id(), exc)
            raise http_error(502, "the judge backend failed") from None
