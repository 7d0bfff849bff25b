"""The GRPO objective (docs/rewards.md, docs/architecture.md): token-level clipped ratio minus beta * k3 KL, per-sequence means.

`grpo_loss` takes `num_sequences`, the number of sequences of the whole optimizer step, so that the losses of
micro-batches (and of data-parallel ranks) add up to the loss of the whole step: each micro-batch contributes
its sequences' sum divided by the step's count, exactly the mean over all sequences of the step.
"""

from __future__ import annotations

import torch


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    num_sequences: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative GRPO objective of a batch of completions and its statistics.

    logprobs / old_logprobs / ref_logprobs: [B, T] log-probs of the completion tokens under the policy being
    trained, the policy that sampled (recomputed by the trainer) and the frozen reference; advantages: [B];
    mask: [B, T], 1 on completion tokens. Per token: min(r * A, clip(r, 1 - eps, 1 + eps) * A) - beta * k3 with
    r = exp(logp - old) and k3 = exp(ref - logp) - (ref - logp) - 1. Tokens are averaged within each sequence
    (a sequence without tokens contributes 0), sequences are summed and divided by `num_sequences` (default B).
    ref_logprobs may be None only when beta == 0.

    Stats (python floats): clip_frac (share of tokens whose clipped term binds, i.e. get no gradient), kl (the
    k3 estimate averaged like the objective: per sequence, then over sequences), ratio_mean/min/max over tokens,
    and the counts tokens and sequences (sequences with at least one token) used by `merge_stats`.
    """
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("mask", mask)):
        if t is not None and t.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, logprobs has {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [B] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}")
    if ref_logprobs is None and beta != 0:
        raise ValueError("ref_logprobs is required when beta != 0")

    keep = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Padded positions may hold anything (even inf); zero them before exp so no nan reaches the gradient.
    logprobs = torch.where(keep, logprobs, zero)
    old_logprobs = torch.where(keep, old_logprobs.detach(), zero)

    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.detach().to(logprobs.dtype)[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    per_token = torch.minimum(unclipped, clipped)
    if ref_logprobs is not None:
        delta = torch.where(keep, ref_logprobs.detach(), zero) - logprobs
        kl = torch.exp(delta) - delta - 1
        per_token = per_token - beta * kl
    else:
        kl = torch.zeros_like(logprobs)

    tokens = keep.sum(1)
    denom = tokens.clamp(min=1).to(logprobs.dtype)
    per_seq = torch.where(keep, per_token, zero).sum(1) / denom
    n = logprobs.shape[0] if num_sequences is None else num_sequences
    loss = -per_seq.sum() / n

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
