"""Rollout workers: one generation engine per Ray actor, and the pool the driver talks to.

Each worker holds a version number for its weights (0: the model folder's). The driver passes the version it
needs with every `generate`; a worker that is behind raises StaleWeightsError instead of sampling from an old
policy. New weights reach every worker from one object-store copy (`ray.put` once, the actors read it from
shared memory); each worker reports the checksum of what it loaded, and the pool checks that they all agree
with each other and with the trainer's checksum when given. Every remote call has a deadline from the config.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict

import ray

from actors.group import ActorGroup
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


class RolloutWorker:
    """Hosts one engine. A plain class: `RolloutPool` runs it as a Ray actor; it also works in-process."""

    def __init__(
        self, rollout: RolloutConfig, model_path: str, family: str, dtype: str = "float32", seed: int = 0
    ) -> None:
        redirect_actor_output("rollout-worker")
        setup_logging()
        self.engine_name = rollout.engine
        self.spans: list[tuple[float, float]] = []
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
        log.info("rollout worker pid %d: %s engine, %s (%s)", os.getpid(), rollout.engine, model_path, family)

    def info(self) -> dict:
        engine = self.engine
        return {"engine": self.engine_name, "family": engine.family, "version": engine.version, "pid": os.getpid()}

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig, min_version: int
    ) -> list[list[Sample]]:
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

    def open_sync(self, endpoint: SyncEndpoint, rank: int, timeout_s: float) -> None:
        """Join the trainer's broadcast group as receiver `rank` (blocks until every member has joined)."""
        self.receiver = WeightReceiver(endpoint, rank, self.engine.device, timeout_s)

    def receive_weights(self, version: int, rewind: bool = False) -> dict:
        """Load the weights that rank 0 of the broadcast group is sending now, bucket by bucket."""
        return self._load(self.receiver.receive(), version, rewind)

    def _load(self, named_tensors, version: int, rewind: bool = False) -> dict:
        report = self.engine.load_weights(named_tensors, version, rewind)
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
        dtype: str = "float32",
        seed: int = 0,
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
        )
        self.infos = self.group.get(
            self.group.submit("info"),
            "start the rollout workers",
            timeout_s=rollout.startup_timeout_s,
            timeout_key="rollout.startup_timeout_s",
        )

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
        them all.
        """
        requests = list(requests)
        workers = len(self.group)
        if per_call is None:
            chunks = [(a, b) for a, b in split_evenly(len(requests), workers) if b > a]
        else:
            chunks = [(a, min(a + per_call, len(requests))) for a in range(0, len(requests), per_call)]
        what = f"generate for {len(requests)} questions"
        pending = {}
        for c, (a, b) in enumerate(chunks):
            worker = c % workers
            ref = self.group.actors[worker].generate.remote(requests[a:b], sampling, min_version)
            pending[ref] = (worker, a)
        deadline = time.monotonic() + self.rollout.call_timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(
                    f"rollout workers: {what}: no answer within {self.rollout.call_timeout_s:.0f}s "
                    "(raise rollout.call_timeout_s if that is too short)"
                )
            worker, start = pending.pop(ready[0])
            (groups,) = self.group.get(ready, what, owners=[f"rollout worker {worker}"])
            for offset, samples in enumerate(groups):
                yield start + offset, samples

    def generation_spans(self) -> list[list[tuple[float, float]]]:
        """Per worker, the wall-clock start and end of each `generate` since the last ask."""
        return self.group.call("take_generate_spans", what="ask the rollout workers their generation times")

    def set_weights(
        self,
        weights: NamedTensors | ray.ObjectRef | WeightsHandle,
        version: int,
        expected_checksum: str | None = None,
        rewind: bool = False,
    ) -> dict:
        """Load new weights into every worker: {checksum, seconds (slowest worker), version, workers}."""
        ref = weights if isinstance(weights, (ray.ObjectRef, WeightsHandle)) else ray.put(weights)
        reports = self.group.call("set_weights", ref, version, rewind, what=f"load weights version {version}")
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
        return {"checksum": checksum, "seconds": seconds, "version": version, "workers": reports}

    def versions(self) -> list[int]:
        return [info["version"] for info in self.group.call("info", what="ask the rollout workers their version")]

    def close(self) -> None:
        """Shut the engines down, then end the actors (even when an engine fails or hangs on close)."""
        self.group.shutdown("close")
