"""CPU threads of an actor, from its Ray CPU share.

Overlapping actors on a small machine (trainer, reference, rollout worker and judge on 2 cores) must not each
start one OpenMP thread per core: oversubscribed intra-op threads made the tiny models 6-10x slower (see
app/data/tiny_warmup.py). Ray sets OMP_NUM_THREADS from `num_cpus` only for actors it starts with that variable
unset; setting torch's thread count here makes the share hold however the actor was started.
"""

from __future__ import annotations

import os

import torch


def cpu_threads(num_cpus: float) -> int:
    """Intra-op threads for a CPU share: its whole CPUs, at least one (0.25 or 0.5 CPU: one thread)."""
    if num_cpus <= 0:
        raise ValueError(f"a CPU share must be > 0, got {num_cpus}")
    return max(1, int(num_cpus))


def use_cpu_share(num_cpus: float) -> int:
    """Set this process's torch intra-op threads (and OMP_NUM_THREADS for libraries that start later) from its
    CPU share; returns the thread count."""
    threads = cpu_threads(num_cpus)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads
