"""One step's metrics from its parts: the trainer ranks' of one optimizer update, then the updates' of one
rollout batch (`actors/trainer_group.py` merges them; the ranks compute theirs in `trainer/engine.py`)."""

from __future__ import annotations

import numpy as np

from trainer.grpo import merge_stats
from trainer.off_policy import merge_mismatch, mismatch_metrics


def merge_rank_metrics(parts: list[dict]) -> dict:
    """One update's metrics from the ranks' `train_step` results (sums and exact merges, verl-style names), plus,
    when the batch had engine log-probs, the merged mismatch sums under "mismatch" for `merge_update_metrics`, which
    turns them into the `mismatch/*` metrics (call it on every update list, one update included)."""
    stats = merge_stats([p["stats"] for p in parts])
    out = {
        "actor/loss": sum(p["loss"] for p in parts),
        "actor/clip_frac": stats["clip_frac"],
        "actor/kl": stats["kl"],
        "actor/ratio_mean": stats["ratio_mean"],
        "actor/ratio_min": stats["ratio_min"],
        "actor/ratio_max": stats["ratio_max"],
        "actor/grad_norm": parts[0]["grad_norm"],
        "actor/lr": parts[0]["lr"],
        "actor/tokens": stats["tokens"],
        "actor/sequences": stats["sequences"],
        "actor/step": parts[0]["step"],
    }
    mismatch = [p["mismatch"] for p in parts if p["mismatch"] is not None]
    if mismatch:
        out["mismatch"] = merge_mismatch(mismatch)
    router = [p["router_aux"] for p in parts if p.get("router_aux") is not None]
    if router:  # the load-balancing loss, mean over the update's micro-batches (trainer.router_aux_loss_coef > 0)
        out["actor/router_aux_loss"] = sum(s for s, _ in router) / sum(n for _, n in router)
    return out


def merge_update_metrics(updates: list[dict], epochs: int = 1) -> dict[str, float]:
    """The metrics of a rollout batch's optimizer updates (`merge_rank_metrics` of each): one update's as they
    are; over several, means of loss, kl, clip share, ratio mean and grad norm, the extreme ratios, the last lr and
    step, and the tokens and sequences of the batch (one epoch's). The mismatch metrics (`trainer/off_policy.py`)
    are those of all the updates' tokens together: every epoch covers the batch once against the same old
    log-probs, so they are the batch's."""
    sums = [u["mismatch"] for u in updates if "mismatch" in u]
    updates = [{k: v for k, v in u.items() if k != "mismatch"} for u in updates]
    if len(updates) == 1:
        out = dict(updates[0])
    else:
        out = {k: float(np.mean([u[k] for u in updates])) for k in updates[0]}
        out["actor/ratio_min"] = min(u["actor/ratio_min"] for u in updates)
        out["actor/ratio_max"] = max(u["actor/ratio_max"] for u in updates)
        for key in ("actor/lr", "actor/step"):
            out[key] = updates[-1][key]
        for key in ("actor/tokens", "actor/sequences"):
            out[key] = sum(u[key] for u in updates) / epochs
        out["actor/updates"] = float(len(updates))
    if sums:
        out.update(mismatch_metrics(merge_mismatch(sums)))
    return out
