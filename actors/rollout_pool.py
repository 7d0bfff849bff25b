"""The rollout pool: the driver's handle on the rollout-worker actors (`actors/rollout_worker.py`).

The questions of a step are spread over the workers; each worker holds a version number for its weights (0:
the model folder's) and the driver passes the version it needs with every `generate`. New weights reach every
worker from one object-store copy (`ray.put` once, the actors read it from shared memory); each worker reports
the checksum of what it loaded, and the pool checks that they all agree with each other and with the trainer's
checksum when given. Every remote call has a deadline from the config.

A worker that dies is restarted by Ray (up to `rollout.max_restarts`, all workers together): the pool waits for
it, has its weight source (`on_restart`, set by `actors.weight_sync.WeightSync`) give it the version the other
workers hold, checksum checked, and sends the calls it lost again (`_calls`, the one loop that does this). Every
request carries its own seed, so the samples are the ones the dead worker would have returned.
docs/fault-tolerance.md.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import ray

from actors.group import ActorDiedError, ActorGroup
from actors.placement import Placed
from actors.rollout_worker import RolloutWorker, WorkerRestartedError
from audio_thinker.core.config import RolloutConfig
from rollout.engine import GenerationRequest, Sample, SamplingConfig
from rollout.weight_sync import SyncEndpoint, WeightsHandle
from audio_thinker.core.weights import NamedTensors


class WeightSyncError(RuntimeError):
    """Workers loaded different weights, or not the weights the trainer sent."""


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges covering range(n), sizes differing by at most one, larger ones first."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def lost_call(worker: int, exc: Exception) -> ActorDiedError:
    """Why a worker's call was lost, as one line naming it: it died during the call (the group's ActorDiedError),
    or it had died before and Ray restarted it (the new process refused to generate)."""
    if isinstance(exc, ActorDiedError):
        return exc
    return ActorDiedError(f"rollout worker {worker} died between calls and Ray restarted it")


def raise_lost(worker: int, exc: Exception) -> NoReturn:
    """A call that was lost once too often: its ActorDiedError, or one naming the restarted worker."""
    if isinstance(exc, ActorDiedError):
        raise exc
    raise lost_call(worker, exc) from exc


def worker_env() -> dict[str, str]:
    """Environment of the worker processes: the driver's VLLM_* settings, vLLM's engine core in-process."""
    env = {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # weights are passed to the model runner as tensors
    return env


class RolloutPool:
    """`rollout.num_workers` rollout-worker actors; the questions of a step are spread over them in order."""

    def __init__(
        self,
        rollout: RolloutConfig,
        model_path: str,
        family: str,
        dtype: str,
        seed: int,
        placement: Sequence[Placed] | None = None,
    ) -> None:
        self.rollout = rollout
        self.group = ActorGroup(
            "rollout worker",
            RolloutWorker,
            rollout.num_workers,
            lambda i: (rollout, str(model_path), family, dtype, seed + i),
            num_cpus=rollout.num_cpus_per_worker,
            num_gpus=rollout.num_gpus_per_worker,
            timeout_s=rollout.call_timeout_s,
            timeout_key="rollout.call_timeout_s",
            runtime_env={"env_vars": worker_env()},
            placement=placement,
            max_restarts=rollout.max_restarts,
            restart_key="rollout.max_restarts",
            restart_timeout_s=rollout.startup_timeout_s,
            restart_timeout_key="rollout.startup_timeout_s",
        )
        self.infos: list[dict] = []  # every worker's engine, version and pid, once `ready`
        # What every worker holds (set when all have loaded a version): what a restarted worker is given.
        self.version, self.checksum = 0, None
        self.on_restart: Callable[[int], None] | None = None  # gives a restarted worker i those weights
        self.has_weights = [True] * len(self.group)  # False from a worker's restart until it has its weights
        self.loaded = threading.Condition()
        self.regenerated = self.restarts_taken = 0

    def ready(self) -> RolloutPool:
        """Wait until every worker has loaded its engine (within `rollout.startup_timeout_s`)."""
        timeout_s, key = self.rollout.startup_timeout_s, "rollout.startup_timeout_s"
        self.infos = self.group.get(self.group.submit("info"), "start the rollout workers", timeout_s, key)
        self.group.track("start the rollout workers", timeout_s, key)
        return self

    @property
    def workers(self) -> list:
        return self.group.actors

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig, min_version: int
    ) -> list[list[Sample]]:
        """`sampling.n` samples per request, in request order; StaleWeightsError from a lagging worker."""
        groups = dict(self.stream(requests, sampling, min_version))
        return [groups[i] for i in range(len(groups))]

    def stream(
        self,
        requests: Sequence[GenerationRequest],
        sampling: SamplingConfig,
        min_version: int,
        per_call: int | None = None,
    ) -> Iterator[tuple[int, list[Sample]]]:
        """(request index, its samples) as the workers' calls return, in the order they finish.

        `per_call` None: one call per worker over contiguous, near-equal slices (one engine batch each, what
        `generate` uses); k: calls of k requests dealt to the workers in turn and queued there, so a question's
        group comes back as soon as its call is done (the driver's streaming step). Each request keeps its seed,
        so which worker takes it does not change its samples. One deadline, `rollout.call_timeout_s`, covers
        them all. A call lost with its worker is sent again, unchanged, once Ray has restarted the worker and it
        has the current weights (`recover`); the deadline then starts again.
        """
        requests = list(requests)
        workers = len(self.group)
        if per_call is None:
            chunks = [(a, b) for a, b in split_evenly(len(requests), workers) if b > a]
        else:
            chunks = [(a, min(a + per_call, len(requests))) for a in range(0, len(requests), per_call)]
        calls = [(c % workers, "generate", (requests[a:b], sampling, min_version)) for c, (a, b) in enumerate(chunks)]

        def regenerated(call: int) -> None:  # the same requests and seeds: the samples the lost call would have given
            with self.loaded:
                self.regenerated += chunks[call][1] - chunks[call][0]

        for call, groups in self._calls(calls, f"generate for {len(requests)} questions", regenerated):
            for offset, samples in enumerate(groups):
                yield chunks[call][0] + offset, samples

    def _calls(
        self,
        calls: Sequence[tuple[int, str, tuple]],
        what: str,
        on_resend: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """(call index, result) of every (worker, method, args) call as it returns, in the order they finish,
        within one `rollout.call_timeout_s`. A call lost with its worker is sent again, unchanged, once Ray has
        restarted the worker and brought it up to date (`recover`; a generate call also waits for the current
        weights), and the deadline starts again; past `rollout.max_restarts` an ActorDiedError names the worker."""
        pending: dict[ray.ObjectRef, tuple[int, str | None]] = {}  # call, the process that took it

        def submit(call: int) -> None:
            worker, method, args = calls[call]
            pending[getattr(self.workers[worker], method).remote(*args)] = (call, self.group.processes[worker])

        for call in range(len(calls)):
            submit(call)
        tries = [0] * len(calls)
        deadline = time.monotonic() + self.rollout.call_timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(
                    f"rollout workers: {what}: no answer within {self.rollout.call_timeout_s:.0f}s "
                    "(raise rollout.call_timeout_s if that is too short)"
                )
            call, seen = pending.pop(ready[0])
            worker, method, _ = calls[call]
            try:
                (result,) = self.group.get(ready, what, owners=[f"rollout worker {worker}"])
            except (ActorDiedError, WorkerRestartedError) as exc:
                tries[call] += 1
                if tries[call] > self.group.max_restarts:
                    raise_lost(worker, exc)
                self.recover(worker, lost_call(worker, exc), seen)
                if method == "generate":
                    self.wait_ready(worker)
                submit(call)
                if on_resend is not None:
                    on_resend(call)
                deadline = max(deadline, time.monotonic() + self.rollout.call_timeout_s)
                continue
            yield call, result

    # -------------------------------------------------------------------------------- restarts

    def recover(self, worker: int, failure: Exception, seen: str | None) -> None:
        """A call to `worker` (served by process `seen`) was lost: wait for Ray's restart of it and give it its
        weights (`ActorGroup.recover`; past `rollout.max_restarts` an ActorDiedError naming it)."""
        self.group.recover(worker, failure, seen, refresh=self._rejoin)

    def _rejoin(self, worker: int) -> None:
        with self.loaded:
            self.has_weights[worker] = False
        if self.on_restart is not None:
            self.on_restart(worker)
        elif self.checksum is None:
            self.keep_initial_weights(worker)
        else:
            raise WeightSyncError(
                f"rollout worker {worker} was restarted with the model folder's weights, and the pool has no weight "
                f"source to give it version {self.version} (actors.weight_sync.WeightSync sets one)"
            )

    def keep_initial_weights(self, worker: int) -> None:
        """Nothing has been loaded into the pool yet: a restarted worker's folder weights are version 0."""
        self.group.get([self.workers[worker].keep_initial_weights.remote()], "resume with the folder's weights",
                       owners=[f"rollout worker {worker}"])  # fmt: skip
        self._mark_ready([worker])

    def load_worker(self, worker: int, weights: WeightsHandle, version: int, expected_checksum: str) -> dict:
        """Load `version` into one (restarted) worker; its checksum must be `expected_checksum`."""
        (report,) = self.group.get(
            [self.workers[worker].set_weights.remote(weights, version)],
            f"load weights version {version} after its restart",
            owners=[f"rollout worker {worker}"],
        )
        if report["checksum"] != expected_checksum:
            raise WeightSyncError(
                f"restarted rollout worker {worker} loaded weights with checksum {report['checksum']}, the trainer "
                f"sent {expected_checksum} (version {version})"
            )
        self._mark_ready([worker])
        return report

    def _mark_ready(self, workers: Sequence[int]) -> None:
        with self.loaded:
            for w in workers:
                self.has_weights[w] = True
            self.loaded.notify_all()

    def wait_ready(self, worker: int) -> None:
        """Until a restarted worker has its weights: at once, or (with run.max_staleness > 0, when the trainer
        had already trained past the version the workers hold) once the next weight sync has reached it."""
        timeout = self.rollout.call_timeout_s
        with self.loaded:
            if not self.loaded.wait_for(lambda: self.has_weights[worker], timeout=timeout):
                raise TimeoutError(
                    f"rollout worker {worker}: restarted, but no weights reached it within {timeout:.0f}s "
                    "(raise rollout.call_timeout_s if that is too short)"
                )

    def take_recovery(self) -> dict[str, int]:
        """Worker restarts and regenerated requests since the last ask (a step's metrics)."""
        with self.loaded:
            restarts, self.restarts_taken = self.group.restarts - self.restarts_taken, self.group.restarts
            regenerated, self.regenerated = self.regenerated, 0
        return {"recovery/rollout_restarts": restarts, "recovery/regenerated_requests": regenerated}

    def _each(self, method: str, args: Sequence, what: str) -> list:
        """`method(*args)` on every worker, in parallel (`_calls`: a worker lost on the way is recovered and
        asked again); the results in worker order."""
        results = dict(self._calls([(i, method, tuple(args)) for i in range(len(self.workers))], what))
        return [results[i] for i in range(len(self.workers))]

    def generation_spans(self) -> list[list[tuple[float, float]]]:
        """Per worker, the wall-clock start and end of each `generate` since the last ask."""
        return self._each("take_generate_spans", (), "ask the rollout workers their generation times")

    def set_weights(
        self,
        weights: NamedTensors | ray.ObjectRef | WeightsHandle,
        version: int,
        expected_checksum: str | None = None,
        rewind: bool = False,
    ) -> dict:
        """Load new weights into every worker: {checksum, seconds (slowest worker), version, workers}."""
        ref = weights if isinstance(weights, (ray.ObjectRef, WeightsHandle)) else ray.put(weights)
        reports = self._each("set_weights", (ref, version, rewind), f"load weights version {version}")
        return self.check_reports(reports, version, expected_checksum)

    def open_sync(self, endpoint: SyncEndpoint) -> list:
        """Start every worker's join of the broadcast group (ranks 1..K); `PolicyTrainerGroup.open_sync` awaits
        these refs together with the trainer's own join."""
        timeout = self.rollout.call_timeout_s
        return self.group.submit_each(
            "open_sync", [(endpoint, rank, timeout) for rank in range(1, len(self.group) + 1)]
        )

    def receive_weights(self, version: int, rewind: bool = False) -> list:
        """Start every worker's receive of the next broadcast; `PolicyTrainerGroup.broadcast_weights` awaits them."""
        return self.group.submit("receive_weights", version, rewind)

    def check_reports(self, reports: list[dict], version: int, expected_checksum: str | None = None) -> dict:
        """All workers must have loaded the same weights, and the trainer's when its checksum is given."""
        checksums = {r["checksum"] for r in reports}
        if len(checksums) != 1:
            raise WeightSyncError(f"workers loaded different weights (version {version}): {checksums}")
        checksum = checksums.pop()
        if expected_checksum is not None and checksum != expected_checksum:
            raise WeightSyncError(
                f"rollout workers loaded weights with checksum {checksum}, "
                f"the trainer sent {expected_checksum} (version {version})"
            )
        seconds = max(r["seconds"] for r in reports)
        with self.loaded:
            self.version, self.checksum = version, checksum
        self._mark_ready(range(len(self.group)))
        return {"checksum": checksum, "seconds": seconds, "version": version, "workers": reports}

    def worker_infos(self) -> list[dict]:
        """Every worker's engine, weights version and checksum and pid; dead ones are recovered first."""
        return self._each("info", (), "ask the rollout workers their state")

    def versions(self) -> list[int]:
        return [info["version"] for info in self.worker_infos()]

    def close(self) -> None:
        """Shut the engines down, then end the actors (even when an engine fails or hangs on close); a pool that
        never became ready (a failed start-up) is ended at once."""
        self.group.shutdown("close" if self.infos else None)
