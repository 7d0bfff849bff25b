"""Which device a process of the run computes on: the run's decision, never an accident of what torch finds.

Ray gives an actor that asks for GPUs their ids in CUDA_VISIBLE_DEVICES whether the GPUs exist or are only
declared. A rehearsal (`--rehearse`, docs/placement.md) runs a GPU preset's placement on a local Ray cluster that
declares GPUs this machine does not have, so "a GPU is visible" cannot be the test. The run decides once and the
decision travels to every process of the run in `DEVICES_ENV` (set in the driver, forwarded to the actors by
`app/train/launch.connect_ray`). Every device choice of the project asks `use_cuda()` (`core/models.py`, with
torch; this module stays torch-free for the light commands): the trainer's torch device
and DeepSpeed backend, the weight broadcast's backend (NCCL or gloo), the reference's and the transformers
engines' device, their default dtype; the vLLM adapters refuse a GPU build of vLLM in a CPU-only run.
"""

from __future__ import annotations

import os

DEVICES_ENV = "AUDIO_THINKER_DEVICES"  # "cpu": every process computes on the CPU; unset or "auto": CUDA when seen
DEVICE_CHOICES = ("auto", "cpu")
THREADS_ENV = "AUDIO_THINKER_CPU_THREADS"  # intra-op threads of every actor, whatever its CPU share (a rehearsal)


def cpu_only() -> bool:
    """Whether the run decided that every process computes on the CPU (a rehearsal), whatever Ray declares."""
    value = os.environ.get(DEVICES_ENV, "auto")
    if value not in DEVICE_CHOICES:
        raise ValueError(f"{DEVICES_ENV}={value!r}: expected one of {', '.join(DEVICE_CHOICES)}")
    return value == "cpu"


def cpu_only_env() -> dict[str, str]:
    """The environment of a CPU-only run's processes: our decision, and DeepSpeed's accelerator set to match it
    (DeepSpeed picks its accelerator itself, from what it can import and see)."""
    return {DEVICES_ENV: "cpu", "DS_ACCELERATOR": "cpu"}
