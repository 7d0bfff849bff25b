"""CPU threads of an actor, from its Ray CPU share.

Overlapping actors on a small machine (trainer, reference, rollout worker and judge on 2 cores) must not each
start one OpenMP thread per core: oversubscribed intra-op threads made the tiny models 6-10x slower (see
app/data/tiny_warmup.py). Ray sets OMP_NUM_THREADS from `num_cpus` only for actors it starts with that variable
unset; setting torch's thread count here makes the share hold however the actor was started.

`THREADS_ENV` overrides the share: a rehearsal (docs/placement.md) declares a GPU preset's CPU shares (4 per trainer
rank, ...) on a machine that has 2 cores, so there each actor runs one thread.
"""

from __future__ import annotations

import os

import torch

from audio_thinker.core.devices import THREADS_ENV



def cpu_threads(num_cpus: float) -> int:
    """Intra-op threads for a CPU share: its whole CPUs, at least one (0.25 or 0.5 CPU: one thread); THREADS_ENV
    when set."""
    if num_cpus <= 0:
        raise ValueError(f"a CPU share must be > 0, got {num_cpus}")
    fixed = os.environ.get(THREADS_ENV)
    if fixed is not None:
        if not fixed.isdigit() or int(fixed) < 1:
            raise ValueError(f"{THREADS_ENV}={fixed!r}: expected a whole number of threads >= 1")
        return int(fixed)
    return max(1, int(num_cpus))


def use_cpu_share(num_cpus: float) -> int:
    """Set this process's torch intra-op threads (and OMP_NUM_THREADS for libraries that start later) from its
    CPU share; returns the thread count."""
    threads = cpu_threads(num_cpus)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads
