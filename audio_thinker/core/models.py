"""Loading policies (Qwen2-Audio, the Qwen2.5-Omni and Qwen3-Omni thinkers) and their tokenizer / feature extractor
from a folder.

One code path for the tiny local models and the real hub checkpoints on a cluster.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase, WhisperFeatureExtractor

from audio_thinker.core.devices import cpu_only
from audio_thinker.core.families import checkpoint_items, model_class

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_folder(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    return path


def load_policy(path: str | Path, family: str, dtype: str, device: str | torch.device = "cpu"):
    """The policy model in eval mode. A full Omni checkpoint yields its thinker: Qwen2.5-Omni's is loaded whole
    and the thinker kept; a full Qwen3-Omni folder gives the thinker class its `thinker_config`, and the class
    reads only the `thinker.*` weights (the talker and code2wav are never built)."""
    path = _check_folder(path)
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    cls = model_class(family, model_type)
    if model_type == "qwen3_omni_moe":
        thinker_config = AutoConfig.from_pretrained(path).thinker_config
        model = cls.from_pretrained(path, config=thinker_config, dtype=DTYPES[dtype])
    else:
        model = cls.from_pretrained(path, dtype=DTYPES[dtype])
    if model_type == "qwen2_5_omni":  # the released checkpoint: thinker + talker + token2wav
        model = model.thinker
    return model.to(device).eval()


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(_check_folder(path))
    tokenizer.padding_side = "left"
    return tokenizer


def load_feature_extractor(path: str | Path) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor.from_pretrained(_check_folder(path))


def checkpoint_state(model: torch.nn.Module, family: str) -> dict[str, torch.Tensor]:
    """The model's weights under checkpoint keys: what the export writes and what the engines load (Qwen3-Omni's
    fused experts as one tensor per expert, views of the parameters)."""
    return dict(item for k, v in model.state_dict().items() for item in checkpoint_items(family, k, v))


def save_checkpoint_weights(model: torch.nn.Module, family: str, folder: str | Path) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in checkpoint_state(model, family).items()}
    save_file(tensors, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})


def use_cuda() -> bool:
    """Whether this process computes on its CUDA device: never in a CPU-only run, else when torch sees one."""
    return not cpu_only() and torch.cuda.is_available()


def compute_device() -> torch.device:
    """The device this process's models go on (the current CUDA device, or the CPU)."""
    return torch.device("cuda") if use_cuda() else torch.device("cpu")


CPU_KV_SEQUENCES = 64  # full-length sequences a CPU engine's KV cache holds: more than a tiny step's 32 samples
MIN_CPU_KV_BYTES = 64 * 2**20


def cpu_kv_cache_bytes(model_path: str | Path, dtype: str, max_model_len: int | None) -> int | None:
    """The KV cache a vLLM engine on the CPU reserves (the rollout workers', the judge's): CPU_KV_SEQUENCES
    sequences of `max_model_len` tokens (None: the model's context), at least MIN_CPU_KV_BYTES. vLLM's own default
    is half the machine's memory (11 GiB on a 23 GiB box: half a minute to allocate, and no room for a second
    engine). None where VLLM_CPU_KVCACHE_SPACE (GiB) sets it: vLLM reads that itself."""
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None
    text = AutoConfig.from_pretrained(model_path).get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * (2 if dtype == "bfloat16" else 4)
    tokens = max_model_len or text.max_position_embeddings
    return max(MIN_CPU_KV_BYTES, per_token * tokens * CPU_KV_SEQUENCES)
