"""The checksum both sides of a weight sync compute, so a worker can prove it loaded what the trainer sent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch


def state_checksum(named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over sorted (name, dtype, shape, bytes); independent of order, device and contiguity."""
    items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)  # 1-D: 0-dim tensors cannot be viewed as bytes
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
