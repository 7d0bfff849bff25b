"""Weight-sync throughput (not a test): object store and broadcast vs a plain memory copy of the same bytes.

A sender actor holds a synthetic fp32 state (transformer-like tensor sizes) and syncs it to K receiver actors
through both paths of rollout/weight_sync.py; each path is timed from the first byte packed to the last
receiver done, and its checksums are compared to the sender's (outside the timing).

    python bench/weight_sync.py [--mb 512] [--bucket-mb 256] [--receivers 2] [--repeats 3]

(from `make bench`, or with the repository on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import os
import time

import ray
import torch

from audio_thinker.core.weights import state_checksum
from rollout.weight_sync import (
    SyncEndpoint,
    WeightReceiver,
    WeightSender,
    free_port,
    publish,
    receive_published,
)


def synthetic_state(total_mb: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 tensors of 4 MiB and 1 MiB in turn (weights and smaller projections) adding up to `total_mb`."""
    gen = torch.Generator().manual_seed(seed)
    state, size, i = {}, 0, 0
    while size < total_mb << 20:
        rows = 1024 if i % 2 == 0 else 256
        state[f"layers.{i}.weight"] = torch.randn(rows, 1024, generator=gen)
        size += rows * 1024 * 4
        i += 1
    return state


@ray.remote
class Sender:
    def __init__(self, total_mb: int):
        self.state = synthetic_state(total_mb)
        self.sender = None

    def checksum(self) -> str:
        return state_checksum(self.state)

    def publish(self, bucket_bytes: int):
        return publish(self.state.items(), bucket_bytes)

    def open(self, endpoint) -> None:
        self.sender = WeightSender(endpoint)

    def send(self, bucket_bytes: int) -> dict:
        return self.sender.send(self.state.items(), bucket_bytes)

    def close(self) -> None:
        self.sender.close()


@ray.remote
class Receiver:
    def join(self, endpoint, rank: int) -> None:
        self.receiver = WeightReceiver(endpoint, rank)

    def receive(self) -> float:
        self.got = dict(self.receiver.receive())
        return time.perf_counter()

    def fetch(self, handle) -> float:
        self.got = dict(receive_published(handle))
        return time.perf_counter()

    def checksum(self) -> str:
        return state_checksum(self.got)

    def close(self) -> None:
        self.receiver.close()


def memcpy_seconds(nbytes: int, repeats: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8).random_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=512, help="size of the synthetic state in MiB")
    parser.add_argument("--bucket-mb", type=int, default=256, help="sync bucket size (trainer.sync_bucket_mb)")
    parser.add_argument("--receivers", type=int, default=2, help="receiver actors (rollout workers)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the best is reported")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only local cluster
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    bucket = args.bucket_mb << 20
    sender = Sender.options(num_cpus=0.1).remote(args.mb)
    receivers = [Receiver.options(num_cpus=0.1).remote() for _ in range(args.receivers)]
    expected = ray.get(sender.checksum.remote())
    nbytes = sum(t.numel() * t.element_size() for t in synthetic_state(args.mb).values())

    rows = [("memory copy (1 process)", memcpy_seconds(nbytes, args.repeats), "-")]

    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        handle = sender.publish.remote(bucket)
        ends = ray.get([r.fetch.remote(handle) for r in receivers])
        best = min(best, max(ends) - start)
        ok = all(c == expected for c in ray.get([r.checksum.remote() for r in receivers]))
        del handle
    rows.append((f"object store -> {args.receivers} receivers", best, "ok" if ok else "MISMATCH"))

    endpoint = SyncEndpoint("127.0.0.1", free_port(), args.receivers + 1, "gloo")
    ray.get([sender.open.remote(endpoint)] + [r.join.remote(endpoint, i + 1) for i, r in enumerate(receivers)])
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        refs = [r.receive.remote() for r in receivers]
        ray.get(sender.send.remote(bucket))
        best = min(best, max(ray.get(refs)) - start)
        ok = all(c == expected for c in ray.get([r.checksum.remote() for r in receivers]))
    rows.append((f"gloo broadcast -> {args.receivers} receivers", best, "ok" if ok else "MISMATCH"))
    ray.get([sender.close.remote()] + [r.close.remote() for r in receivers])

    print(f"\nweight sync of {nbytes / 2**20:.0f} MiB ({args.bucket_mb} MiB buckets), best of {args.repeats}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"| {'path':<34} | {'seconds':>8} | {'GB/s':>7} | {'vs memcpy':>9} | checksums |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 9}|{'-' * 11}|-----------|")
    for name, seconds, check in rows:
        print(f"| {name:<34} | {seconds:>8.3f} | {nbytes / seconds / 1e9:>7.2f} | "
              f"{rows[0][1] / seconds:>8.1%} | {check:>9} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
