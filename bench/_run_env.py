"""Imported first by the benchmarks that start a tiny training run: the repository on sys.path and the
environment `make` gives a run (vLLM's CPU cache, the JIT build folder, loopback Ray, no progress bars), set
before vLLM, DeepSpeed or Ray are imported. Not a benchmark (`make bench` skips files starting with `_`)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "vllm"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only local cluster
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("AUDIO_THINKER_NO_PROGRESS", "1")
