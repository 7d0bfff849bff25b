"""Loading policies (Qwen2-Audio, Qwen2.5-Omni thinker) and their tokenizer / feature extractor from a folder.

One code path for the tiny local models and the real hub checkpoints on a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase, WhisperFeatureExtractor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_folder(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    return path


def load_policy(path: str | Path, family: str, dtype: str = "float32", device: str | torch.device = "cpu"):
    """The policy model in eval mode. A full Qwen2.5-Omni checkpoint yields its thinker (no talker)."""
    path = _check_folder(path)
    torch_dtype = DTYPES[dtype]
    if family == "qwen2_audio":
        from transformers import Qwen2AudioForConditionalGeneration

        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch_dtype)
    elif family == "qwen2_5_omni":
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type == "qwen2_5_omni":  # the released checkpoint: thinker + talker + token2wav
            from transformers import Qwen2_5OmniForConditionalGeneration

            model = Qwen2_5OmniForConditionalGeneration.from_pretrained(path, dtype=torch_dtype).thinker
        else:
            from transformers import Qwen2_5OmniThinkerForConditionalGeneration

            model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, dtype=torch_dtype)
    else:
        raise ValueError(f"unknown model family {family!r} (qwen2_audio or qwen2_5_omni)")
    return model.to(device).eval()


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(_check_folder(path))
    tokenizer.padding_side = "left"
    return tokenizer


def load_feature_extractor(path: str | Path) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor.from_pretrained(_check_folder(path))


# In-memory transformers keys -> checkpoint keys. Qwen2-Audio checkpoints (the hub's and ours) use the layout
# vLLM reads; transformers 5.19 would save `language_model.model.model.*`, so we write the files ourselves.
_QWEN2_AUDIO_PREFIXES = (
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


def checkpoint_key(family: str, key: str) -> str:
    if family == "qwen2_5_omni":
        return key
    for src, dst in _QWEN2_AUDIO_PREFIXES:
        if key.startswith(src):
            return dst + key[len(src) :]
    raise KeyError(f"unexpected Qwen2-Audio parameter {key!r}")


def model_key(family: str, key: str) -> str:
    """Checkpoint key -> in-memory transformers key (inverse of `checkpoint_key`)."""
    if family == "qwen2_5_omni":
        return key
    for src, dst in _QWEN2_AUDIO_PREFIXES:
        if key.startswith(dst):
            return src + key[len(dst) :]
    raise KeyError(f"unexpected Qwen2-Audio checkpoint key {key!r}")


def checkpoint_state(model: torch.nn.Module, family: str) -> dict[str, torch.Tensor]:
    """The model's weights under checkpoint keys: what the export writes and what the engines load."""
    return {checkpoint_key(family, k): v for k, v in model.state_dict().items()}


def save_checkpoint_weights(model: torch.nn.Module, family: str, folder: str | Path) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in checkpoint_state(model, family).items()}
    save_file(tensors, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})
