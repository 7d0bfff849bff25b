"""A rollout worker: one generation engine in a Ray actor (`actors/rollout_pool.py` is the pool of them).

The worker holds a version number for its weights (0: the model folder's). The driver passes the version it
needs with every `generate`; a worker that is behind raises StaleWeightsError instead of sampling from an old
policy. A worker that Ray restarted refuses to generate until the pool has given it the current weights
(`WorkerRestartedError`), so it never samples from the model folder's weights by mistake.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict

import ray

from actors.group import restarted_actor
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


