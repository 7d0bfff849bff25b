"""Off-policy correction between the rollout engine and the trainer, and the mismatch metrics (docs/trainer.md,
"Off-policy correction").

Behaviour log-probs b_t are what the rollout engine reported for each sampled token (`PolicyBatch.engine_logprobs`);
proximal log-probs p_t are the trainer's before the update (`old_logprobs`, or with one update per rollout batch the
loss pass's own, detached). With l_t = p_t - b_t, the weights of `trainer.is_correction` with cap C are:

- token_tis: w_t = min(exp(l_t), C), truncated importance sampling per token (Yao et al. 2025, "Your Efficient RL
  Framework Secretly Brings You Off-Policy RL Training"; verl's TIS, `tis_imp_ratio_cap`);
- seq_tis: w_i = min(exp(sum_t l_t), C), one weight for every token of sequence o_i (verl's `rollout_is_level:
  sequence`, truncated), computed as exp(min(sum_t l_t, log C)) so it never overflows;
- decoupled: w_t = exp(l_t) where exp(l_t) <= C, else 0, the behaviour weight of AReaL's decoupled PPO objective (Fu
  et al. 2025, arXiv 2505.24298; after Hilton et al. 2021, arXiv 2110.00641): AReaL leaves the tokens above
  `behav_imp_weight_cap` out of the gradient (weight 0) and still counts them in the loss's denominator.

A weight is a constant (no gradient) that multiplies its token's clipped policy-gradient term; the KL penalty to the
reference is not reweighted (as in verl and AReaL).

The mismatch metrics are computed from partial sums (`mismatch_sums`) that add up exactly over micro-batches, ranks and
updates (`merge_mismatch`), then divided once (`mismatch_metrics`).
"""

from __future__ import annotations

import math

import torch

from audio_thinker.core.vocab import IS_CORRECTIONS

CORRECTING = tuple(m for m in IS_CORRECTIONS if m != "none")


def _log_ratio(prox: torch.Tensor, behav: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """l = prox - behav on completion tokens, 0 on padding (whatever padding holds, even inf)."""
    zero = torch.zeros((), dtype=prox.dtype, device=prox.device)
    return torch.where(keep, prox.detach() - behav.detach().to(prox.dtype), zero)


def importance_weights(
    prox: torch.Tensor, behav: torch.Tensor, mask: torch.Tensor, mode: str, cap: float
) -> torch.Tensor:
    """[B, T] weights of `mode` (token_tis, seq_tis, decoupled; module docstring), detached, 0 on padding."""
    if mode not in CORRECTING:
        raise ValueError(f"importance weights are one of {', '.join(CORRECTING)}, got {mode!r}")
    if not cap > 1 or not math.isfinite(cap):
        raise ValueError(f"the importance-weight cap must be a finite number > 1, got {cap}")
    keep = mask.bool()
    log_ratio = _log_ratio(prox, behav, keep)
    log_cap = math.log(cap)
    if mode == "token_tis":
        weights = torch.exp(log_ratio.clamp(max=log_cap))
    elif mode == "seq_tis":
        weights = torch.exp(log_ratio.sum(1, keepdim=True).clamp(max=log_cap)).expand_as(log_ratio)
    else:
        weights = torch.where(log_ratio <= log_cap, torch.exp(log_ratio.clamp(max=log_cap)), 0.0)
    return torch.where(keep, weights, 0.0)


def mismatch_sums(
    prox: torch.Tensor, behav: torch.Tensor, mask: torch.Tensor, mode: str, cap: float
) -> dict[str, float]:
    """Partial sums of the mismatch metrics of one batch (float64, whatever the mode, `none` included).

    Over the completion tokens t (l_t = prox - behav) and the sequences i with at least one token (s_i = sum_t l_t):
    tokens, sequences; weight_sum = sum_t exp(l_t); k3_sum = sum_t (exp(l_t) - l_t - 1); abs_sum / abs_max of |l_t|;
    clipped / clip_units: the tokens with exp(l_t) > cap among all tokens, or for seq_tis the sequences with
    exp(s_i) > cap among all sequences; lse_w = log sum_i exp(s_i) and lse_w2 = log sum_i exp(2 s_i), for the
    effective sample size in log space (exact, no overflow)."""
    keep = mask.bool()
    log_ratio = _log_ratio(prox.double(), behav.double(), keep)
    tokens = log_ratio[keep]
    seqs = log_ratio.sum(1)[keep.any(1)]
    log_cap = math.log(cap)
    units = seqs if mode == "seq_tis" else tokens
    weights = torch.exp(tokens)
    none = -math.inf
    return {
        "tokens": float(tokens.numel()),
        "sequences": float(seqs.numel()),
        "weight_sum": float(weights.sum()),
        "k3_sum": float((weights - tokens - 1).sum()),
        "abs_sum": float(tokens.abs().sum()),
        "abs_max": float(tokens.abs().max()) if tokens.numel() else 0.0,
        "clipped": float((units > log_cap).sum()),
        "clip_units": float(units.numel()),
        "lse_w": float(torch.logsumexp(seqs, 0)) if seqs.numel() else none,
        "lse_w2": float(torch.logsumexp(2 * seqs, 0)) if seqs.numel() else none,
    }


def _log_add(values: list[float]) -> float:
    """log sum exp over python floats; -inf for none (an empty part)."""
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    top = max(finite)
    return top + math.log(sum(math.exp(v - top) for v in finite))


def merge_mismatch(parts: list[dict[str, float]]) -> dict[str, float]:
    """The `mismatch_sums` of the union of the parts' batches (sums, the max, log-sum-exps)."""
    out = {k: sum(p[k] for p in parts) for k in parts[0] if k not in ("abs_max", "lse_w", "lse_w2")}
    out["abs_max"] = max(p["abs_max"] for p in parts)
    out["lse_w"] = _log_add([p["lse_w"] for p in parts])
    out["lse_w2"] = _log_add([p["lse_w2"] for p in parts])
    return out


def mismatch_metrics(sums: dict[str, float]) -> dict[str, float]:
    """The step's mismatch metrics from merged sums (none without completion tokens):

    - mismatch/is_mean: mean over completion tokens of the untruncated weight exp(prox - behav);
    - mismatch/is_clip_frac: share of tokens (seq_tis: of sequences) whose weight exceeds the cap, i.e. that the
      correction truncates (decoupled: drops; none: that token_tis would truncate);
    - mismatch/ess: (sum_i w_i)^2 / (N sum_i w_i^2) with w_i = exp(sum_t (prox - behav)) the untruncated sequence
      weight of each of the N sequences: the share of the batch that behaviour samples are worth under the trainer's
      policy, in (0, 1], 1 when every sequence has the same weight (on-policy: all 1);
    - mismatch/kl: the k3 estimate of KL(behaviour || trainer) per token, mean over tokens of r - 1 - log r with
      r = exp(prox - behav): unbiased under behaviour samples (E_b[r] = 1) and never negative;
    - actor/logprob_mismatch_mean / _max: mean and max |prox - behav| over tokens.
    """
    tokens = sums["tokens"]
    if not tokens:
        return {}
    ess = math.exp(2 * sums["lse_w"] - sums["lse_w2"] - math.log(sums["sequences"]))
    return {
        "mismatch/is_mean": sums["weight_sum"] / tokens,
        "mismatch/is_clip_frac": sums["clipped"] / sums["clip_units"],
        "mismatch/ess": min(ess, 1.0),  # <= 1 by Cauchy-Schwarz; the min only removes rounding above it
        "mismatch/kl": sums["k3_sum"] / tokens,
        "actor/logprob_mismatch_mean": sums["abs_sum"] / tokens,
        "actor/logprob_mismatch_max": sums["abs_max"],
    }
