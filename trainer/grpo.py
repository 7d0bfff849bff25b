"""The GRPO objective (docs/trainer.md) and its variants: clipped ratio minus beta * k3 KL, aggregated by `loss_type`.

Per token: min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A) - beta * k3, with k3 = exp(ref - logp) - (ref - logp) - 1
and r = exp(logp - old) (`ratio_level="token"`) or GSPO's sequence ratio r_i = exp(mean_t (logp - old)) for every
token of o_i (`"sequence"`; Zheng et al. 2025, arXiv 2507.18071, eq. 7; TRL's `importance_sampling_level`).
Asymmetric clipping is DAPO's clip-higher (Yu et al. 2025, arXiv 2503.14476, eq. 10).

`loss_type` says how the per-token terms x_it of a step become one loss (TRL's `GRPOTrainer._compute_loss`):
- grpo: per-sequence mean, then mean over the step's sequences (the paper's eq. 9);
- bnpo: token mean within each micro-batch, then mean over the step's micro-batches (TRL: the local batch);
- dr_grpo: token sum / (sequences of the step x max_completion_length) (Liu et al. 2025, arXiv 2503.20783,
  "Dr. GRPO": no length normalisation; pair it with `reward.scale_advantages: false`, its other half);
- dapo: token sum / tokens of the whole step (DAPO's token-level loss, eq. 8; TRL: the global batch).
Each micro-batch contributes its own part divided by the step's `denominator` (`loss_denominator`), so the
losses (and gradients) of micro-batches and data-parallel ranks add up to the loss of the whole step.

`is_correction` (trainer/off_policy.py) multiplies each token's clipped term by a constant importance weight between
the rollout engine's policy (behaviour) and `old_logprobs` (proximal): min(r * A, clip(r) * A) * w - beta * k3; `none`
leaves the expression untouched.
"""

from __future__ import annotations

import torch

from audio_thinker.core.vocab import IS_CORRECTIONS, LOSS_TYPES, RATIO_LEVELS
from trainer.off_policy import importance_weights


def loss_denominator(
    loss_type: str, sequences: int, tokens: int, micro_batches: int = 1, max_completion_length: int | None = None
) -> float:
    """The step's normaliser of `grpo_loss`: sequences (grpo), micro-batches (bnpo), sequences x
    max_completion_length (dr_grpo) or completion tokens (dapo), all counted over the whole step (every rank)."""
    if loss_type == "grpo":
        return float(max(sequences, 1))
    if loss_type == "bnpo":
        return float(max(micro_batches, 1))
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type dr_grpo needs max_completion_length (its constant normaliser)")
        return float(max(sequences, 1) * max_completion_length)
    if loss_type == "dapo":
        return float(max(tokens, 1))
    raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    beta: float = 0.04,
    loss_type: str = "grpo",
    ratio_level: str = "token",
    denominator: float | None = None,
    behav_logprobs: torch.Tensor | None = None,
    is_correction: str = "none",
    is_cap: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative objective of a batch of completions and its statistics.

    logprobs / old_logprobs / ref_logprobs: [B, T] log-probs of the completion tokens under the policy being
    trained, the policy that sampled (recomputed by the trainer) and the frozen reference; advantages: [B];
    mask: [B, T], 1 on completion tokens. The per-token terms (module docstring) are aggregated by `loss_type`
    and divided by `denominator`, the step's normaliser from `loss_denominator`; None: this batch is the whole
    step (dr_grpo then takes the padded width T as max_completion_length). A sequence without tokens
    contributes 0. ref_logprobs may be None only when beta == 0. behav_logprobs: [B, T] the rollout engine's log-probs
    of the same tokens, needed by `is_correction` token_tis / seq_tis / decoupled (weights capped at `is_cap`,
    with old_logprobs as the proximal policy); ignored with `none`.

    Stats (python floats): clip_frac (share of tokens whose clipped term binds, i.e. get no gradient), kl (the
    k3 estimate averaged per sequence, then over sequences), ratio_mean/min/max over tokens, and the counts
    tokens and sequences (sequences with at least one token) used by `merge_stats`.
    """
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    for name, t in (
        ("old_logprobs", old_logprobs),
        ("ref_logprobs", ref_logprobs),
        ("behav_logprobs", behav_logprobs),
        ("mask", mask),
    ):
        if t is not None and t.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, logprobs has {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [B] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}")
    if ref_logprobs is None and beta != 0:
        raise ValueError("ref_logprobs is required when beta != 0")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level must be one of {', '.join(RATIO_LEVELS)}, got {ratio_level!r}")
    if is_correction not in IS_CORRECTIONS:
        raise ValueError(f"is_correction must be one of {', '.join(IS_CORRECTIONS)}, got {is_correction!r}")
    if is_correction != "none" and behav_logprobs is None:
        raise ValueError(f"is_correction={is_correction} needs behav_logprobs (the rollout engine's log-probs)")

    keep = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Padded positions may hold anything (even inf); zero them before exp so no nan reaches the gradient.
    logprobs = torch.where(keep, logprobs, zero)
    old_logprobs = torch.where(keep, old_logprobs.detach(), zero)
    tokens = keep.sum(1)
    denom = tokens.clamp(min=1).to(logprobs.dtype)

    log_ratio = logprobs - old_logprobs
    if ratio_level == "sequence":
        log_ratio = (log_ratio.sum(1) / denom)[:, None].expand_as(logprobs)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(logprobs.dtype)[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps_low, 1 + clip_eps_high) * adv
    per_token = torch.minimum(unclipped, clipped)
    if is_correction != "none":
        per_token = per_token * importance_weights(old_logprobs, behav_logprobs, keep, is_correction, is_cap)
    if ref_logprobs is not None:
        delta = torch.where(keep, ref_logprobs.detach(), zero) - logprobs
        kl = torch.exp(delta) - delta - 1
        per_token = per_token - beta * kl
    else:
        kl = torch.zeros_like(logprobs)

    masked = torch.where(keep, per_token, zero)
    if loss_type == "grpo":
        part = (masked.sum(1) / denom).sum()
    elif loss_type == "bnpo":
        part = masked.sum() / tokens.sum().clamp(min=1)
    else:
        part = masked.sum()
    if denominator is None:
        denominator = loss_denominator(loss_type, logprobs.shape[0], int(tokens.sum()), 1, logprobs.shape[1])
    loss = -part / denominator

    with torch.no_grad():
        n_tokens = int(tokens.sum())
        n_seqs = int((tokens > 0).sum())
        kl_seq = torch.where(keep, kl, zero).sum(1) / denom
        r = ratio[keep]
        stats = {
            "clip_frac": float((clipped < unclipped)[keep].float().sum()) / max(n_tokens, 1),
            "kl": float(kl_seq.sum()) / max(n_seqs, 1),
            "ratio_mean": float(r.sum()) / max(n_tokens, 1),
            "ratio_min": float(r.min()) if n_tokens else float("inf"),
            "ratio_max": float(r.max()) if n_tokens else float("-inf"),
            "tokens": float(n_tokens),
            "sequences": float(n_seqs),
        }
    return loss, stats


def merge_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """Combine `grpo_loss` stats of micro-batches / ranks into the stats of their union (exact, not a mean of means)."""
    tokens = sum(p["tokens"] for p in parts)
    seqs = sum(p["sequences"] for p in parts)
    return {
        "clip_frac": sum(p["clip_frac"] * p["tokens"] for p in parts) / max(tokens, 1),
        "kl": sum(p["kl"] * p["sequences"] for p in parts) / max(seqs, 1),
        "ratio_mean": sum(p["ratio_mean"] * p["tokens"] for p in parts) / max(tokens, 1),
        "ratio_min": min(p["ratio_min"] for p in parts),
        "ratio_max": max(p["ratio_max"] for p in parts),
        "tokens": tokens,
        "sequences": seqs,
    }
