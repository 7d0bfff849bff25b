"""The shapes of the models a GPU run trains and serves, as data: what the planner sizes memory from when the
checkpoint is not on this machine (no weights can be downloaded), and what `bench/gpu_check.py` builds with random
weights. Each shape is the `config.json` of the released checkpoint, reduced to the keys that size the model, with
its source. `ModelShape` is what the planner needs of a model: parameter counts and the sizes of its layers.

Plain data and arithmetic (no torch, no transformers), so that `audio-thinker plan` answers at once; a folder on
this machine is measured by `core/model_meta.py`, which builds the model on the meta device with transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
    # ---- Qwen3-Omni: the mixture-of-experts thinker (docs/placement.md counts it by hand) ----
    "Qwen3-Omni-30B-A3B thinker": (
        "Qwen3OmniMoeThinkerConfig",
        dict(
            audio_config=dict(
                d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128,
                max_source_positions=1500, output_dim=2048, n_window=50, n_window_infer=800,
                downsample_hidden_size=480, conv_chunksize=500,
            ),
            vision_config=dict(
                depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, in_channels=3, patch_size=16,
                spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048, num_position_embeddings=2304,
                deepstack_visual_indexes=[8, 16, 24],
            ),
            text_config=dict(
                vocab_size=152064, hidden_size=2048, moe_intermediate_size=768, num_hidden_layers=48,
                num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
                decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=65536, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [24, 20, 20],
                                 "interleaved": True},
            ),
        ),
        "https://huggingface.co/Qwen/Qwen3-Omni-30B-A3B-Instruct/blob/main/config.json (thinker_config)",
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
FAMILY_SHAPES = {
    "qwen2_audio": "Qwen2-Audio-7B-Instruct",
    "qwen2_5_omni": "Qwen2.5-Omni-7B thinker",
    "qwen3_omni": "Qwen3-Omni-30B-A3B thinker",
}
JUDGE_SHAPE = "Qwen3-8B"
# Counted on the meta device from KNOWN_SHAPES: (all parameters, audio encoder, the largest single layer).
KNOWN_COUNTS = {
    "Qwen2-Audio-7B-Instruct": (8_397_094_912, 636_968_960, 639_107_072),
    "Qwen2.5-Omni-7B thinker": (8_931_813_888, 639_647_232, 544_997_376),
    "Qwen3-8B": (8_190_735_360, 0, 622_329_856),
    "Qwen3-Omni-30B-A3B thinker": (31_719_205_488, 647_927_168, 603_979_776),  # largest: one layer's 128 experts
}


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a transformer stack that activations and the KV cache scale with."""

    layers: int
    hidden: int
    intermediate: int  # the MLP width one token goes through (a mixture of experts: experts_per_token x expert's)
    heads: int
    kv_heads: int
    head_dim: int
    gated_mlp: bool  # SwiGLU (gate, up, down) rather than fc1 / fc2
    experts: int = 0  # experts per layer (0: a dense MLP)
    experts_per_token: int = 0
    expert_intermediate: int = 0


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
    language_params: tuple[int, int] = (0, 0)  # a mixture of experts: the language model's (all, run per token)


def _attrs(value: Any) -> Any:
    """A config as attributes: a transformers config as it is, a plain mapping (a KNOWN_SHAPES entry) wrapped."""
    return SimpleNamespace(**value) if isinstance(value, dict) else value


def shape_of(name: str, source: str, config: Any, counts: tuple[int, int, int]) -> ModelShape:
    """The planner's shape of a config (a transformers config or a KNOWN_SHAPES mapping) and its counted
    (parameters, audio encoder parameters, largest layer's parameters)."""
    config = _attrs(config)
    text = _attrs(getattr(config, "text_config", None) or config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    experts, per_token = getattr(text, "num_experts", 0) or 0, getattr(text, "num_experts_per_tok", 0) or 0
    mlp = per_token * text.moe_intermediate_size if experts else text.intermediate_size
    decoder = DecoderShape(
        text.num_hidden_layers, text.hidden_size, mlp, text.num_attention_heads, text.num_key_value_heads, head_dim,
        gated_mlp=True, experts=experts, experts_per_token=per_token,
        expert_intermediate=getattr(text, "moe_intermediate_size", 0) if experts else 0,
    )  # fmt: skip
    audio = getattr(config, "audio_config", None)
    encoder = None
    if audio is not None:
        audio = _attrs(audio)
        encoder = DecoderShape(
            audio.encoder_layers, audio.d_model, audio.encoder_ffn_dim, audio.encoder_attention_heads,
            audio.encoder_attention_heads, audio.d_model // audio.encoder_attention_heads, gated_mlp=False,
        )  # fmt: skip
    return ModelShape(
        name, source, *counts, vocab=text.vocab_size, decoder=decoder, audio_encoder=encoder,
        max_position_embeddings=text.max_position_embeddings,
        language_params=moe_language_params(text) if experts else (0, 0),
    )  # fmt: skip


def moe_language_params(text: Any) -> tuple[int, int]:
    """(all, per token) parameters of a Qwen3-MoE language model with every layer sparse, by hand: per layer q, k,
    v, o, the q/k norms, two RMSNorms, the router (E x h) and E experts of 3 x h x i, of which a token runs k;
    plus the embedding, the final norm and the LM head (untied). docs/placement.md writes it out."""
    h, i, layers = text.hidden_size, text.moe_intermediate_size, text.num_hidden_layers
    q, kv = text.num_attention_heads * text.head_dim, text.num_key_value_heads * text.head_dim
    shared = 2 * h * q + 2 * h * kv + 2 * text.head_dim + 2 * h + text.num_experts * h
    head = text.vocab_size * h * (1 if text.tie_word_embeddings else 2) + h
    expert = 3 * h * i
    every, active = shared + text.num_experts * expert, shared + text.num_experts_per_tok * expert
    return layers * every + head, layers * active + head


def known_shape(name: str) -> ModelShape:
    _, kwargs, source = KNOWN_SHAPES[name]
    return shape_of(name, source, kwargs, KNOWN_COUNTS[name])


def resolve_shape(path: str, fallback: str) -> ModelShape:
    """The folder's own shape when it is on this machine, else the known shape `fallback` (the preset's model)."""
    if (Path(path) / "config.json").is_file():
        # Only for a folder on this machine: transformers builds it on the meta device (seconds, not minutes).
        from audio_thinker.core.model_meta import folder_shape

        return folder_shape(path)
    return known_shape(fallback)
