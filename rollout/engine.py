"""The one interface both rollout engines (vLLM, transformers) implement, and what goes in and out of it.

A request is a rendered chat prompt (one audio placeholder: `<|AUDIO|>`, or Qwen3-Omni's `<|audio_pad|>`) plus
its 16 kHz mono clip; the engine returns `n` samples per request, each with the exact prompt token ids the model
saw (audio placeholder expanded), so the trainer can rebuild what was generated. Engine log-probs are those of the
raw model distribution (before temperature and top-p), i.e. the policy's own log-probs.

Weights arrive as (checkpoint key, tensor) pairs in the layout of the model folder's `model.safetensors`
(see `audio_thinker.core.models.checkpoint_key`) with an integer version (the optimizer step). The base class
checks the message against the engine's parameter names and shapes before any tensor is loaded, times the
load and reports the checksum the trainer computes on its side.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from audio_thinker.core.audio import SAMPLE_RATE
from audio_thinker.core.chat import prompt_audio_token
from audio_thinker.core.weights import NamedTensors, named_items, state_checksum

FinishReason = Literal["stop", "length"]
# Placeholders that the models' forward passes expand into audio/vision features. A sampled one would turn
# the completion into a malformed multimodal prompt when the trainer feeds it back: engines never sample them.
MULTIMODAL_TOKENS = (
    "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
    "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>",
    # Qwen3-Omni's names for the same placeholders
    "<|audio_pad|>", "<|audio_start|>", "<|audio_end|>",
    "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
)


@dataclass(frozen=True)
class GenerationRequest:
    """One question: its rendered chat prompt and its clip (float32 mono, 16 kHz)."""

    prompt: str
    audio: np.ndarray
    seed: int | None = None  # same seed, same samples (vLLM: per request; transformers: per batch)

    def __post_init__(self) -> None:
        try:
            prompt_audio_token(self.prompt)
        except ValueError as exc:
            raise ValueError(f"request {exc}") from None
        audio = np.asarray(self.audio)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(
                f"request audio must be a non-empty mono 1-D array at {SAMPLE_RATE} Hz, got {audio.shape}"
            )


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample: `n` completions per request (the GRPO group size)."""

    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    logprobs: bool = True  # return the log-prob of every sampled token
    greedy: bool = False  # argmax decoding (evaluation): one sample per request, temperature and top_p unused

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"sampling n must be >= 1, got {self.n}")
        if self.greedy and self.n != 1:
            raise ValueError(f"greedy decoding gives one sample per request: n must be 1, got {self.n}")
        if self.temperature <= 0:
            raise ValueError(f"sampling temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @classmethod
    def from_rollout(cls, rollout, logprobs: bool = True) -> SamplingConfig:
        """From `audio_thinker.core.config.RolloutConfig`."""
        return cls(
            rollout.samples_per_question, rollout.temperature, rollout.top_p, rollout.max_new_tokens, logprobs
        )


@dataclass
class Sample:
    """One completion. `token_ids` end with the stop token when `finish_reason` is "stop"; `text` omits it."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list[float] | None  # one per token of `token_ids`, or None when not asked
    weights_version: int = 0  # the engine's weights version when it sampled this (stamped by the rollout worker)


@dataclass(frozen=True)
class LoadReport:
    """What a weight load did: checksum of the tensors received (`state_checksum`), time, version."""

    checksum: str
    seconds: float
    version: int
    num_tensors: int


class WeightsError(ValueError):
    """A weight message that does not fit the engine's model; the message names the keys."""


class StaleWeightsError(RuntimeError):
    """The engine's weights are older than the version the caller needs."""


def stop_token_ids(model_path: str | Path, tokenizer) -> list[int]:
    """Stop ids of both engines: the folder's generation_config eos ids plus the tokenizer's."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    path = Path(model_path) / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not ids:
        raise ValueError(f"{model_path}: no eos token id in generation_config.json or the tokenizer")
    return sorted(set(ids))


def banned_token_ids(tokenizer) -> list[int]:
    """Ids of the MULTIMODAL_TOKENS this tokenizer has (masked out of sampling, not out of the log-probs)."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in MULTIMODAL_TOKENS if t in vocab)


def check_weights(named: Sequence[tuple[str, torch.Tensor]], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise WeightsError unless `named` holds exactly the expected keys, once each, with their shapes."""
    counts = Counter(k for k, _ in named)
    duplicated = sorted(k for k, c in counts.items() if c > 1)
    keys = set(counts)
    unknown = sorted(keys - set(expected))
    missing = sorted(set(expected) - keys)
    problems = []
    if duplicated:
        problems.append(f"duplicated keys {duplicated[:5]}")
    if unknown:
        problems.append(f"{len(unknown)} unknown keys, e.g. {unknown[:5]}")
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
    bad_shapes = [f"{k}: got {tuple(t.shape)}, expected {expected[k]}" for k, t in named
                  if k in expected and tuple(t.shape) != tuple(expected[k])]
    if bad_shapes:
        problems.append(f"{len(bad_shapes)} shape mismatches, e.g. {bad_shapes[:3]}")
    if problems:
        raise WeightsError(
            "weight message does not match the model (checkpoint layout expected): " + "; ".join(problems)
        )


class GenerationEngine(ABC):
    """Generate `n` samples per audio prompt; take new weights in place without restarting."""

    family: str
    version: int = 0  # the weights in the model folder are version 0
    device: torch.device = torch.device("cpu")  # where received weights are put before loading

    @property
    @abstractmethod
    def expected_weights(self) -> Mapping[str, tuple[int, ...]]:
        """Checkpoint key -> shape of every tensor a weight message must carry."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingConfig) -> list[list[Sample]]:
        """One list of `sampling.n` samples per request, in request order."""

    @abstractmethod
    def _load(self, named: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Copy the checked tensors into the running model and drop state computed with the old weights."""

    def load_weights(self, named_tensors: NamedTensors, version: int, rewind: bool = False) -> LoadReport:
        """Check, load and checksum a full weight message; refuse to go back to an older version unless
        `rewind` (a trainer restarted from an earlier checkpoint: its weights are the current ones again)."""
        if version < self.version and not rewind:
            raise StaleWeightsError(
                f"refusing weights of version {version}: version {self.version} is already loaded"
            )
        start = time.perf_counter()
        items = named_items(named_tensors)
        named = [(k, t) for k, t in items]
        check_weights(named, self.expected_weights)
        self._load(named)
        self.version = version
        seconds = time.perf_counter() - start
        return LoadReport(state_checksum(named), seconds, version, len(named))

    @abstractmethod
    def close(self) -> None:
        """Release the model (and, for vLLM, the engine core and its caches)."""
