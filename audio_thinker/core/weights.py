"""Named weights as they travel between trainer, reference and rollout engines, and the checksum both sides of
a weight sync compute, so a worker can prove it loaded what the trainer sent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch

# Weights under checkpoint keys: a state dict, or (name, tensor) pairs streamed one bucket at a time.
NamedTensors = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def named_items(named: NamedTensors) -> Iterable[tuple[str, torch.Tensor]]:
    return named.items() if isinstance(named, Mapping) else named


def state_checksum(named_tensors: NamedTensors) -> str:
    """sha256 over sorted (name, dtype, shape, bytes); independent of order, device and contiguity."""
    items = named_items(named_tensors)
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)  # 1-D: 0-dim tensors cannot be viewed as bytes
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
