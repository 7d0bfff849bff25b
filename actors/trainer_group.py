"""The policy trainer as N Ray actors forming one torch.distributed (DeepSpeed) group.

`PolicyTrainerGroup` lives in the driver. It starts the rank actors, has rank 0 pick the rendezvous (its node IP
and a free port), sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_* in each actor before DeepSpeed starts (else
DeepSpeed looks for MPI), and splits each step's sequences over the ranks so that N ranks take the same
optimizer step as one rank would (see trainer/engine.py for the loss scaling). Every remote call is awaited
with `trainer.call_timeout_s`: a hung rank fails the step instead of hanging the run.

Weight sync, sender side: `publish_weights` (Ray object store) or `open_sync` + `broadcast_weights` (a process
group of trainer rank 0 and the rollout workers' `WeightReceiver`s, see actors/weight_sync.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import ray

from actors.group import ActorGroup
from actors.placement import Placed
from audio_thinker.core.config import BenchToggles
from audio_thinker.core.trainer_config import TrainerConfig
from audio_thinker.core.devices import cpu_only
from audio_thinker.core.log import get_logger, redirect_actor_output, setup_logging
from audio_thinker.core.threads import use_cpu_share
from audio_thinker.core.weights import state_checksum
from rollout.weight_sync import SyncEndpoint, WeightSender, WeightsHandle, free_port, publish
from trainer.build_lock import describe_lock
from trainer.checkpoint import capture_rng, export_hf, load_checkpoint, save_checkpoint
from trainer.engine import PolicyEngine
from trainer.merge_metrics import merge_rank_metrics, merge_update_metrics
from trainer.logprobs import PolicyBatch

log = get_logger(__name__)


def shard_plan(num_sequences: int, num_ranks: int, micro_batch_size: int) -> tuple[list[list[int]], int]:
    """Contiguous, near-equal shards of the step's sequences, and the micro-batch count every rank runs."""
    if num_sequences < num_ranks:
        raise ValueError(f"a step needs at least one sequence per trainer rank: {num_sequences} < {num_ranks} ranks")
    shards = [s.tolist() for s in np.array_split(np.arange(num_sequences), num_ranks)]
    return shards, max(-(-len(s) // micro_batch_size) for s in shards)


def mini_batch_plan(num_sequences: int, mini_batches: int, num_ranks: int) -> list[list[int]]:
    """Consecutive, near-equal mini-batches of the batch's sequences (whole groups when they divide evenly), at
    most as many as leave every rank one sequence of each (a filtered step may have fewer sequences)."""
    count = max(1, min(mini_batches, num_sequences // num_ranks))
    return [m.tolist() for m in np.array_split(np.arange(num_sequences), count)]


@ray.remote
class PolicyTrainerRank:
    """One rank: a `PolicyEngine` plus what the group asks of it. Rank 0 also owns the sync sender."""

    def __init__(self, rank: int, world_size: int):
        redirect_actor_output(f"trainer-rank-{rank}")
        setup_logging()
        self.rank = rank
        self.world_size = world_size
        self.engine = None
        self.sender = None

    def rendezvous(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), free_port()

    def setup(
        self,
        master_addr: str,
        master_port: int,
        model_path: str,
        family: str,
        cfg: TrainerConfig,
        total_steps: int,
        dtype: str,
        toggles: BenchToggles,
    ) -> None:
        # Each actor sees only its own GPU (Ray sets CUDA_VISIBLE_DEVICES), so its local rank is 0.
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            LOCAL_RANK="0",
            WORLD_SIZE=str(self.world_size),
        )
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.cwd() / ".cache" / "torch_extensions"))
        use_cpu_share(cfg.num_cpus_per_rank)
        self.engine = PolicyEngine(model_path, family, cfg, total_steps, dtype, toggles)

    def train_step(self, shard: PolicyBatch, num_sequences: int, num_micro_batches: int, temperature: float) -> dict:
        log.info("rank %d: train step on %d of %d sequences", self.rank, len(shard), num_sequences)
        return self.engine.train_step(shard, num_sequences, num_micro_batches, temperature)

    def compute_logprobs(self, shard: PolicyBatch, num_micro_batches: int, temperature: float) -> list[np.ndarray]:
        return self.engine.compute_logprobs(shard, num_micro_batches, temperature)

    def sft_step(self, shard: PolicyBatch, num_tokens: int, num_micro_batches: int) -> dict:
        return self.engine.sft_step(shard, num_tokens, num_micro_batches)

    def save_checkpoint(self, root: str, extra: dict, keep: int) -> str:
        return str(save_checkpoint(self.engine, root, extra, keep))

    def load_checkpoint(self, folder: str) -> dict:
        return load_checkpoint(self.engine, folder)

    def export(self, out: str) -> str:
        return str(export_hf(self.engine, out))

    def status(self) -> dict:
        rng = hashlib.sha256(json.dumps(capture_rng()).encode()).hexdigest()
        return {"step": self.engine.step, "lr": self.engine.lr, "rng_digest": rng}

    def weights_checksum(self) -> str | None:
        named = ((k, v.cpu()) for k, v in self.engine.checkpoint_tensors())
        if self.rank == 0:
            return state_checksum(list(named))
        for _ in named:  # ZeRO-3 gathers are collective: every rank walks the weights
            pass
        return None

    def publish_weights(self, bucket_bytes: int, version: int) -> WeightsHandle | None:
        named = self.engine.checkpoint_tensors(bucket_bytes)
        if self.rank == 0:
            return publish(named, bucket_bytes, version)
        for _ in named:
            pass
        return None

    def open_sync(self, endpoint: SyncEndpoint, timeout_s: float) -> None:
        self.sender = WeightSender(endpoint, device=self.engine.device, timeout_s=timeout_s)

    def broadcast_weights(self, bucket_bytes: int, version: int) -> dict | None:
        named = self.engine.checkpoint_tensors(bucket_bytes)
        if self.rank == 0:
            if self.sender is None:
                raise RuntimeError("broadcast_weights before open_sync")
            return self.sender.send(named, bucket_bytes, version)
        for _ in named:
            pass
        return None

    def close_sync(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None


class PolicyTrainerGroup:
    """N trainer ranks as one DeepSpeed data-parallel group; the driver's handle on the learning half."""

    def __init__(
        self,
        model_path: str | Path,
        family: str,
        cfg: TrainerConfig,
        total_steps: int,
        dtype: str,
        placement: Sequence[Placed] | None = None,
        toggles: BenchToggles | None = None,
    ):
        self.cfg = cfg
        self.family = family
        self.setup_args = (str(model_path), family, cfg, total_steps, dtype, toggles or BenchToggles())
        self.placement = placement
        # GPU ranks broadcast with NCCL, unless the run computes on the CPU (a rehearsal: GPUs only declared).
        self.sync_backend = "nccl" if cfg.num_gpus_per_rank > 0 and not cpu_only() else "gloo"
        self.ranks = self._create()

    def ready(self) -> PolicyTrainerGroup:
        """Wait until every rank has joined the group and loaded the policy (within `trainer.startup_timeout_s`)."""
        self._setup(self.ranks)
        return self

    def _create(self) -> ActorGroup:
        """The rank actors, in the run's trainer bundles (`_setup` gives each the policy and a fresh optimizer)."""
        cfg, n = self.cfg, self.cfg.num_ranks
        return ActorGroup(
            "trainer rank",
            PolicyTrainerRank,
            n,
            lambda r: (r, n),
            num_cpus=cfg.num_cpus_per_rank,
            num_gpus=cfg.num_gpus_per_rank,
            timeout_s=cfg.call_timeout_s,
            timeout_key="trainer.call_timeout_s",
            placement=self.placement,
        )

    def _setup(self, ranks: ActorGroup) -> None:
        timeout_s, key = self.cfg.startup_timeout_s, "trainer.startup_timeout_s"
        try:
            addr, port = ranks.get([ranks.actors[0].rendezvous.remote()], "rendezvous", timeout_s, key)[0]
            ranks.get(ranks.submit("setup", addr, port, *self.setup_args), "load the policy", timeout_s, key)
        except TimeoutError as exc:
            ranks.shutdown()
            cause = describe_lock() if self.sync_backend == "gloo" else None  # a CPU rank loads a JIT op
            if cause is None:
                raise
            raise TimeoutError(f"{exc}; {cause}") from exc
        except BaseException:
            ranks.shutdown()
            raise

    def restart(self) -> None:
        """End every rank (a dead one leaves the others stuck in their collectives) and start the group anew in
        the same bundles; the caller loads a checkpoint into it."""
        self.ranks.shutdown()
        self.ranks = self._create()
        self._setup(self.ranks)

    def dead_ranks(self) -> list[int]:
        """The ranks whose actor is gone (asked with a short deadline; a rank stuck in a collective is alive)."""
        refs = [actor.__ray_ready__.remote() for actor in self.ranks.actors]
        ray.wait(refs, num_returns=len(refs), timeout=5.0)
        dead = []
        for rank, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError:
                dead.append(rank)
            except ray.exceptions.GetTimeoutError:
                pass
        return dead

    def _sharded(self, batch: PolicyBatch) -> tuple[list[PolicyBatch], int]:
        shards, num_micro = shard_plan(len(batch), len(self.ranks), self.cfg.micro_batch_size)
        return [batch.select(s) for s in shards], num_micro

    def train_step(self, batch: PolicyBatch, temperature: float) -> dict[str, float]:
        """The updates of one rollout batch: `trainer.ppo_epochs` passes, each of `trainer.mini_batches_per_step`
        optimizer steps on consecutive shares of the sequences (the paper: one step on all of them). Returns the
        step's metrics (`actor/*`, `timing_s/train`)."""
        cfg = self.cfg
        if cfg.updates_per_batch > 1 and batch.old_logprobs is None:
            raise ValueError(
                f"trainer.ppo_epochs={cfg.ppo_epochs} x trainer.mini_batches_per_step={cfg.mini_batches_per_step} "
                "updates per batch need the batch's old_logprobs (the policy moves after the first update)"
            )
        start = time.perf_counter()
        updates = []
        for _ in range(cfg.ppo_epochs):
            for mini in mini_batch_plan(len(batch), cfg.mini_batches_per_step, len(self.ranks)):
                part = batch if len(mini) == len(batch) else batch.select(mini)
                shards, num_micro = self._sharded(part)
                args = [(shard, len(part), num_micro, temperature) for shard in shards]
                updates.append(merge_rank_metrics(self.ranks.call_each("train_step", args)))
        metrics = merge_update_metrics(updates, cfg.ppo_epochs)
        metrics["timing_s/train"] = time.perf_counter() - start
        return metrics

    def sft_step(self, batch: PolicyBatch) -> dict[str, float]:
        """One supervised step on the batch's completions (the targets); returns `sft/*` and `actor/*` metrics."""
        start = time.perf_counter()
        parts, num_micro = self._sharded(batch)
        num_tokens = sum(len(ids) for ids in batch.completion_ids)
        results = self.ranks.call_each("sft_step", [(part, num_tokens, num_micro) for part in parts])
        return {
            "sft/loss": sum(r["loss"] for r in results),
            "sft/tokens": sum(r["tokens"] for r in results),
            "sft/sequences": len(batch),
            "actor/grad_norm": results[0]["grad_norm"],
            "actor/lr": results[0]["lr"],
            "actor/step": results[0]["step"],
            "timing_s/train": time.perf_counter() - start,
        }

    def compute_logprobs(self, batch: PolicyBatch, temperature: float) -> list[np.ndarray]:
        """Per-sequence completion log-probs under the current weights (the 'old' log-probs), in batch order."""
        parts, num_micro = self._sharded(batch)
        results = self.ranks.call_each("compute_logprobs", [(part, num_micro, temperature) for part in parts])
        return [lp for part in results for lp in part]

    def save_checkpoint(self, root: str | Path, extra: dict | None = None, keep: int = 2) -> Path:
        return Path(self.ranks.call("save_checkpoint", str(root), extra or {}, keep)[0])

    def load_checkpoint(self, folder: str | Path) -> dict:
        """Restore a checkpoint of a group of the same size; returns its trainer_state (step, extra, ...)."""
        return self.ranks.call("load_checkpoint", str(folder))[0]

    def export(self, out: str | Path) -> Path:
        return Path(self.ranks.call("export", str(out))[0])

    def status(self) -> dict:
        """Rank 0's optimizer steps, the lr of the next step and a digest of its RNG states (to check a resume)."""
        return self.ranks.call_rank0("status")

    def weights_checksum(self) -> str:
        return self.ranks.call("weights_checksum")[0]

    def publish_weights(self, version: int) -> WeightsHandle:
        """Object-store sync: the current weights as a `WeightsHandle` for `receive_published` in the workers."""
        return self.ranks.call("publish_weights", self.cfg.sync_bucket_mb << 20, version)[0]

    def sync_endpoint(self, num_receivers: int) -> SyncEndpoint:
        """A fresh rendezvous (rank 0's IP, a free port) for a broadcast group of rank 0 + `num_receivers`."""
        host, port = self.ranks.call_rank0("rendezvous")
        return SyncEndpoint(host, port, num_receivers + 1, self.sync_backend)

    def open_sync(self, endpoint: SyncEndpoint, receiver_refs: list) -> list:
        """Form the broadcast group. `receiver_refs` are the workers' (already started) calls that construct their
        `WeightReceiver`s: both sides block until all have joined, so they are awaited together."""
        refs = [self.ranks.actors[0].open_sync.remote(endpoint, self.cfg.call_timeout_s), *receiver_refs]
        owners = ["trainer rank 0", *(f"weight receiver {i}" for i in range(1, len(refs)))]
        return self.ranks.get(refs, "open the weight-sync group", owners=owners)[1:]

    def broadcast_weights(self, version: int, receiver_refs: list) -> tuple[dict, list]:
        """Broadcast the current weights; `receiver_refs` are the workers' (already started) receive calls.
        Returns rank 0's transfer report (bytes, tensors, buckets, seconds) and the workers' results."""
        refs = self.ranks.submit("broadcast_weights", self.cfg.sync_bucket_mb << 20, version)
        owners = [f"trainer rank {r}" for r in range(len(refs))]
        owners += [f"weight receiver {i}" for i in range(1, len(receiver_refs) + 1)]
        results = self.ranks.get(refs + list(receiver_refs), f"broadcast weights version {version}", owners=owners)
        return results[0], results[len(refs) :]

    def close_sync(self) -> None:
        self.ranks.call_rank0("close_sync")

    def shutdown(self) -> None:
        self.ranks.shutdown()
