"""The policy's DeepSpeed engine: everything DeepSpeed does for a trainer rank (set-up, the GRPO and SFT steps,
log-probs, gathering weights, its state), in one module of ~400 lines so that DeepSpeed has one owner.

One `PolicyEngine` per trainer rank. The rank environment (MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK,
WORLD_SIZE) is set by the caller (actors/trainer_group.py) before construction.

Gradient accumulation is ours, not DeepSpeed's (`managed_gradient_accumulation: false`): the caller hands in a
step's sequences, `train_step` runs them as micro-batches and calls `step()` once. The loss of each micro-batch
is already divided by the step's normaliser (trainer/grpo.py: the step's sequences, micro-batches or tokens, per
`trainer.loss_type`, counted over every rank), so accumulation needs no 1/gas factor;
DeepSpeed averages gradients over ranks, so each rank multiplies its loss by the world size and the ranks' sum
comes out, the same gradient as one rank over all sequences.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from audio_thinker.core.config import BenchToggles

from audio_thinker.core.trainer_config import TrainerConfig
from audio_thinker.core.models import use_cuda
from audio_thinker.core.families import checkpoint_items
from audio_thinker.core.log import get_logger
from audio_thinker.core.models import load_policy
from trainer.build_lock import SHM_COMM_OP, build_guard, load_cpu_ops
from trainer.grpo import grpo_loss, loss_denominator, merge_stats
from trainer.lora import adapters_disabled, apply_lora, merged_entries, meta_policy
from trainer.off_policy import merge_mismatch, mismatch_sums
from trainer.sft_loss import sft_loss
from trainer.logprobs import (
    CompletionLogprobs,
    PolicyBatch,
    collate,
    compute_logprobs,
    micro_batches,
    pad_ragged,
)

log = get_logger(__name__)

DS_TAG = "deepspeed"  # sub-folder of a checkpoint that holds DeepSpeed's own files


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base lr for optimizer step `step` (0 = the first update).

    Linear warm-up reaches the full lr at step `warmup_steps - 1` (so the first update is never wasted at lr 0);
    after it, `constant`, `linear` (to 0 at `total_steps`) or `cosine` (to 0 at `total_steps`) decay.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {schedule!r} (constant, linear or cosine)")


def deepspeed_config(cfg: TrainerConfig, bf16: bool, on_gpu: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {
            "stage": cfg.zero_stage,
            # gloo has no reduce-scatter and nothing to overlap with on CPU.
            "reduce_scatter": on_gpu,
            "overlap_comm": on_gpu,
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # our torch AdamW client optimizer
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def freeze(policy: torch.nn.Module, freeze_audio_encoder: bool) -> list[str]:
    """Freeze what RL on audio must not train; returns the frozen parameter names.

    - What the architecture itself keeps fixed (Qwen2-Audio's sinusoidal position table): transformers 5.19's
      `from_pretrained` hands it back trainable, so the flags are read from a fresh instance on the meta device.
    - Qwen2.5-Omni's vision tower: audio prompts never use it, so it would get no gradient.
    - The audio encoder, on request.
    """
    with torch.device("meta"):
        fixed = {n for n, p in type(policy)(policy.config).named_parameters() if not p.requires_grad}
    frozen = []
    for name, p in policy.named_parameters():
        if name in fixed or name.startswith("visual.") or (freeze_audio_encoder and "audio_tower." in name):
            p.requires_grad_(False)
        if not p.requires_grad:
            frozen.append(name)
    return frozen


def trainable_parameters(model: str | Path | torch.nn.Module, family: str, cfg: TrainerConfig) -> int:
    """How many parameters the trainer trains (gradients and AdamW moments are kept for these only): all but the
    frozen ones in full fine-tuning, the adapters (plus the audio encoder unless frozen) with `trainer.lora`.

    `model`: a model folder (only its config.json is read, the model is built on the meta device) or a fresh
    model instance, e.g. on the meta device from a config (it gets frozen and wrapped in place). The placement
    planner's count for the gradient and optimizer-state terms."""
    policy = meta_policy(model, family) if isinstance(model, str | Path) else model
    freeze(policy, cfg.freeze_audio_encoder)
    if cfg.lora is not None:
        policy = apply_lora(policy, family, cfg.lora, train_audio_encoder=not cfg.freeze_audio_encoder)
    return sum(p.numel() for p in policy.parameters() if p.requires_grad)


class PolicyEngine:
    """The policy wrapped by DeepSpeed (ZeRO-2/3, AdamW, lr schedule, clipping) and what the trainer asks of it."""

    def __init__(
        self,
        model_path: str | Path,
        family: str,
        cfg: TrainerConfig,
        total_steps: int,
        dtype: str,
        toggles: BenchToggles | None = None,
    ):
        import deepspeed

        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"trainer dtype {dtype!r} is not supported: use bfloat16 (GPU) or float32 (CPU)")
        self.cfg = cfg
        self.share_clips = (toggles or BenchToggles()).encode_audio_once
        self.family = family
        self.model_path = Path(model_path)
        self.on_gpu = use_cuda()  # the run's decision: a rehearsal computes on the CPU (core/devices.py)
        # On the CPU DeepSpeed's JIT communication op is loaded first, under its build lock (trainer/build_lock.py);
        # init_distributed (which loads it again, from this process's cache) stays outside the lock: it is a
        # collective, and a rank holding the lock there would wait for ranks that wait for the lock.
        if not self.on_gpu:
            with build_guard(SHM_COMM_OP, f"trainer rank {os.environ.get('RANK')}", cfg.startup_timeout_s):
                load_cpu_ops()
        deepspeed.init_distributed(dist_backend="nccl" if self.on_gpu else "gloo", verbose=False)
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.on_gpu else torch.device("cpu")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

        policy = load_policy(self.model_path, family, dtype=dtype)
        if cfg.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.frozen = freeze(policy, cfg.freeze_audio_encoder)
        # With LoRA, `self.peft` is the PeftModel (for disabling its adapters) and the trained module is the
        # transformers model with the adapters inside it.
        self.peft = None
        if cfg.lora is not None:
            self.peft = apply_lora(policy, family, cfg.lora, train_audio_encoder=not cfg.freeze_audio_encoder)
            self.frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
        module = CompletionLogprobs(policy, router_aux=cfg.router_aux_loss_coef > 0)
        optimizer = torch.optim.AdamW(
            [p for p in module.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.lr_schedule)
        )
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg, bf16=dtype == "bfloat16", on_gpu=self.on_gpu),
        )
        log.info(
            "rank %d/%d: %s ZeRO-%d %s%s, %d frozen tensors, %d trainable parameters",
            self.rank,
            self.world_size,
            family,
            cfg.zero_stage,
            dtype,
            "" if cfg.lora is None else f" LoRA r={cfg.lora.rank}",
            len(self.frozen),
            sum(p.numel() for p in optimizer.param_groups[0]["params"]),
        )

    @property
    def policy(self) -> torch.nn.Module:
        return self.engine.module.policy

    @property
    def step(self) -> int:
        return int(self.engine.global_steps)

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def train_step(
        self, batch: PolicyBatch, num_sequences: int, num_micro_batches: int, temperature: float
    ) -> dict:
        """One optimizer step over this rank's share of the step's sequences.

        `num_sequences` counts the sequences of the whole step (all ranks); `num_micro_batches` is the same on all
        ranks (ZeRO reduces gradients in every backward, so ranks must run equally many): a rank with fewer
        sequences runs repeats with an empty mask, which add exactly zero. Without `old_logprobs` the step is
        on-policy (old = the current log-probs, detached: ratio 1), which is exact for one update per batch.
        `engine_logprobs` are the behaviour policy of `trainer.is_correction` (required unless `none`) and of the
        mismatch metrics (whenever given), against the old log-probs as the proximal policy.
        Returns this rank's partial sums; `trainer.merge_metrics.merge_rank_metrics` combines the ranks'.
        """
        cfg = self.cfg
        if batch.advantages is None:
            raise ValueError("train_step needs batch.advantages")
        if batch.ref_logprobs is None and cfg.beta != 0:
            raise ValueError(f"train_step needs batch.ref_logprobs when trainer.beta = {cfg.beta} != 0")
        if batch.engine_logprobs is None and cfg.is_correction != "none":
            raise ValueError(
                f"trainer.is_correction={cfg.is_correction} needs the rollout engine's log-probs "
                "(batch.engine_logprobs: sample with logprobs on)"
            )
        chunks = micro_batches(len(batch), self.cfg.micro_batch_size)
        if not chunks or len(chunks) > num_micro_batches:
            raise ValueError(
                f"{len(batch)} sequences do not fit {num_micro_batches} micro-batches of {self.cfg.micro_batch_size}"
            )
        self.engine.train()
        lr = self.lr
        denominator = self._loss_denominator(batch, len(chunks), num_sequences)
        loss_sum, parts, mismatch, router = 0.0, [], [], []
        for k in range(num_micro_batches):
            real = k < len(chunks)
            idx = chunks[k] if real else chunks[0]
            inputs = collate(batch, idx, self.device, self.share_clips)
            mask = inputs.pop("mask") if real else torch.zeros_like(inputs.pop("mask"))
            logp = self.engine(**inputs, temperature=temperature)
            width = logp.shape[1]
            old = logp.detach() if batch.old_logprobs is None else self._rows(batch.old_logprobs, idx, width)
            ref = None if batch.ref_logprobs is None else self._rows(batch.ref_logprobs, idx, width)
            behav = None if batch.engine_logprobs is None else self._rows(batch.engine_logprobs, idx, width)
            adv = torch.tensor([batch.advantages[i] for i in idx], dtype=torch.float32, device=self.device)
            loss, stats = grpo_loss(
                logp,
                old,
                ref,
                adv,
                mask,
                clip_eps_low=cfg.clip_eps_low,
                clip_eps_high=cfg.clip_eps_high,
                beta=cfg.beta,
                loss_type=cfg.loss_type,
                ratio_level=cfg.ratio_level,
                denominator=denominator,
                behav_logprobs=behav,
                is_correction=cfg.is_correction,
                is_cap=cfg.is_cap,
            )
            aux = self._router_aux(len(chunks)) if real else 0.0
            self.engine.backward((loss + aux) * self.world_size, scale_wrt_gas=False)
            if real:
                loss_sum += float(loss.detach())
                parts.append(stats)
                if cfg.router_aux_loss_coef > 0:
                    router.append(float(self.engine.module.router_aux_loss))
                if behav is not None:
                    mismatch.append(mismatch_sums(old, behav, mask, cfg.is_correction, cfg.is_cap))
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        return {
            "loss": loss_sum,
            "stats": merge_stats(parts),
            "mismatch": merge_mismatch(mismatch) if mismatch else None,
            "router_aux": (sum(router), len(router)) if router else None,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "step": self.step,
        }

    def sft_step(self, batch: PolicyBatch, num_tokens: int, num_micro_batches: int) -> dict:
        """One supervised optimizer step: NLL of the completion tokens (the targets), averaged over the
        `num_tokens` response tokens of the whole step (all ranks). Ranks with fewer sequences run empty repeats,
        as in `train_step`. Returns this rank's loss share, token count, and the step's grad norm and lr."""
        chunks = micro_batches(len(batch), self.cfg.micro_batch_size)
        if not chunks or len(chunks) > num_micro_batches:
            raise ValueError(
                f"{len(batch)} sequences do not fit {num_micro_batches} micro-batches of {self.cfg.micro_batch_size}"
            )
        self.engine.train()
        lr = self.lr
        loss_sum, tokens = 0.0, 0
        for k in range(num_micro_batches):
            real = k < len(chunks)
            inputs = collate(batch, chunks[k] if real else chunks[0], self.device, self.share_clips)
            mask = inputs.pop("mask") if real else torch.zeros_like(inputs.pop("mask"))
            loss = sft_loss(self.engine(**inputs, temperature=1.0), mask, num_tokens)  # the untempered NLL
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
            if real:
                loss_sum += float(loss.detach())
                tokens += int(mask.sum())
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        return {
            "loss": loss_sum,
            "tokens": tokens,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "step": self.step,
        }

    def _router_aux(self, num_chunks: int) -> torch.Tensor | float:
        """`trainer.router_aux_loss_coef` x this micro-batch's load-balancing loss / (real micro-batches x ranks): the
        gradient DeepSpeed averages over ranks is then the coefficient times the mean of the ranks' means."""
        coef = self.cfg.router_aux_loss_coef
        if coef == 0:
            return 0.0
        return coef * self.engine.module.router_aux_loss / (num_chunks * self.world_size)

    def _loss_denominator(self, batch: PolicyBatch, num_chunks: int, num_sequences: int) -> float:
        """The step's normaliser of `grpo_loss`; bnpo and dapo count micro-batches / tokens over every rank, as TRL
        normalises over the global batch (one all-reduce, which every rank runs: the config is the same)."""
        cfg = self.cfg
        tokens = sum(len(ids) for ids in batch.completion_ids)
        if cfg.loss_type in ("bnpo", "dapo") and self.world_size > 1:
            counts = torch.tensor([tokens, num_chunks], dtype=torch.int64, device=self.device)
            dist.all_reduce(counts)
            tokens, num_chunks = (int(c) for c in counts.tolist())
        return loss_denominator(cfg.loss_type, num_sequences, tokens, num_chunks, cfg.max_completion_length)

    def _rows(self, values: list[np.ndarray], idx: list[int], width: int) -> torch.Tensor:
        return pad_ragged([values[i] for i in idx], width, self.device)

    def compute_logprobs(
        self, batch: PolicyBatch, num_micro_batches: int, temperature: float, adapters: bool = True
    ) -> list[np.ndarray]:
        """Completion log-probs under the current weights (the GRPO 'old' log-probs); collective under ZeRO-3.
        `adapters=False` (LoRA only): with the adapters switched off, which is the initial policy (the reference)
        only while the audio encoder is frozen (docs/trainer.md)."""
        if not adapters and self.peft is None:
            raise ValueError("log-probs without adapters need trainer.lora")
        self.engine.eval()
        with nullcontext() if adapters else adapters_disabled(self.peft):
            return compute_logprobs(
                self.engine,
                batch,
                self.cfg.micro_batch_size,
                self.device,
                temperature,
                num_micro_batches,
                self.share_clips,
            )

    def checkpoint_tensors(self, bucket_bytes: int = 256 << 20) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights under checkpoint keys, on the engine's device; with LoRA the adapted layers merged
        (W + alpha / r B A) under their original names, so every consumer sees a plain checkpoint (Qwen3-Omni's fused
        experts as one tensor per expert, `core.families.checkpoint_items`).

        Every rank must run the iteration to the end: under ZeRO-3 each group of up to `bucket_bytes` is gathered
        collectively (and copied out before it is partitioned again). Under ZeRO-2 the tensors that need no merge
        are the live parameters (detached): consume them before the next optimizer step.
        """
        import deepspeed

        policy = self.policy
        tensors = dict(policy.named_parameters(remove_duplicate=False))
        tensors.update(policy.named_buffers(remove_duplicate=False))
        entries = merged_entries(policy)
        group: list = []
        size = 0
        for entry in entries + [None]:
            if entry is not None and not any(hasattr(tensors[s], "ds_id") for s in entry.sources):
                merged = entry.merge([tensors[s].detach() for s in entry.sources])
                yield from checkpoint_items(self.family, entry.name, merged)
                continue
            if entry is not None:
                group.append(entry)
                size += sum(tensors[s].ds_numel * tensors[s].element_size() for s in entry.sources)
            if group and (entry is None or size >= bucket_bytes):
                params = [tensors[s] for e in group for s in e.sources]
                with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                    copies = [e.merge([tensors[s].data for s in e.sources]).detach().clone() for e in group]
                for e, t in zip(group, copies):
                    yield from checkpoint_items(self.family, e.name, t)
                group, size = [], 0

    def save_state(self, folder: str | Path, client_state: dict) -> None:
        """DeepSpeed's full training state (weights, optimizer, scheduler, step) under folder/deepspeed; collective.
        With LoRA only the trained tensors are written (the adapters, and the audio encoder when it trains): the
        frozen base is the model folder, which the engine loads again on resume."""
        self.engine.save_checkpoint(
            str(folder),
            tag=DS_TAG,
            client_state=client_state,
            save_latest=False,
            exclude_frozen_parameters=self.peft is not None,
        )

    def load_state(self, folder: str | Path) -> dict:
        """Restore what `save_state` wrote (same number of ranks); returns the client state; collective."""
        path, client_state = self.engine.load_checkpoint(
            str(folder),
            tag=DS_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
            load_module_strict=self.peft is None,  # a LoRA checkpoint has no frozen tensors
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {Path(folder) / DS_TAG}")
        return client_state or {}
