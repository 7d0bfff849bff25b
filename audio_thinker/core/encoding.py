"""The exact token ids and features the models see for a rendered chat prompt with one clip.

The processors of every family replace one audio placeholder by n copies, where n follows from the number of
mel frames of the clip and the family's encoder (`families.audio_token_count`). `PromptEncoder` does that
expansion itself (the Omni processor classes cannot be built without torchvision), so the rollout engines and
the trainer share one definition of the prompt: rendered text, expanded token ids, and Whisper features.

Features: Qwen2-Audio and Qwen2.5-Omni see the clip padded to 30 s (their processors' `padding="max_length"`);
Qwen3-Omni's processor (and vLLM's, which first pads the waveform to whole 10 ms hops) computes them on the clip
alone (`padding=True`, no truncation), and the model reads only the masked-in frames. Both are stored at least
3000 frames wide, zero-padded with mask 0, so prompts stack (`stack_features`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from audio_thinker.core.audio import SAMPLE_RATE
from audio_thinker.core.chat import (
    AUDIO_TOKEN,
    QWEN3_OMNI_CLIP,
    audio_token_count,
    prompt_audio_token,
    whisper_audio_tokens,
)

WINDOW_FRAMES = 3000  # 30 s of 10 ms mel frames: the Whisper window, and the width features are padded to


def num_audio_tokens(num_frames: int) -> int:
    """Audio tokens for a clip of `num_frames` mel frames under the Whisper encoders (Qwen2-Audio, Qwen2.5-Omni)."""
    return whisper_audio_tokens(num_frames)


@dataclass
class EncodedPrompt:
    input_ids: list[int]  # with the audio placeholder expanded to n audio tokens
    input_features: np.ndarray  # [num_mel_bins, >= 3000] float32
    feature_attention_mask: np.ndarray  # [>= 3000] int64, 1 for real frames
    audio_token: str = AUDIO_TOKEN  # the placeholder its audio tokens are copies of

    @property
    def num_audio_tokens(self) -> int:
        return audio_token_count(self.audio_token, int(self.feature_attention_mask.sum()))


def stack_features(prompts: Sequence[EncodedPrompt]) -> tuple[np.ndarray, np.ndarray]:
    """The prompts' features [C, mel, W] and masks [C, W], zero-padded to the widest (mask 0 where padded)."""
    width = max(p.input_features.shape[-1] for p in prompts)
    features = np.zeros((len(prompts), prompts[0].input_features.shape[0], width), dtype=np.float32)
    masks = np.zeros((len(prompts), width), dtype=np.int64)
    for k, p in enumerate(prompts):
        features[k, :, : p.input_features.shape[-1]] = p.input_features
        masks[k, : p.feature_attention_mask.shape[-1]] = p.feature_attention_mask
    return features, masks


class PromptEncoder:
    """Rendered prompt + 16 kHz audio -> the token ids and features both engines and the trainer use."""

    def __init__(self, tokenizer, feature_extractor):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor

    def features(self, audio: np.ndarray, whole_clip: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(features [mel, >= 3000], mask): the 30 s window, or with `whole_clip` (Qwen3-Omni) the clip alone,
        padded with zeros to whole hops first, as vLLM's Qwen3-Omni processor does."""
        audio = np.asarray(audio, dtype=np.float32)
        if not whole_clip:
            out = self.feature_extractor(
                audio, sampling_rate=SAMPLE_RATE, return_attention_mask=True, padding="max_length", return_tensors="np"
            )
            return out["input_features"][0].astype(np.float32), out["attention_mask"][0].astype(np.int64)
        hop = self.feature_extractor.hop_length
        audio = np.pad(audio, (0, -len(audio) % hop))
        out = self.feature_extractor(
            audio, sampling_rate=SAMPLE_RATE, return_attention_mask=True, padding=True, truncation=False,
            return_tensors="np",
        )  # fmt: skip
        features, mask = out["input_features"][0].astype(np.float32), out["attention_mask"][0].astype(np.int64)
        width = max(WINDOW_FRAMES, features.shape[-1])
        padded = np.zeros((features.shape[0], width), dtype=np.float32)
        padded[:, : features.shape[-1]] = features
        return padded, np.pad(mask, (0, width - len(mask)))

    def encode(self, prompt: str, audio: np.ndarray) -> EncodedPrompt:
        token = prompt_audio_token(prompt)
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        features, mask = self.features(audio, whole_clip=token == QWEN3_OMNI_CLIP[1])
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        i = ids.index(token_id)
        n = audio_token_count(token, int(mask.sum()))
        return EncodedPrompt(ids[:i] + [token_id] * n + ids[i + 1 :], features, mask, token)
