"""Loading policies (Qwen2-Audio, Qwen2.5-Omni thinker) and their tokenizer / feature extractor from a folder.

One code path for the tiny local models and the real hub checkpoints on a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase, WhisperFeatureExtractor

from audio_thinker.core.families import checkpoint_key, model_class

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_folder(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    return path


def load_policy(path: str | Path, family: str, dtype: str, device: str | torch.device = "cpu"):
    """The policy model in eval mode. A full Qwen2.5-Omni checkpoint yields its thinker (no talker)."""
    path = _check_folder(path)
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    model = model_class(family, model_type).from_pretrained(path, dtype=DTYPES[dtype])
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
    """The model's weights under checkpoint keys: what the export writes and what the engines load."""
    return {checkpoint_key(family, k): v for k, v in model.state_dict().items()}


def save_checkpoint_weights(model: torch.nn.Module, family: str, folder: str | Path) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in checkpoint_state(model, family).items()}
    save_file(tensors, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})
