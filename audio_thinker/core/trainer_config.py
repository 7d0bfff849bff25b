"""The learning half's sections of a run's config: the GRPO trainer (DeepSpeed, loss, LoRA, restarts and deadlines)
and the reference model (the KL anchor)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from audio_thinker.core.section import Section
from audio_thinker.core.vocab import (
    IsCorrection,
    LossType,
    RatioLevel,
    ReferencePlacement,
)


# The language model's linear layers in both families (attention and MLP of every decoder layer).
LM_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Section):
    rank: int = Field(8, ge=1, le=1024, description="r: the rank of each adapter (B is out x r, A is r x in).")
    alpha: float = Field(16.0, gt=0, description="lora_alpha: the adapter's update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input during training.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LM_LINEAR_LAYERS),
        min_length=1,
        description="Names of the language model's linear layers that get adapters (the last part of a module "
        "name, e.g. q_proj); only the language model's decoder layers are searched, never the audio encoder. "
        "Default: every attention and MLP projection.",
    )

    init_seed: int = Field(
        0,
        description="Seed of the adapters' initialisation (A random, B zero), the same on every trainer rank and "
        "on a resume; the global RNG is left as it was.",
    )

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)]
        if bad:
            raise ValueError(f"{bad}: a target module is a layer's own name (e.g. q_proj), without dots")
        if len(set(names)) != len(names):
            raise ValueError(f"{names} names a module twice")
        return names


class TrainerConfig(Section):
    num_ranks: int = Field(1, ge=1, description="Policy-trainer actors forming one torch.distributed group.")
    num_cpus_per_rank: float = Field(0.5, gt=0, description="Ray CPUs per trainer rank.")
    num_gpus_per_rank: float = Field(0.0, ge=0, description="Ray GPUs per trainer rank.")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (paper and 7B presets: 1e-6; tiny: 1e-4).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up, in optimizer steps.")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="Schedule after warm-up.")
    beta: float = Field(0.04, ge=0, description="KL coefficient against the reference model (paper: 0.04).")
    clip_eps_low: float = Field(
        0.2, gt=0, lt=1,
        description="Lower clip: the ratio is clipped at 1 - clip_eps_low (the paper gives no value; 0.2 is PPO's).",
    )
    clip_eps_high: float = Field(
        0.2,
        gt=0,
        description="Upper clip: the ratio is clipped at 1 + clip_eps_high (the paper gives no value; PPO's 0.2; "
        "DAPO's clip-higher: 0.28; "
        "GSPO with ratio_level=sequence: 3e-4 / 4e-4 for low / high).",
    )
    loss_type: LossType = Field(
        "grpo",
        description="How per-token terms become the step's loss: grpo = per-sequence mean, then mean over "
        "sequences (the paper); bnpo = token mean per micro-batch; dr_grpo = token sum / (sequences x "
        "max_completion_length); dapo = token sum / tokens of the whole step (TRL's definitions).",
    )
    ratio_level: RatioLevel = Field(
        "token",
        description="Importance ratio per token (GRPO) or per sequence, exp(mean log-ratio) (GSPO).",
    )
    max_completion_length: int | None = Field(
        None,
        ge=1,
        description="Dr. GRPO's constant token normaliser (loss_type=dr_grpo only; at least rollout.max_new_tokens).",
    )
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward; accumulation covers the step.")
    ppo_epochs: int = Field(
        1,
        ge=1,
        description="Passes over each rollout batch (verl's ppo_epochs, TRL's num_iterations); the paper: 1. "
        "Above 1, the old log-probs come from a separate forward before the first update.",
    )
    mini_batches_per_step: int = Field(
        1,
        ge=1,
        description="Optimizer updates per pass over a rollout batch, each on an equal share of its sequences "
        "(verl's ppo_mini_batch_size as a count); the paper: 1. Above 1, the old log-probs come from a separate "
        "forward before the first update.",
    )
    is_correction: IsCorrection = Field(
        "none",
        description="Off-policy correction between the rollout engine's policy (behaviour: the log-probs it reports) "
        "and the trainer's before the update (proximal: the old log-probs): none; token_tis = each token's policy "
        "gradient times min(pi_prox / pi_behav, is_cap) (verl's TIS); seq_tis = every token of a sequence times "
        "min(prod_t pi_prox / pi_behav, is_cap); decoupled = AReaL's decoupled PPO, the ratio clipped against the "
        "proximal policy and weighted by pi_prox / pi_behav, tokens above is_cap left out (docs/trainer.md).",
    )
    is_cap: float = Field(
        2.0,
        gt=1,
        allow_inf_nan=False,
        description="Cap C of the importance weights: where token_tis / seq_tis truncate, above which decoupled "
        "drops a token, and what mismatch/is_clip_frac counts. Above 1 (as AReaL requires): on-policy weights are 1 "
        "plus numerical noise, and a cap of 1 would truncate (decoupled: drop) about half of those tokens; finite, "
        "as untruncated weights have unbounded variance.",
    )
    router_aux_loss_coef: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Weight of the router's load-balancing loss (transformers' Switch-Transformer loss over the "
        "step's real tokens) added to the GRPO loss; mixture-of-experts policies only (model.family=qwen3_omni). "
        "0 (off): the released router is balanced and a few hundred RL updates at lr 1e-6 barely move it, while "
        "the loss pulls the policy off the RL objective and changes routing between syncs (docs/trainer.md).",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    freeze_audio_encoder: bool = Field(False, description="Keep the audio encoder frozen during RL.")
    lora: LoraConfig | None = Field(
        None,
        description="Train LoRA adapters on the language model instead of all its weights (peft; e.g. "
        "trainer.lora={rank: 8}); the audio encoder trains too unless trainer.freeze_audio_encoder. None: full "
        "fine-tuning.",
    )
    sync_backend: Literal["object_store", "broadcast"] = Field(
        "object_store", description="How new weights reach the rollout workers."
    )
    sync_bucket_mb: int = Field(256, ge=1, description="Bucket size of the weight broadcast.")
    max_restarts: int = Field(
        2,
        ge=0,
        description="Trainer-group restarts within a run: a dead trainer rank makes the driver start the group "
        "anew, load the last checkpoint and redo the steps since (same data order); past this count the run "
        "stops. 0: the first death stops the run. docs/fault-tolerance.md.",
    )
    startup_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Deadline for the trainer ranks to start: rendezvous, DeepSpeed set-up and the policy loaded.",
    )
    call_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Deadline of one trainer call (step, log-probs, checkpoint, export, sync) before the run fails.",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        if isinstance(data, dict) and "clip_eps" in data:
            raise ValueError(
                "trainer.clip_eps was replaced by trainer.clip_eps_low and trainer.clip_eps_high (DAPO's "
                f"clip-higher): set both to {data['clip_eps']} for the same symmetric range"
            )
        return data

    @model_validator(mode="after")
    def _dr_grpo_length(self) -> TrainerConfig:
        if self.loss_type == "dr_grpo" and self.max_completion_length is None:
            raise ValueError(
                "trainer.loss_type=dr_grpo needs trainer.max_completion_length (its constant normaliser), "
                "e.g. rollout.max_new_tokens"
            )
        return self

    @property
    def updates_per_batch(self) -> int:
        """Optimizer updates on each rollout batch; above 1 the old policy differs from the current one."""
        return self.ppo_epochs * self.mini_batches_per_step



class ReferenceConfig(Section):
    """The reference model (the KL anchor): a frozen copy of the initial policy in its own actor."""

    placement: ReferencePlacement = Field(
        "separate",
        description="Where the reference model runs: separate = its own placement bundle (on a GPU run, its own "
        "GPU: reference.num_gpus >= 1); colocate = in trainer rank 0's bundle, sharing its GPU (rank 0 then asks "
        "Ray for trainer.num_gpus_per_rank - reference.num_gpus). See docs/placement.md.",
    )
    num_cpus: float = Field(
        0.25, gt=0, description="Ray CPUs of the reference-model actor (fractional: it may share a trainer's node)."
    )
    num_gpus: float = Field(
        0.0, ge=0, description="Ray GPUs of the reference-model actor (fractional: it may share a trainer's GPU)."
    )
    max_restarts: int = Field(
        2,
        ge=0,
        description="Restarts of a dead reference-model actor within a run: Ray restarts it (within "
        "reference.startup_timeout_s) from the model folder, its weights checksum must equal the one it had "
        "before, and the lost log-prob call is made again; past this count the run stops naming it. 0: the first "
        "death stops the run. docs/fault-tolerance.md.",
    )
    startup_timeout_s: float = Field(
        1800.0, gt=0, description="Deadline for the reference actor to start (or restart) and load the policy."
    )
    call_timeout_s: float = Field(1800.0, gt=0, description="Deadline of one reference log-prob call.")
