"""The chat layout of the two policy families and how a folder's `config.json` names its family: what prompts,
evaluation input checks and the light commands need, without torch or transformers (`core/families.py` holds
the parts that touch a loaded model)."""

from __future__ import annotations

import json
from pathlib import Path

from audio_thinker.core.vocab import FAMILIES

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
SYSTEM_PROMPTS = {
    "qwen2_audio": "You are a helpful assistant.",
    "qwen2_5_omni": (
        "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory "
        "and visual inputs, as well as generating text and speech."
    ),
}
# config.json model_type -> family (the released Omni checkpoint holds thinker + talker; we use its thinker).
MODEL_TYPES = {"qwen2_audio": "qwen2_audio", "qwen2_5_omni": "qwen2_5_omni", "qwen2_5_omni_thinker": "qwen2_5_omni"}


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r} ({' or '.join(FAMILIES)})")
    return family


def detect_family(model: str | Path) -> str:
    """The family of a Hugging Face folder, from its config.json."""
    config = Path(model) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model} is not a Hugging Face model folder (no config.json)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8-sig")).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{config} is not a JSON object ({exc})") from None
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{config}: model_type {model_type!r} is neither Qwen2-Audio nor Qwen2.5-Omni")
    return MODEL_TYPES[model_type]


def render_chat(family: str, instruction: str, system: str | None = None) -> str:
    """One user turn holding one clip and the instruction, ready for the assistant's reply."""
    check_family(family)
    system = SYSTEM_PROMPTS[family] if system is None else system
    clip = f"{AUDIO_BOS}{AUDIO_TOKEN}{AUDIO_EOS}"
    user = f"Audio 1: {clip}\n{instruction}" if family == "qwen2_audio" else f"{clip}{instruction}"
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
