"""Steps sampled ahead of the trainer (`run.max_staleness` k > 0): while step s trains, a producer thread samples
steps s+1..s+k on the weights the rollout workers hold, so a sample may come from weights up to k versions older
than the trainer's (`app/train/batch.py: drop_stale` leaves older groups out). With k = 0 every step is sampled
now, from the latest weights (the paper). docs/pipeline.md.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from audio_thinker.app.train.batch import StepBatch

# (step, the weights version the workers must hold at least) -> the step's batch
SampleFn = Callable[[int, int], StepBatch]


class Producer:
    """The steps' batches in order, each sampled now or taken from the steps produced ahead."""

    def __init__(self, sample: SampleFn, max_staleness: int, total_steps: int) -> None:
        self.sample, self.k, self.total_steps = sample, max_staleness, total_steps
        self.thread: ThreadPoolExecutor | None = None
        self.ahead: dict[int, Future] = {}
        self.next = 1  # the first step not yet started

    def start_at(self, step: int) -> None:
        """The run goes on from `step` (a new run: 1; a resume or a trainer restart: the checkpoint's step + 1)."""
        self.next = step

    def take(self, step: int, version: int) -> StepBatch:
        """Step `step`'s batch; then the steps up to `step + k` are started on weights `version` (the trainer's,
        before this step's update)."""
        if self.k == 0:
            return self.sample(step, version)
        self._start_up_to(step, version)
        batch = self.ahead.pop(step).result()  # a failure of that step is raised here, naming nothing else
        self._start_up_to(step + self.k, version)
        return batch

    def _start_up_to(self, last: int, version: int) -> None:
        if self.thread is None:
            self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-producer")
        for step in range(self.next, min(last, self.total_steps) + 1):
            self.ahead[step] = self.thread.submit(self.sample, step, version)
            self.next = step + 1

    def discard(self, timeout_s: float) -> None:
        """Wait out the steps produced ahead (their calls end on their own deadlines) and forget them: after a
        trainer restart they were sampled from weights that no longer exist."""
        for future in self.ahead.values():
            future.exception(timeout=timeout_s)
        self.ahead.clear()

    def close(self) -> None:
        """Abandon the steps produced ahead: their calls fail once the actors are gone, and the thread ends
        (waited for a little, so that it does not call into a Ray that is shut down)."""
        if self.thread is not None:
            self.thread.shutdown(wait=False, cancel_futures=True)
        wait(list(self.ahead.values()), timeout=30.0)
        self.ahead.clear()
