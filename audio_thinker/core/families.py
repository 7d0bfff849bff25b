"""What differs between the policy families (Qwen2-Audio, the Qwen2.5-Omni thinker, the Qwen3-Omni MoE thinker)
once a model is loaded, in one place: the checkpoint key layout, the transformers classes, where the language model
and the audio encoder sit and how each runs its audio encoder. The chat layout, the audio placeholders and the
family names of a folder are `core/chat.py`'s (no torch). Every other module asks in these two instead of branching
on the family name itself."""

from __future__ import annotations

import torch
import transformers
from transformers.masking_utils import create_bidirectional_mask

from audio_thinker.core.chat import MODEL_TYPES, QWEN3_OMNI_N_WINDOW, check_family, qwen3_omni_audio_tokens
from audio_thinker.core.fused_experts import is_fused_experts, split_experts

# In-memory transformers keys -> checkpoint keys. Qwen2-Audio checkpoints (the hub's and ours) use the layout
# vLLM reads; transformers 5.19 would save `language_model.model.model.*`, so we write the files ourselves.
_QWEN2_AUDIO_PREFIXES = (
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


















# Where each family keeps its language model's decoder layers and its audio encoder (in-memory names).
_LANGUAGE_MODEL = {"qwen2_audio": "model.language_model", "qwen2_5_omni": "model", "qwen3_omni": "model"}
_AUDIO_TOWER = {"qwen2_audio": "model.audio_tower", "qwen2_5_omni": "audio_tower", "qwen3_omni": "audio_tower"}


def language_model_prefix(family: str) -> str:
    """The module name of the language model (its decoder layers are `<prefix>.layers.N`)."""
    return _LANGUAGE_MODEL[check_family(family)]


def audio_tower_prefix(family: str) -> str:
    """The module name of the audio encoder."""
    return _AUDIO_TOWER[check_family(family)]


def checkpoint_key(family: str, key: str) -> str:
    """In-memory key -> checkpoint key, for the keys that map one to one (`checkpoint_items` handles all)."""
    if check_family(family) in ("qwen2_5_omni", "qwen3_omni"):
        if is_fused_experts(key):
            raise KeyError(f"{key!r} holds all experts of a layer: it is several checkpoint tensors (checkpoint_items)")
        return key
    for src, dst in _QWEN2_AUDIO_PREFIXES:
        if key.startswith(src):
            return dst + key[len(src) :]
    raise KeyError(f"unexpected Qwen2-Audio parameter {key!r}")


def model_key(family: str, key: str) -> str:
    """Checkpoint key -> in-memory transformers key (inverse of `checkpoint_key`)."""
    if check_family(family) in ("qwen2_5_omni", "qwen3_omni"):
        return key
    for src, dst in _QWEN2_AUDIO_PREFIXES:
        if key.startswith(dst):
            return src + key[len(dst) :]
    raise KeyError(f"unexpected Qwen2-Audio checkpoint key {key!r}")


def checkpoint_items(family: str, key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """In-memory (key, tensor) -> its checkpoint (key, tensor) pairs: one, or for Qwen3-Omni's fused experts
    one per expert and projection (views of `tensor`, core/fused_experts.py)."""
    if family == "qwen3_omni" and is_fused_experts(key):
        return split_experts(key, tensor)
    return [(checkpoint_key(family, key), tensor)]


def model_class(family: str, model_type: str | None = None):
    """The transformers class that loads a folder of this family (and `model_type`, for the full Omni)."""
    if check_family(family) == "qwen2_audio":
        return transformers.Qwen2AudioForConditionalGeneration
    if family == "qwen3_omni":  # a full folder too: the thinker class reads its `thinker.*` weights alone
        return transformers.Qwen3OmniMoeThinkerForConditionalGeneration
    if model_type == "qwen2_5_omni":
        return transformers.Qwen2_5OmniForConditionalGeneration
    return transformers.Qwen2_5OmniThinkerForConditionalGeneration


def policy_family(policy) -> str:
    """The family of a loaded policy model, from its config's `model_type`."""
    model_type = policy.config.model_type
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not a Qwen2-Audio, Qwen2.5-Omni or Qwen3-Omni model")
    return MODEL_TYPES[model_type]


def audio_embeddings(policy, input_features: torch.Tensor, feature_attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """Per clip, the embeddings its audio tokens get in the language model ([n_k, hidden]): the audio encoder
    (and Qwen2-Audio's projector) run once on the stacked clips `input_features` [C, mel, frames].

    The same computation as inside each family's forward (transformers 5.19), factored out so that a clip
    shared by G samples is encoded once (`merge_audio_embeddings` then places it in each sample's row).
    """
    dtype = next(policy.parameters()).dtype
    input_features = input_features.to(dtype)
    family = policy_family(policy)
    if family == "qwen2_5_omni":
        hidden = policy.get_audio_features(input_features, feature_attention_mask, return_dict=True).last_hidden_state
        _, lengths = policy.audio_tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
        return list(hidden.split(lengths.tolist()))
    if family == "qwen3_omni":  # the encoder takes the clips' real frames only, concatenated
        return _qwen3_omni_audio_embeddings(policy, input_features, feature_attention_mask)
    model = policy.model
    tower = model.audio_tower
    feat_lengths, lengths = tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
    num_clips, _, frames = input_features.shape
    max_len = (frames - 2) // 2 + 1
    valid = (torch.arange(max_len, device=feat_lengths.device)[None, :] < feat_lengths[:, None]).long()
    mask = create_bidirectional_mask(
        config=tower.config,
        inputs_embeds=torch.zeros(num_clips, max_len, 1, dtype=dtype, device=input_features.device),
        attention_mask=valid,
    )
    hidden = model.multi_modal_projector(tower(input_features, attention_mask=mask).last_hidden_state)
    return [hidden[k, :n] for k, n in enumerate(lengths.tolist())]


def _qwen3_omni_audio_embeddings(policy, features: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Qwen3-Omni's encoder pads every 100-frame chunk of a batch to the batch's longest chunk before its convs,
    and sizes its attention windows by it, so a clip shorter than 1 s encodes differently next to a longer clip
    than alone (transformers and vLLM alike). Every batch is encoded here as one holding a full chunk (what any
    batch with a clip of 1 s or more is): a batch of short clips gets a silent 100-frame clip, whose output is
    dropped. A clip's embeddings then do not depend on the micro-batch it is in."""
    frames = mask.sum(-1)
    full = 2 * QWEN3_OMNI_N_WINDOW
    short = bool((frames < full).all())
    if short:
        features = torch.cat([features, torch.zeros_like(features[:1])])
        mask = torch.cat([mask, (torch.arange(mask.shape[-1], device=mask.device) < full).to(mask.dtype)[None]])
    hidden = policy.get_audio_features(features, mask, return_dict=True).last_hidden_state
    clips = list(hidden.split([qwen3_omni_audio_tokens(int(n)) for n in mask.sum(-1)]))
    return clips[:-1] if short else clips


def merge_audio_embeddings(
    policy, input_ids: torch.Tensor, clips: list[torch.Tensor], clip_index: torch.Tensor
) -> torch.Tensor:
    """The input embeddings [B, L, hidden] of `input_ids` with row r's audio placeholders filled by clip
    `clip_index[r]` of `clips` (a clip used by several rows gets the sum of their gradients)."""
    embeds = policy.get_input_embeddings()(input_ids)
    placeholders = (input_ids == policy.config.audio_token_id)[..., None]
    audio = torch.cat([clips[c] for c in clip_index.tolist()]).to(embeds.dtype)
    if placeholders.sum() != audio.shape[0]:
        raise ValueError(f"{int(placeholders.sum())} audio placeholders for {audio.shape[0]} audio embeddings")
    return embeds.masked_scatter(placeholders, audio)


def forward_with_audio_embeddings(
    policy,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    embeds: torch.Tensor,
    row_feature_mask: torch.Tensor,
    **kwargs,
):
    """The policy's forward on embeddings that already hold the audio (`merge_audio_embeddings`).

    Every family takes the same call: Qwen2-Audio uses only the embeddings (positions from the attention
    mask); the Omni thinkers build their rope index from the ids and each row's feature mask, as with raw
    features (for an audio-only Qwen3-Omni prompt that index is the plain position). `kwargs` go to the
    forward as they are (e.g. `output_router_logits` for Qwen3-Omni's load-balancing loss).
    """
    return policy(
        input_ids=input_ids,
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        feature_attention_mask=row_feature_mask,
        use_cache=False,
        **kwargs,
    )
