"""Moving the trainer's weights to the rollout workers after each optimizer step (docs/architecture.md).

Both paths use one bucket format: tensors (under checkpoint keys, the layout the engines load) packed into
flat uint8 buffers of about `sync_bucket_mb`, with a JSON list of (name, dtype, shape, offset). Bucketing is
the point: one transfer per parameter is the slow sync users of other RL stacks complain about.

- Object store (small models): `publish` puts each bucket into the Ray object store; a worker calls
  `receive_published(handle)`.
- Broadcast: trainer rank 0 and K receivers form a process group of their own (gloo on CPU, NCCL on GPU),
  built directly on a TCPStore rendezvous. It cannot be a `new_group` of the default group: the trainer's
  default group is the DeepSpeed group and each worker may have its own (vLLM's), so -- like OpenRLHF's and
  verl's weight-update groups -- it is a stand-alone group that never touches the default one. Per bucket the
  sender broadcasts a size pair, the JSON header, then the bytes; a final header says `last`.

No pickle crosses the broadcast group; the object-store path is Ray's own serialization of numpy buffers.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import ray
import torch
import torch.distributed as dist

from audio_thinker.core.weights import NamedTensors, named_items

ALIGN = 64  # byte alignment of tensors in a bucket, so every dtype view of the buffer is aligned


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if isinstance(dtype, torch.dtype):
        return dtype
    raise ValueError(f"weight sync: unknown dtype {name!r} in bucket header")


def pack_buckets(named: NamedTensors, bucket_bytes: int) -> Iterator[tuple[list[dict], torch.Tensor]]:
    """Group tensors into (header, flat uint8 buffer) of up to `bucket_bytes`; a bigger tensor gets its own bucket.

    The buffer lives on the device of the bucket's first tensor (GPU tensors stay on the GPU for NCCL).
    """
    pending: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_items(named):
        n = _aligned(_nbytes(tensor))
        if pending and size + n > bucket_bytes:
            yield _pack(pending, size)
            pending, size = [], 0
        pending.append((name, tensor))
        size += n
    if pending:
        yield _pack(pending, size)


def _pack(items: list[tuple[str, torch.Tensor]], size: int) -> tuple[list[dict], torch.Tensor]:
    flat = torch.empty(size, dtype=torch.uint8, device=items[0][1].device)
    header, offset = [], 0
    for name, tensor in items:
        n = _nbytes(tensor)
        flat[offset : offset + n].copy_(tensor.detach().contiguous().reshape(-1).view(torch.uint8))
        header.append({"name": name, "dtype": str(tensor.dtype), "shape": list(tensor.shape), "offset": offset})
        offset += _aligned(n)
    return header, flat


def unpack(header: list[dict], flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) views into `flat` for each entry of a bucket header."""
    for entry in header:
        dtype = _dtype(entry["dtype"])
        shape = entry["shape"]
        n = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        start = entry["offset"]
        if start + n > flat.numel():
            raise ValueError(f"weight sync: {entry['name']} runs past the end of its bucket ({flat.numel()} bytes)")
        yield entry["name"], flat[start : start + n].view(dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------------------
# Object-store path


@dataclass
class WeightsHandle:
    """What `publish` returns: object refs of the buckets (each a (header, uint8 array)) and totals."""

    refs: list = field(default_factory=list)
    num_tensors: int = 0
    num_bytes: int = 0
    version: int = 0


def publish(named: NamedTensors, bucket_bytes: int, version: int = 0) -> WeightsHandle:
    """Put the weights into the Ray object store, one object per bucket."""
    handle = WeightsHandle(version=version)
    for header, flat in pack_buckets(named, bucket_bytes):
        handle.refs.append(ray.put((header, flat.cpu().numpy())))
        handle.num_tensors += len(header)
        handle.num_bytes += flat.numel()
    return handle


def receive_published(handle: WeightsHandle, device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a published version, one bucket in memory at a time.

    Ray hands numpy buffers back read-only and zero-copy; each bucket is copied once so that the tensors
    are ordinary writable tensors the caller may keep or modify.
    """
    for ref in handle.refs:
        header, array = ray.get(ref)
        yield from unpack(header, torch.from_numpy(array.copy()).to(device))


# ---------------------------------------------------------------------------------------------------------
# Broadcast path


@dataclass
class SyncEndpoint:
    """Rendezvous of a broadcast group: rank 0 (the trainer) hosts a TCPStore at host:port."""

    host: str
    port: int
    world_size: int  # 1 sender + receivers
    backend: str  # "gloo" (CPU) or "nccl" (GPU)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _process_group(endpoint: SyncEndpoint, rank: int, timeout_s: float):
    """A stand-alone process group of this endpoint (never registered as, or mixed with, the default group)."""
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(
        endpoint.host, endpoint.port, endpoint.world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=True
    )
    store = dist.PrefixStore("audio_thinker_weight_sync/", store)
    if endpoint.backend == "gloo":
        return store, dist.ProcessGroupGloo(store, rank, endpoint.world_size, timeout)
    if endpoint.backend == "nccl":
        return store, dist.ProcessGroupNCCL(store, rank, endpoint.world_size)
    raise ValueError(f"weight sync backend {endpoint.backend!r} is not gloo or nccl")


class _Member:
    def __init__(self, endpoint: SyncEndpoint, rank: int, device: torch.device | str, timeout_s: float):
        self.endpoint = endpoint
        self.rank = rank
        self.device = torch.device(device)
        self._store, self._pg = _process_group(endpoint, rank, timeout_s)

    def _broadcast(self, tensor: torch.Tensor) -> None:
        self._pg.broadcast(tensor, 0).wait()

    def close(self) -> None:
        """Tear the group down (all members should close; a new endpoint is needed to sync again)."""
        if self._pg is not None:
            self._pg.shutdown()
            self._pg = self._store = None


class WeightSender(_Member):
    """Rank 0 of a broadcast group; its constructor returns once every receiver has joined."""

    def __init__(self, endpoint: SyncEndpoint, device: torch.device | str = "cpu", timeout_s: float = 600.0):
        super().__init__(endpoint, 0, device, timeout_s)

    def _send_header(self, header: dict, nbytes: int) -> None:
        data = json.dumps(header).encode()
        self._broadcast(torch.tensor([len(data), nbytes], dtype=torch.int64, device=self.device))
        self._broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device))

    def send(self, named: NamedTensors, bucket_bytes: int, version: int = 0) -> dict:
        """Broadcast all tensors in buckets, then an end marker; returns bytes, tensors, buckets and seconds."""
        start = time.perf_counter()
        tensors = nbytes = buckets = 0
        for header, flat in pack_buckets(named, bucket_bytes):
            self._send_header({"tensors": header, "last": False, "version": version}, flat.numel())
            self._broadcast(flat.to(self.device))
            tensors += len(header)
            nbytes += flat.numel()
            buckets += 1
        self._send_header({"tensors": [], "last": True, "version": version}, 0)
        return {"bytes": nbytes, "tensors": tensors, "buckets": buckets, "seconds": time.perf_counter() - start}


class WeightReceiver(_Member):
    """A rollout worker's end of the broadcast group (ranks 1..K); to be embedded in the worker.

    `receive()` yields (name, tensor) under checkpoint keys as the buckets arrive, one bucket held at a time:
    feed it straight to the engine's weight loader. Tensors are views of the bucket buffer and stay valid
    after the next bucket arrives (each bucket gets a new buffer).
    """

    def __init__(self, endpoint: SyncEndpoint, rank: int, device: torch.device | str = "cpu", timeout_s: float = 600.0):
        if not 1 <= rank < endpoint.world_size:
            raise ValueError(f"receiver rank {rank} is outside 1..{endpoint.world_size - 1}")
        super().__init__(endpoint, rank, device, timeout_s)
        self.version: int | None = None
        self.num_bytes = 0

    def receive(self) -> Iterator[tuple[str, torch.Tensor]]:
        self.num_bytes = 0
        while True:
            sizes = torch.empty(2, dtype=torch.int64, device=self.device)
            self._broadcast(sizes)
            header_len, nbytes = (int(v) for v in sizes.tolist())
            raw = torch.empty(header_len, dtype=torch.uint8, device=self.device)
            self._broadcast(raw)
            header = json.loads(bytes(raw.cpu().numpy()))
            if header["last"]:
                self.version = header["version"]
                return
            flat = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            self._broadcast(flat)
            self.num_bytes += nbytes
            yield from unpack(header["tensors"], flat)
