"""The shapes of the models a GPU run trains and serves, as data: what the planner sizes memory from when the
checkpoint is not on this machine (no weights can be downloaded), and what `bench/gpu_check.py` builds with random
weights. Each shape is the `config.json` of the released checkpoint, reduced to the keys that size the model, with
its source. `ModelShape` is what the planner needs of a model: parameter counts and the sizes of its layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers.initialization import no_init_weights

from audio_thinker.core.families import MODEL_TYPES, model_class

_WHISPER_LARGE_V3_ENCODER = dict(
    d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128,
    max_source_positions=1500,
)  # fmt: skip

# name -> (transformers config class, its arguments, source). Parameter counts below were counted with transformers
# on the meta device from exactly these arguments (tests/unit/test_plan.py counts one again).
KNOWN_SHAPES: dict[str, tuple[str, dict, str]] = {
    "Qwen2-Audio-7B-Instruct": (
        "Qwen2AudioConfig",
        dict(
            audio_config=_WHISPER_LARGE_V3_ENCODER,
            text_config=dict(
                model_type="qwen2", vocab_size=156032, hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192,
                tie_word_embeddings=False,
            ),
        ),
        "https://huggingface.co/Qwen/Qwen2-Audio-7B-Instruct/blob/main/config.json",
    ),
    "Qwen2.5-Omni-7B thinker": (
        "Qwen2_5OmniThinkerConfig",
        dict(
            audio_config={**_WHISPER_LARGE_V3_ENCODER, "output_dim": 3584, "n_window": 100},
            vision_config=dict(
                depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                fullatt_block_indexes=[7, 15, 23, 31],
            ),
            text_config=dict(
                vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
            ),
        ),
        "https://huggingface.co/Qwen/Qwen2.5-Omni-7B/blob/main/config.json (thinker_config)",
    ),
    "Qwen3-8B": (
        "Qwen3Config",
        dict(
            vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
            tie_word_embeddings=False,
        ),
        "https://huggingface.co/Qwen/Qwen3-8B-Base/blob/main/config.json",
    ),
}  # fmt: skip
FAMILY_SHAPES = {"qwen2_audio": "Qwen2-Audio-7B-Instruct", "qwen2_5_omni": "Qwen2.5-Omni-7B thinker"}
JUDGE_SHAPE = "Qwen3-8B"
# Counted on the meta device from KNOWN_SHAPES: (all parameters, audio encoder, the largest single layer).
KNOWN_COUNTS = {
    "Qwen2-Audio-7B-Instruct": (8_397_094_912, 636_968_960, 639_107_072),
    "Qwen2.5-Omni-7B thinker": (8_931_813_888, 639_647_232, 544_997_376),
    "Qwen3-8B": (8_190_735_360, 0, 622_329_856),
}


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a transformer stack that activations and the KV cache scale with."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    gated_mlp: bool  # SwiGLU (gate, up, down) rather than fc1 / fc2


@dataclass(frozen=True)
class ModelShape:
    name: str
    source: str
    params: int
    audio_encoder_params: int
    largest_layer_params: int  # the largest module's own parameters: what ZeRO-3 gathers at once
    vocab: int
    decoder: DecoderShape
    audio_encoder: DecoderShape | None
    max_position_embeddings: int


def known_config(name: str) -> transformers.PretrainedConfig:
    """The transformers config of a known shape (to build the model with random weights)."""
    cls_name, kwargs, _ = KNOWN_SHAPES[name]
    return getattr(transformers, cls_name)(**kwargs)


def count_params(model: torch.nn.Module) -> tuple[int, int, int]:
    """(all parameters, audio encoder parameters, the largest module's own parameters)."""
    total = sum(p.numel() for p in model.parameters())
    towers = [m for name, m in model.named_modules() if name.split(".")[-1] == "audio_tower"]
    audio_params = sum(p.numel() for p in towers[0].parameters()) if towers else 0
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, audio_params, largest


def _text(config: transformers.PretrainedConfig) -> transformers.PretrainedConfig:
    return getattr(config, "text_config", None) or config


def _shape(name: str, source: str, config: transformers.PretrainedConfig, counts: tuple[int, int, int]):
    text = _text(config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    decoder = DecoderShape(
        text.num_hidden_layers, text.hidden_size, text.intermediate_size, text.num_attention_heads,
        text.num_key_value_heads, head_dim, gated_mlp=True,
    )  # fmt: skip
    audio = getattr(config, "audio_config", None)
    encoder = None
    if audio is not None:
        encoder = DecoderShape(
            audio.encoder_layers, audio.d_model, audio.encoder_ffn_dim, audio.encoder_attention_heads,
            audio.encoder_attention_heads, audio.d_model // audio.encoder_attention_heads, gated_mlp=False,
        )  # fmt: skip
    return ModelShape(
        name, source, *counts, vocab=text.vocab_size, decoder=decoder, audio_encoder=encoder,
        max_position_embeddings=text.max_position_embeddings,
    )  # fmt: skip


def known_shape(name: str) -> ModelShape:
    _, _, source = KNOWN_SHAPES[name]
    return _shape(name, source, known_config(name), KNOWN_COUNTS[name])


def folder_shape(path: str | Path) -> ModelShape:
    """The shape of a Hugging Face folder: its config.json, parameters counted on the meta device (no weights read)."""
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    model_type = raw.get("model_type")
    if model_type in MODEL_TYPES:
        family = MODEL_TYPES[model_type]
        config = transformers.AutoConfig.from_pretrained(path)
        if model_type == "qwen2_5_omni":
            config = config.thinker_config  # we train the thinker
        cls = model_class(family)
    else:
        config = transformers.AutoConfig.from_pretrained(path)
        cls = transformers.AutoModelForCausalLM
    with torch.device("meta"), no_init_weights():  # shapes only: no memory, no initialisation
        model = cls.from_config(config) if cls is transformers.AutoModelForCausalLM else cls(config)
    return _shape(path.name, str(path / "config.json"), config, count_params(model))


def resolve_shape(path: str, fallback: str) -> ModelShape:
    """The folder's own shape when it is on this machine, else the known shape `fallback` (the preset's model)."""
    if (Path(path) / "config.json").is_file():
        return folder_shape(path)
    return known_shape(fallback)
