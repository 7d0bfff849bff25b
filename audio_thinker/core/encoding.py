"""The exact token ids and features the models see for a rendered chat prompt with one clip.

The processors of both families replace one `<|AUDIO|>` placeholder by n copies, where n follows from the
number of mel frames of the clip. `PromptEncoder` does that expansion itself (Qwen2.5-Omni's processor class
cannot be built without torchvision), so the rollout engines and the trainer share one definition of the
prompt: rendered text, expanded token ids, and Whisper features padded to 30 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audio_thinker.core.audio import SAMPLE_RATE
from audio_thinker.core.chat import AUDIO_TOKEN


def num_audio_tokens(num_frames: int) -> int:
    """Audio tokens for a clip of `num_frames` mel frames (two stride-2 reductions in the Whisper encoder)."""
    return (((num_frames - 1) // 2 + 1) - 2) // 2 + 1


@dataclass
class EncodedPrompt:
    input_ids: list[int]  # with the audio placeholder expanded to n audio tokens
    input_features: np.ndarray  # [num_mel_bins, 3000] float32
    feature_attention_mask: np.ndarray  # [3000] int64, 1 for real frames

    @property
    def num_audio_tokens(self) -> int:
        return num_audio_tokens(int(self.feature_attention_mask.sum()))


class PromptEncoder:
    """Rendered prompt + 16 kHz audio -> the token ids and features both engines and the trainer use."""

    def __init__(self, tokenizer, feature_extractor):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)

    def features(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.feature_extractor(
            np.asarray(audio, dtype=np.float32),
            sampling_rate=SAMPLE_RATE,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="np",
        )
        return out["input_features"][0].astype(np.float32), out["attention_mask"][0].astype(np.int64)

    def encode(self, prompt: str, audio: np.ndarray) -> EncodedPrompt:
        if prompt.count(AUDIO_TOKEN) != 1:
            raise ValueError(
                f"prompt must hold exactly one {AUDIO_TOKEN} placeholder, found {prompt.count(AUDIO_TOKEN)}"
            )
        features, mask = self.features(audio)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        i = ids.index(self.audio_token_id)
        n = num_audio_tokens(int(mask.sum()))
        return EncodedPrompt(ids[:i] + [self.audio_token_id] * n + ids[i + 1 :], features, mask)
