"""Mixture-of-experts weights in two layouts: transformers 5.19 keeps a layer's experts fused in two 3-D
parameters, the released checkpoints (and vLLM's loader) keep one matrix per expert.

In memory (`Qwen3OmniMoeThinkerTextExperts`): `<p>.gate_up_proj` [E, 2I, H] (each expert's gate rows, then its
up rows) and `<p>.down_proj` [E, H, I]. In the checkpoint: `<p>.<e>.gate_proj.weight` [I, H],
`<p>.<e>.up_proj.weight` [I, H], `<p>.<e>.down_proj.weight` [H, I] for e in 0..E-1 (transformers' own
conversion mapping for `qwen3_omni_moe`, which `save_pretrained` reverts to on save). `split_experts` returns
views, so copying into them writes the fused parameter (the transformers engine's weight load relies on it).
"""

from __future__ import annotations

import re

import torch

_FUSED = re.compile(r"(?P<prefix>.+\.mlp\.experts)\.(?P<name>gate_up_proj|down_proj)")
_SPLIT = re.compile(r"(?P<prefix>.+\.mlp\.experts)\.(?P<expert>\d+)\.(?P<name>gate_proj|up_proj|down_proj)\.weight")


def is_fused_experts(key: str) -> bool:
    return _FUSED.fullmatch(key) is not None


def split_experts(key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One fused expert parameter -> its per-expert checkpoint tensors (views of `tensor`), experts in order."""
    match = _FUSED.fullmatch(key)
    if match is None:
        raise KeyError(f"{key!r} is not a fused expert parameter (<...>.mlp.experts.gate_up_proj / down_proj)")
    prefix = match["prefix"]
    if match["name"] == "down_proj":
        return [(f"{prefix}.{e}.down_proj.weight", tensor[e]) for e in range(tensor.shape[0])]
    gate, up = tensor.chunk(2, dim=1)
    out = []
    for e in range(tensor.shape[0]):
        out += [(f"{prefix}.{e}.gate_proj.weight", gate[e]), (f"{prefix}.{e}.up_proj.weight", up[e])]
    return out


def fuse_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors -> in-memory ones: per-expert matrices stacked back into the fused parameters, every
    other key as it is (the inverse of `split_experts` over a whole state)."""
    out, parts = {}, {}
    for key, tensor in state.items():
        match = _SPLIT.fullmatch(key)
        if match is None:
            out[key] = tensor
            continue
        fused = "down_proj" if match["name"] == "down_proj" else "gate_up_proj"
        parts.setdefault((match["prefix"], fused), {}).setdefault(int(match["expert"]), {})[match["name"]] = tensor
    for (prefix, fused), experts in parts.items():
        if sorted(experts) != list(range(len(experts))):
            raise KeyError(f"{prefix}: experts {sorted(experts)} are not 0..{len(experts) - 1}")
        if fused == "down_proj":
            rows = [experts[e]["down_proj"] for e in range(len(experts))]
        else:
            rows = [torch.cat([experts[e]["gate_proj"], experts[e]["up_proj"]]) for e in range(len(experts))]
        out[f"{prefix}.{fused}"] = torch.stack(rows)
    return out
