"""Dynamic micro-batching: items of concurrent requests share one model call, each caller gets its own results.

Requests are split into items and queued in arrival order. One worker task takes up to `max_batch_size`
items (waiting at most `max_wait_ms` after the first for the batch to fill), runs the batch function in a
single worker thread (the event loop never blocks on the model, and the model is never used from two
threads), and hands every result back to the request it came from. While one batch runs, the next one
fills up, so batches grow with load on their own.

The queue is bounded in items: a request that does not fit is refused at once (QueueFullError -> 429),
never half-queued. A request past its deadline stops waiting (DeadlineError -> 504); its items that have
not reached the model yet are dropped from the queue, and results of items already in a batch are discarded.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class QueueFullError(RuntimeError):
    """The request does not fit in the queue; `queued` items are waiting, the limit is `limit`."""

    def __init__(self, queued: int, incoming: int, limit: int):
        super().__init__(f"queue full: {queued} of {limit} items queued, this request has {incoming}")
        self.queued, self.incoming, self.limit = queued, incoming, limit


class DeadlineError(TimeoutError):
    """The request was not answered within its deadline."""


class ShuttingDownError(RuntimeError):
    """The batcher is draining for shutdown and takes no new requests."""


@dataclass
class _Request:
    results: list[Any]
    future: asyncio.Future
    queued: int  # items still in the queue
    remaining: int  # items without a result yet
    cancelled: bool = False


@dataclass
class _Entry:
    request: _Request
    index: int
    item: Any


@dataclass
class BatchStats:
    """Counts since start (the server's metrics have the distributions)."""

    batches: int = 0
    items: int = 0
    largest: int = 0


class MicroBatcher(Generic[T, R]):
    """Merge concurrent `submit` calls into batches for `run_batch(items) -> results` (same length and order)."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        executor: ThreadPoolExecutor,
        on_batch: Callable[[list[T], float], None] | None = None,
    ):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                f"bad batcher limits: max_batch_size={max_batch_size}, max_queue={max_queue}, max_wait_ms={max_wait_ms}"
            )
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.executor = executor
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: deque[_Entry] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    @property
    def queued_items(self) -> int:
        """Items waiting for the model (not counting the batch being computed)."""
        return self._queued

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="judge-batcher")

    async def stop(self) -> None:
        """Take no new requests, finish every queued item, then end the worker task."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    def check_room(self, n: int) -> None:
        """Whether `n` items would be queued now: QueueFullError or ShuttingDownError if not (a caller checks this
        before it prepares its items, so that a full queue refuses a request before any work is done for it)."""
        if self._closing or self._task is None:
            raise ShuttingDownError("the judge is not accepting requests (starting or shutting down)")
        if self._queued + n > self.max_queue:
            raise QueueFullError(self._queued, n, self.max_queue)

    async def submit(self, items: Sequence[T], timeout_s: float) -> list[R]:
        """Results for `items`, in order. Raises QueueFullError, DeadlineError, ShuttingDownError, or the
        batch function's exception."""
        self.check_room(len(items))
        if not items:
            return []
        request = _Request(
            [None] * len(items), asyncio.get_running_loop().create_future(), len(items), len(items)
        )
        self._queue.extend(_Entry(request, i, item) for i, item in enumerate(items))
        self._queued += len(items)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), timeout_s)
        except TimeoutError:
            self._cancel(request)
            raise DeadlineError(f"no answer within the request deadline of {timeout_s:g} s") from None
        except asyncio.CancelledError:  # the client went away: do not compute for nobody
            self._cancel(request)
            raise

    def _cancel(self, request: _Request) -> None:
        request.cancelled = True
        self._queued -= request.queued
        request.queued = 0

    async def _take(self) -> list[_Entry] | None:
        """The next batch: up to max_batch_size entries of live requests; None when closing with an empty queue.

        Entries stay counted as queued until the batch leaves for the model (they have not reached it yet);
        entries of requests cancelled while the batch was filling are dropped here.
        """
        loop = asyncio.get_running_loop()
        batch: list[_Entry] = []
        fill_until = 0.0
        while True:
            while self._queue and len(batch) < self.max_batch_size:
                entry = self._queue.popleft()
                if entry.request.cancelled:
                    continue
                if not batch:
                    fill_until = loop.time() + self.max_wait_s
                batch.append(entry)
            if len(batch) >= self.max_batch_size or self._closing:
                break
            wait = fill_until - loop.time() if batch else None
            if wait is not None and wait <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait)
            except TimeoutError:
                break
        batch = [e for e in batch if not e.request.cancelled]
        for entry in batch:
            entry.request.queued -= 1
            self._queued -= 1
        if not batch and self._closing and not self._queue:
            return None
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            if batch is None:
                return
            if not batch:
                continue
            items = [e.item for e in batch]
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, items)
                if len(results) != len(items):
                    raise RuntimeError(
                        f"batch function returned {len(results)} results for {len(items)} items"
                    )
            except Exception as exc:
                for entry in batch:
                    if not entry.request.cancelled:
                        entry.request.future.set_exception(exc)
                        self._cancel(entry.request)
                continue
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.largest = max(self.stats.largest, len(items))
            if self.on_batch is not None:
                self.on_batch(items, time.perf_counter() - start)
            for entry, result in zip(batch, results):
                request = entry.request
                if request.cancelled:
                    continue
                request.results[entry.index] = result
                request.remaining -= 1
                if request.remaining == 0:
                    request.future.set_result(request.results)
