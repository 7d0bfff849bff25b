"""The reference model: the frozen initial policy, asked only for completion log-probs (the KL anchor).

Plain transformers, no DeepSpeed and no optimizer state, in a one-actor `ActorGroup`. Its resources are
fractional (`reference.num_cpus` / `reference.num_gpus`) so that it can share trainer rank 0's bundle and
GPU (`reference.placement=colocate`) or have its own (`separate`).

A reference actor that dies is restarted by Ray (up to `reference.max_restarts`): the new process loads
the model folder again, which is what the reference must hold, so its weights checksum must equal the one taken
before the death; the lost call is then made again. A restarted process refuses log-prob calls until that check
is done, so a death between two calls is caught too (docs/fault-tolerance.md).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from actors.group import ActorDiedError, ActorGroup, restarted_actor
from actors.placement import Placed
from audio_thinker.core.config import BenchToggles
from audio_thinker.core.trainer_config import ReferenceConfig
from audio_thinker.core.models import compute_device
from audio_thinker.core.log import get_logger, redirect_actor_output, setup_logging
from audio_thinker.core.models import checkpoint_state, load_policy
from audio_thinker.core.threads import use_cpu_share
from audio_thinker.core.weights import state_checksum
from trainer.logprobs import CompletionLogprobs, PolicyBatch, compute_logprobs

log = get_logger(__name__)


class ReferenceModel:
    """The actor: the policy as it was at step 0."""

    def __init__(
        self,
        model_path: str,
        family: str,
        dtype: str,
        micro_batch_size: int,
        encode_audio_once: bool,
        num_cpus: float,
    ):
        redirect_actor_output("reference")
        setup_logging()
        use_cpu_share(num_cpus)
        self.family = family
        self.device = compute_device()
        self.module = CompletionLogprobs(load_policy(model_path, family, dtype=dtype, device=self.device)).eval()
        self.module.requires_grad_(False)
        self.micro_batch_size = micro_batch_size
        self.encode_audio_once = encode_audio_once
        self.restarted = restarted_actor()  # its weights are checked by the driver before it is used again
        log.info("reference pid %d: %s (%s) on %s", os.getpid(), model_path, family, self.device)

    def compute_logprobs(self, batch: PolicyBatch, temperature: float) -> list[np.ndarray]:
        if self.restarted:
            raise ReferenceRestartedError(
                f"reference pid {os.getpid()} was restarted: the driver checks its weights before it is used"
            )
        log.info("reference pid %d: log-probs of %d completions", os.getpid(), len(batch.completion_ids))
        return compute_logprobs(
            self.module,
            batch,
            self.micro_batch_size,
            self.device,
            temperature,
            share_clips=self.encode_audio_once,
        )

    def weights_checksum(self) -> str:
        return state_checksum(checkpoint_state(self.module.policy, self.family))

    def resume(self) -> str:
        """After a restart: the checksum of the weights it loaded; it answers log-prob calls again."""
        self.restarted = False
        return self.weights_checksum()


class ReferenceRestartedError(RuntimeError):
    """A restarted reference actor was asked for log-probs before the driver checked its weights."""


class ReferenceChangedError(RuntimeError):
    """The restarted reference does not hold the weights it held before (the model folder changed mid-run)."""


class Reference:
    """The driver's handle on the reference actor."""

    def __init__(
        self,
        model_path: str | Path,
        family: str,
        cfg: ReferenceConfig,
        micro_batch_size: int,
        dtype: str,
        placement: Sequence[Placed] | None = None,
        toggles: BenchToggles | None = None,
    ):
        self.model_path = str(model_path)
        self.startup_timeout_s = cfg.startup_timeout_s
        share_clips = (toggles or BenchToggles()).encode_audio_once
        self.group = ActorGroup(
            "reference model",
            ReferenceModel,
            1,
            lambda _: (
                self.model_path,
                family,
                dtype,
                micro_batch_size,
                share_clips,
                cfg.num_cpus,
            ),
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            timeout_s=cfg.call_timeout_s,
            timeout_key="reference.call_timeout_s",
            placement=placement,
            max_restarts=cfg.max_restarts,
            restart_key="reference.max_restarts",
            restart_timeout_s=cfg.startup_timeout_s,
            restart_timeout_key="reference.startup_timeout_s",
        )
        self.checksum: str | None = None  # of the weights it holds, taken on first use (restartable only)
        self.lock = threading.Lock()
        self.retries = self.restarts_taken = 0

    def ready(self) -> Reference:
        """Wait until the reference has loaded the policy (within `reference.startup_timeout_s`)."""
        self.group.track("load the reference model", self.startup_timeout_s, "reference.startup_timeout_s")
        return self

    def compute_logprobs(self, batch: PolicyBatch, temperature: float) -> list[np.ndarray]:
        """The reference log-probs of every completion; a call lost with a dead actor is made again once Ray has
        restarted it (ActorDiedError naming it past `reference.max_restarts`)."""
        for attempt in range(self.group.max_restarts + 1):
            seen = self.group.processes[0]
            try:
                if self.group.max_restarts and self.checksum is None:
                    self._baseline()
                return self.group.call_rank0("compute_logprobs", batch, temperature, what="reference log-probs")
            except (ActorDiedError, ReferenceRestartedError) as exc:
                failure = exc
                if isinstance(exc, ReferenceRestartedError):
                    failure = ActorDiedError("reference model 0 died between calls and Ray restarted it")
                if attempt == self.group.max_restarts:
                    if failure is exc:
                        raise
                    raise failure from exc
                self.group.recover(0, failure, seen, refresh=self._check_reloaded)
                with self.lock:
                    self.retries += 1
        raise AssertionError("unreachable")

    def _baseline(self) -> None:
        """Which process serves the reference and the checksum of its weights: what a restart is checked against."""
        with self.lock:
            if self.checksum is None:
                if self.group.processes[0] is None:
                    self.ready()
                self.checksum = self.weights_checksum()

    def _check_reloaded(self, index: int) -> None:
        checksum = self.group.call_rank0("resume", what="check the restarted reference's weights")
        with self.lock:
            before, self.checksum = self.checksum, self.checksum or checksum
        if before is not None and checksum != before:
            raise ReferenceChangedError(
                f"the restarted reference model holds weights with checksum {checksum[:16]}..., before it died "
                f"{before[:16]}...: {self.model_path} changed during the run"
            )
        log.info("the reference model is back with the same weights (%s...)", checksum[:12])

    def take_recovery(self) -> dict[str, int]:
        """Reference restarts and log-prob calls made again since the last ask (a step's metrics)."""
        with self.lock:
            restarts, self.restarts_taken = self.group.restarts - self.restarts_taken, self.group.restarts
            retries, self.retries = self.retries, 0
        return {"recovery/reference_restarts": restarts, "recovery/reference_retries": retries}

    def weights_checksum(self) -> str:
        return self.group.call_rank0("weights_checksum")

    def close(self) -> None:
        self.group.shutdown()
