"""MicroBatcher: merging, per-caller results, the bounded queue, deadlines, errors, draining.

The batch function is a plain function (squares numbers, records the batches it saw); a threading.Event
holds a batch "in the model" when a test needs the queue to stay where it is.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from reward_server.batcher import DeadlineError, MicroBatcher, QueueFullError, ShuttingDownError


class Model:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(list(items))
        return [x * x for x in items]


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown(wait=True)


def make(model: Model, executor, **kw) -> MicroBatcher[int, int]:
    args = {"max_batch_size": 8, "max_wait_ms": 30.0, "max_queue": 32, **kw}
    return MicroBatcher(model, executor=executor, **args)


async def _until(predicate, steps: int = 500) -> None:
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_concurrent_requests_share_batches_and_get_their_own_results(executor):
    model = Model()

    async def main():
        batcher = make(model, executor)
        batcher.start()
        requests = [[10 * r + i for i in range(r % 3 + 1)] for r in range(12)]
        results = await asyncio.gather(*(batcher.submit(items, 10.0) for items in requests))
        await batcher.stop()
        return requests, results, batcher.stats

    requests, results, stats = asyncio.run(main())
    assert results == [[x * x for x in items] for items in requests]
    n_items = sum(len(r) for r in requests)
    assert sorted(x for b in model.batches for x in b) == sorted(x for r in requests for x in r)  # each once
    assert stats.items == n_items and stats.batches == len(model.batches) < len(requests)
    assert max(len(b) for b in model.batches) <= 8 and stats.largest == max(len(b) for b in model.batches)


def test_a_large_request_is_split_over_batches_in_order(executor):
    model = Model()

    async def main():
        batcher = make(model, executor, max_batch_size=4)
        batcher.start()
        out = await batcher.submit(list(range(10)), 10.0)
        await batcher.stop()
        return out

    assert asyncio.run(main()) == [x * x for x in range(10)]
    assert model.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_queue_full_is_refused_whole_and_only_when_full(executor):
    model = Model()
    model.gate.clear()

    async def main():
        batcher = make(model, executor, max_batch_size=2, max_wait_ms=0.0, max_queue=5)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([1, 2], 10.0))  # taken by the model, held there
        await _until(model.entered.is_set)
        waiting = asyncio.ensure_future(batcher.submit([3, 4, 5], 10.0))
        await _until(lambda: batcher.queued_items == 3)
        with pytest.raises(QueueFullError) as info:
            await batcher.submit([6, 7, 8], 10.0)  # 3 + 3 > 5
        fits = asyncio.ensure_future(batcher.submit([9, 10], 10.0))  # 3 + 2 == 5: accepted
        await _until(lambda: batcher.queued_items == 5)
        model.gate.set()
        out = await asyncio.gather(first, waiting, fits)
        await batcher.stop()
        return info.value, out

    error, out = asyncio.run(main())
    assert (error.queued, error.incoming, error.limit) == (3, 3, 5)
    assert "queue full: 3 of 5 items queued, this request has 3" in str(error)
    assert out == [[1, 4], [9, 16, 25], [81, 100]]
    assert all(6 not in b for b in model.batches)  # nothing of the refused request was computed


def test_deadline_drops_queued_items(executor):
    model = Model()
    model.gate.clear()

    async def main():
        batcher = make(model, executor, max_batch_size=1, max_wait_ms=0.0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([1], 10.0))
        await _until(model.entered.is_set)
        with pytest.raises(DeadlineError, match="0.05 s"):
            await batcher.submit([2, 3], 0.05)  # stuck behind the held batch
        assert batcher.queued_items == 0
        model.gate.set()
        assert await first == [1]
        await batcher.stop()

    asyncio.run(main())
    assert model.batches == [[1]]


def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs(executor):
    calls = []

    def flaky(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return [-x for x in items]

    async def main():
        batcher = MicroBatcher(flaky, max_batch_size=8, max_wait_ms=0.0, max_queue=8, executor=executor)
        batcher.start()
        with pytest.raises(RuntimeError, match="model exploded"):
            await batcher.submit([1, 2], 10.0)
        out = await batcher.submit([3], 10.0)
        await batcher.stop()
        return out

    assert asyncio.run(main()) == [-3]


def test_stop_drains_the_queue_then_refuses(executor):
    model = Model()

    async def main():
        batcher = make(model, executor, max_batch_size=64, max_wait_ms=5000.0)  # would wait 5 s to fill
        batcher.start()
        pending = asyncio.ensure_future(batcher.submit([1, 2, 3], 30.0))
        await _until(lambda: batcher.queued_items == 3)
        await batcher.stop()  # closing flushes the partial batch at once
        with pytest.raises(ShuttingDownError):
            await batcher.submit([4], 1.0)
        return await pending

    assert asyncio.run(main()) == [1, 4, 9]


def test_limits_are_validated(executor):
    with pytest.raises(ValueError, match="max_batch_size=0"):
        MicroBatcher(Model(), max_batch_size=0, max_wait_ms=1.0, max_queue=4, executor=executor)
