"""Rollout workers: one generation engine per Ray actor, and the pool the driver talks to.

Each worker holds a version number for its weights (0: the model folder's). The driver passes the version it
needs with every `generate`; a worker that is behind raises StaleWeightsError instead of sampling from an old
policy. New weights reach every worker from one object-store copy (`ray.put` once, the actors read it from
shared memory); each worker reports the checksum of what it loaded, and the pool checks that they all agree
with each other and with the trainer's checksum when given. Every remote call has a deadline from the config.

A worker that dies is restarted by Ray (up to `rollout.max_restarts`, all workers together): the pool waits for
it, has its weight source (`on_restart`, set by `actors.weight_sync.WeightSync`) give it the version the other
workers hold, checksum checked, and sends the calls it lost again. Every request carries its own seed, so the
samples are the ones the dead worker would have returned. A restarted worker refuses to generate until it has
been given its weights (`WorkerRestartedError`), so it never samples from the model folder's weights by
mistake. docs/fault-tolerance.md.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import NoReturn

import ray

from actors.group import ActorDiedError, ActorGroup, restarted_actor
from actors.placement import Placed
from audio_thinker.core.config import RolloutConfig
from audio_thinker.core.log import get_logger, redirect_actor_output, setup_logging
from audio_thinker.core.threads import use_cpu_share
from audio_thinker.core.weights import NamedTensors
from rollout.build import build_engine
from rollout.engine import (
    GenerationRequest,
    Sample,
    SamplingConfig,
    StaleWeightsError,
)
from rollout.weight_sync import SyncEndpoint, WeightReceiver, WeightsHandle, receive_published

log = get_logger(__name__)


class WeightSyncError(RuntimeError):
    """Workers loaded different weights, or not the weights the trainer sent."""


class WorkerRestartedError(RuntimeError):
    """A worker that Ray restarted was asked to generate before the pool gave it the current weights."""


class RolloutWorker:
    """Hosts one engine. A plain class: `RolloutPool` runs it as a Ray actor; it also works in-process."""

    def __init__(
        self, rollout: RolloutConfig, model_path: str, family: str, dtype: str, seed: int
    ) -> None:
        redirect_actor_output("rollout-worker")
        setup_logging()
        self.engine_name = rollout.engine
        self.spans: list[tuple[float, float]] = []
        self.restarted = restarted_actor()  # holds the folder's weights, maybe older than the other workers'
        self.checksum: str | None = None  # of the last weights loaded (None: the model folder's)
        self.engine = build_engine(
            rollout.engine,
            model_path,
            family,
            dtype,
            max_model_len=rollout.max_model_len,
            tensor_parallel_size=rollout.tensor_parallel_size,
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            seed=seed,
            cpu_threads=use_cpu_share(rollout.num_cpus_per_worker),
        )
        log.info(
            "rollout worker pid %d: %s engine, %s (%s)%s", os.getpid(), rollout.engine, model_path, family,
            ", restarted by Ray: waiting for the current weights" if self.restarted else "",
        )  # fmt: skip

    def info(self) -> dict:
        engine = self.engine
        return {
            "engine": self.engine_name,
            "family": engine.family,
            "version": engine.version,
            "pid": os.getpid(),
            "weights_checksum": self.checksum,
        }

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig, min_version: int
    ) -> list[list[Sample]]:
        if self.restarted:
            raise WorkerRestartedError(
                f"rollout worker pid {os.getpid()} was restarted and holds the model folder's weights: the pool "
                "gives it the current weights before it generates"
            )
        log.info(
            "rollout worker pid %d: generating %d requests x %d samples (weights version %d, at least %d asked)",
            os.getpid(), len(requests), sampling.n, self.engine.version, min_version,
        )  # fmt: skip
        if self.engine.version < min_version:
            raise StaleWeightsError(
                f"rollout worker pid {os.getpid()} holds weights version {self.engine.version}, "
                f"the driver asks for version >= {min_version}: send the new weights (set_weights) first"
            )
        start, version = time.time(), self.engine.version
        try:
            groups = self.engine.generate(requests, sampling)
        finally:
            self.spans.append((start, time.time()))
        for group in groups:
            for sample in group:
                sample.weights_version = version
        return groups

    def take_generate_spans(self) -> list[tuple[float, float]]:
        """Wall-clock start and end of each `generate` since the last ask (the run's timeline)."""
        spans, self.spans = self.spans, []
        return spans

    def set_weights(
        self, weights: NamedTensors | ray.ObjectRef | WeightsHandle, version: int, rewind: bool = False
    ) -> dict:
        """Load a full checkpoint-layout state (tensors, or a handle to the buckets the trainer published in the
        object store); returns {checksum, seconds, version, num_tensors}. `rewind`: an older version may replace
        a newer one (the trainer went back to a checkpoint)."""
        if isinstance(weights, ray.ObjectRef):  # Ray resolves it in an actor call, not in a direct one
            weights = ray.get(weights)
        if isinstance(weights, WeightsHandle):
            weights = receive_published(weights, self.engine.device)
        return self._load(weights, version, rewind)

    def keep_initial_weights(self) -> dict:
        """A restarted worker may generate with the weights it loaded from the model folder: nothing newer has
        been sent (version 0)."""
        self.restarted = False
        return self.info()

    def open_sync(self, endpoint: SyncEndpoint, rank: int, timeout_s: float) -> None:
        """Join the trainer's broadcast group as receiver `rank` (blocks until every member has joined). A group
        joined before (the trainer restarted, or a worker did and the group is formed again) is replaced."""
        self.receiver = WeightReceiver(endpoint, rank, self.engine.device, timeout_s)

    def receive_weights(self, version: int, rewind: bool = False) -> dict:
        """Load the weights that rank 0 of the broadcast group is sending now, bucket by bucket."""
        return self._load(self.receiver.receive(), version, rewind)

    def _load(self, named_tensors, version: int, rewind: bool = False) -> dict:
        report = self.engine.load_weights(named_tensors, version, rewind)
        self.restarted, self.checksum = False, report.checksum
        log.info(
            "rollout worker pid %d: weights version %d loaded in %.2fs (%s...)",
            os.getpid(),
            version,
            report.seconds,
            report.checksum[:12],
        )
        return asdict(report)

    def close(self) -> None:
        self.engine.close()


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
        self.infos = self.group.get(
            self.group.submit("info"),
            "start the rollout workers",
            timeout_s=rollout.startup_timeout_s,
            timeout_key="rollout.startup_timeout_s",
        )
        self.group.track("start the rollout workers")
        # What every worker holds (set when all have loaded a version): what a restarted worker is given.
        self.version, self.checksum = 0, None
        self.on_restart: Callable[[int], None] | None = None  # gives a restarted worker i those weights
        self.ready = [True] * len(self.group)  # False from a worker's restart until it has its weights
        self.loaded = threading.Condition()
        self.regenerated = self.restarts_taken = 0

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
        what = f"generate for {len(requests)} questions"
        pending: dict[ray.ObjectRef, tuple[int, int, int, str | None]] = {}  # worker, slice, its process

        def submit(worker: int, a: int, b: int) -> None:
            ref = self.group.actors[worker].generate.remote(requests[a:b], sampling, min_version)
            pending[ref] = (worker, a, b, self.group.processes[worker])

        for c, (a, b) in enumerate(chunks):
            submit(c % workers, a, b)
        tries = dict.fromkeys(chunks, 0)
        deadline = time.monotonic() + self.rollout.call_timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(
                    f"rollout workers: {what}: no answer within {self.rollout.call_timeout_s:.0f}s "
                    "(raise rollout.call_timeout_s if that is too short)"
                )
            worker, a, b, seen = pending.pop(ready[0])
            try:
                (groups,) = self.group.get(ready, what, owners=[f"rollout worker {worker}"])
            except (ActorDiedError, WorkerRestartedError) as exc:
                tries[a, b] += 1
                if tries[a, b] > self.group.max_restarts:
                    raise_lost(worker, exc)
                self.recover(worker, lost_call(worker, exc), seen)
                self.wait_ready(worker)
                submit(worker, a, b)  # the same requests and seeds: the samples the lost call would have given
                with self.loaded:
                    self.regenerated += b - a
                deadline = max(deadline, time.monotonic() + self.rollout.call_timeout_s)
                continue
            for offset, samples in enumerate(groups):
                yield a + offset, samples

    # -------------------------------------------------------------------------------- restarts

    def recover(self, worker: int, failure: Exception, seen: str | None) -> None:
        """A call to `worker` (served by process `seen`) was lost: wait for Ray's restart of it and give it its
        weights (`ActorGroup.recover`; past `rollout.max_restarts` an ActorDiedError naming it)."""
        self.group.recover(worker, failure, seen, refresh=self._rejoin)

    def _rejoin(self, worker: int) -> None:
        with self.loaded:
            self.ready[worker] = False
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
                self.ready[w] = True
            self.loaded.notify_all()

    def wait_ready(self, worker: int) -> None:
        """Until a restarted worker has its weights: at once, or (with run.max_staleness > 0, when the trainer
        had already trained past the version the workers hold) once the next weight sync has reached it."""
        timeout = self.rollout.call_timeout_s
        with self.loaded:
            if not self.loaded.wait_for(lambda: self.ready[worker], timeout=timeout):
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
        """`method(*args)` on every worker, in parallel, within one `rollout.call_timeout_s`; a worker that dies on
        the way is recovered and asked again, with the deadline started again (a call that loads weights brings
        it up to date itself)."""
        seen = list(self.group.processes)
        refs = [getattr(actor, method).remote(*args) for actor in self.workers]
        results = []
        deadline = time.monotonic() + self.rollout.call_timeout_s
        for i, ref in enumerate(refs):
            for attempt in range(self.group.max_restarts + 1):
                try:
                    left = max(0.0, deadline - time.monotonic())
                    results.append(self.group.get([ref], what, timeout_s=left, owners=[f"rollout worker {i}"])[0])
                    break
                except (ActorDiedError, WorkerRestartedError) as exc:
                    if attempt == self.group.max_restarts:
                        raise_lost(i, exc)
                    self.recover(i, lost_call(i, exc), seen[i])
                    seen[i] = self.group.processes[i]
                    ref = getattr(self.workers[i], method).remote(*args)
                    deadline = time.monotonic() + self.rollout.call_timeout_s
        return results

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
        """Shut the engines down, then end the actors (even when an engine fails or hangs on close)."""
        self.group.shutdown("close")
