"""Memory of one trainer rank on its GPU, before anything starts: the ZeRO model states by DeepSpeed's own
estimators' arithmetic, and the activations of one micro-batch from our formula (docs/placement.md states both).

Plain arithmetic, no DeepSpeed or torch import, so that `audio-thinker plan` answers at once (tests/unit/test_plan.py
checks it against DeepSpeed's estimators). Bytes throughout; bf16 weights and activations (the GPU trainer's dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

from audio_thinker.core.trainer_config import LoraConfig
from audio_thinker.core.model_shapes import DecoderShape

BF16 = 2
# Bytes per logit element at the LM head: the bf16 logits, their float32 copy divided by the temperature (kept for
# log-softmax and gather) and the float32 gradient of the same size in the backward pass.
LOGIT_BYTES = BF16 + 4 + 4


@dataclass(frozen=True)
class ModelStates:
    """Per-GPU model states of a ZeRO stage, as DeepSpeed estimates them (no offload), split by DeepSpeed's own
    per-parameter multipliers: 2 bytes of bf16 weights (ZeRO-3: only the largest layer gathered, 4 bytes per
    parameter), 2 + 4 bytes of bf16 and fp32 gradients and 4 + 8 bytes of fp32 master weights and Adam moments
    per trainable parameter, both divided over the ranks."""

    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def deepspeed_model_states(params: int, largest_layer_params: int, zero_stage: int, num_gpus: int) -> int:
    """The GPU bytes per rank of DeepSpeed's `estimate_zero{2,3}_model_states_mem_needs` without CPU offload, on
    one node of `num_gpus`: ZeRO-2 keeps the bf16 weights whole (2 bytes a parameter), ZeRO-3 only the largest
    layer gathered (4 bytes a parameter); both shard 18 bytes a parameter of gradients (bf16 + fp32), fp32
    master weights and Adam moments over the ranks."""
    sharded = int(18 * params / num_gpus)
    if zero_stage == 2:
        return 2 * params + sharded
    return 4 * largest_layer_params + sharded


def model_states(params: int, trainable: int, largest_layer_params: int, zero_stage: int, num_gpus: int) -> ModelStates:
    """DeepSpeed's estimate for the trainable parameters, plus the frozen ones' bf16 weights (sharded in ZeRO-3)."""
    total = deepspeed_model_states(trainable, largest_layer_params, zero_stage, num_gpus)
    gradients = int(6 * trainable / num_gpus)
    optimizer = int(12 * trainable / num_gpus)
    frozen = (params - trainable) * BF16 // (num_gpus if zero_stage == 3 else 1)
    return ModelStates(weights=total - gradients - optimizer + frozen, gradients=gradients, optimizer=optimizer)


def layer_activation_bytes(shape: DecoderShape) -> int:
    """Bytes one layer keeps for backward per token: the residual input, the two norm outputs, q, k, v, the
    attention output (flash / SDPA attention: no tokens x tokens matrix) and the MLP intermediates (SwiGLU: gate,
    up, act(gate), their product; fc1 / GELU: fc1 and GELU outputs), in bf16."""
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    q = shape.heads * shape.head_dim
    mlp = 4 * shape.intermediate if shape.gated_mlp else 2 * shape.intermediate
    return BF16 * (5 * h + q + 2 * kv + mlp)


@dataclass(frozen=True)
class Activations:
    checkpointed: int  # with gradient checkpointing
    full: int  # without
    logits: int  # the LM head's part of both


def training_activations(
    decoder: DecoderShape,
    vocab: int,
    micro_batch: int,
    seq_len: int,
    completion_len: int,
    encoder: DecoderShape | None = None,
    encoder_len: int = 0,
) -> Activations:
    """Activations of one micro-batch's forward + backward. Without checkpointing every layer keeps
    `layer_activation_bytes` per token; with it each layer keeps only its bf16 input and one layer at a time is
    recomputed. The LM head runs at the completion positions only (trainer/logprobs.py). A frozen audio encoder
    (pass encoder=None) keeps nothing."""
    b = micro_batch
    logits = b * completion_len * vocab * LOGIT_BYTES
    stacks = [(decoder, seq_len)] + ([(encoder, encoder_len)] if encoder is not None and encoder_len else [])
    full = sum(s.layers * n * layer_activation_bytes(s) for s, n in stacks)
    kept = sum(s.layers * n * BF16 * s.hidden for s, n in stacks)
    recompute = max(n * layer_activation_bytes(s) for s, n in stacks)
    return Activations(checkpointed=b * (kept + recompute) + logits, full=b * full + logits, logits=logits)


def lora_parameters(shape: DecoderShape, lora: LoraConfig) -> int:
    """Adapter parameters `trainer.lora` adds to a decoder, by hand: rank x (in + out) per targeted linear layer of
    every layer; a mixture of experts adapts each expert's fused gate/up weight (gate_proj or up_proj named) and its
    down weight, rank x (in + out) per expert (trainer/lora.py; tested against peft's count)."""
    h, q, kv, r = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, lora.rank
    sizes = {"q_proj": h + q, "k_proj": h + kv, "v_proj": h + kv, "o_proj": q + h}
    names = set(lora.target_modules)
    if shape.experts:
        i = shape.expert_intermediate
        per_layer = shape.experts * ((h + 2 * i) * bool(names & {"gate_proj", "up_proj", "gate_up_proj"})
                                     + (i + h) * ("down_proj" in names))  # fmt: skip
    else:
        sizes |= {"gate_proj": h + shape.intermediate, "up_proj": h + shape.intermediate,
                  "down_proj": shape.intermediate + h}  # fmt: skip
        per_layer = 0
    per_layer += sum(sizes[n] for n in names if n in sizes)
    return shape.layers * r * per_layer
