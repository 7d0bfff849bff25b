"""The transformers rollout engine: runs everywhere (CPU, any GPU); the reference for the vLLM engine.

All requests of a call go through one batched `generate` (left padding) with `num_return_sequences=n`: each
prompt's Whisper features are computed once by `PromptEncoder`, and its clip is encoded once by the audio encoder
into the prompt's input embeddings, which transformers repeats for the `n` samples (given raw features, it would
run the encoder on each of the n copies). Sampling is plain multinomial over the model's distribution after
temperature and top-p, with the multimodal placeholders masked (engine.MULTIMODAL_TOKENS). The checkpoint's
generation_config (top_k, repetition penalty, ...) is replaced, so that both engines sample from the same
distribution. transformers samples with torch's global generator, so seeding is per call: the same requests with
the same seeds give the same samples (vLLM seeds each request on its own).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, SuppressTokensLogitsProcessor

from audio_thinker.core.models import compute_device
from audio_thinker.core.encoding import PromptEncoder, stack_features
from audio_thinker.core.families import audio_embeddings, merge_audio_embeddings
from audio_thinker.core.models import DTYPES, checkpoint_state, load_feature_extractor, load_policy, load_tokenizer
from rollout.engine import (
    GenerationEngine,
    GenerationRequest,
    Sample,
    SamplingConfig,
    banned_token_ids,
    stop_token_ids,
)


class _SampledLogprobs(LogitsProcessor):
    """Log-prob of each sampled token under the raw logits, keeping one step of log-softmax in memory.

    `output_logits=True` would hold [rows, vocab] for every step (gigabytes for 128 x 256 tokens of a
    152k vocabulary); here each step's token is read back at the next call, and the last one in `finish`.
    Registered first, before the token mask and the warpers, so it sees the model's raw logits.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.values.append(self.previous.gather(-1, input_ids[:, -1:])[:, 0])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[rows, generated tokens] log-probs, once `generate` has returned `sequences`."""
        assert self.previous is not None, "generate made no step"
        return torch.stack(self.values + [self.previous.gather(-1, sequences[:, -1:])[:, 0]], dim=1)


def trim_completion(token_ids: list[int], stop_ids: Sequence[int]) -> tuple[list[int], str]:
    """Cut a padded row after its first stop token (kept, as vLLM does): (tokens, "stop" or "length")."""
    for i, token in enumerate(token_ids):
        if token in stop_ids:
            return token_ids[: i + 1], "stop"
    return token_ids, "length"


def batch_seed(requests: Sequence[GenerationRequest]) -> int | None:
    """One generator seed for a batch, derived from every request's seed (None when none has one)."""
    seeds = [r.seed for r in requests if r.seed is not None]
    if not seeds:
        return None
    if len(seeds) != len(requests):
        raise ValueError("either every request of a batch has a seed or none has (mixed: not reproducible)")
    return int(np.random.SeedSequence([s % 2**32 for s in seeds]).generate_state(1)[0])


class TransformersEngine(GenerationEngine):
    def __init__(
        self, model_path: str | Path, family: str, dtype: str, device: str | None = None
    ) -> None:
        self.family = family
        self.device = torch.device(device) if device else compute_device()
        self.model = load_policy(model_path, family, dtype, self.device)
        tokenizer = load_tokenizer(model_path)
        self.encoder = PromptEncoder(tokenizer, load_feature_extractor(model_path))
        self.stop_ids = stop_token_ids(model_path, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.banned_ids = banned_token_ids(tokenizer)
        self.dtype = DTYPES[dtype]
        self.model.generation_config = GenerationConfig(eos_token_id=self.stop_ids, pad_token_id=self.pad_id)
        # state_dict() tensors (and the per-expert views of fused experts) share storage with the parameters:
        # copying into them updates the model.
        self._state = checkpoint_state(self.model, family)

    @property
    def expected_weights(self) -> Mapping[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self._state.items()}

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingConfig) -> list[list[Sample]]:
        if not requests:
            return []
        encoded = [self.encoder.encode(r.prompt, r.audio) for r in requests]
        width = max(len(e.input_ids) for e in encoded)
        pads = [width - len(e.input_ids) for e in encoded]
        input_ids = torch.tensor([[self.pad_id] * p + e.input_ids for p, e in zip(pads, encoded)])
        attention_mask = torch.tensor([[0] * p + [1] * len(e.input_ids) for p, e in zip(pads, encoded)])
        stacked, stacked_mask = stack_features(encoded)
        features, feature_mask = torch.from_numpy(stacked).to(self.dtype), torch.from_numpy(stacked_mask)
        decoding = (dict(do_sample=False) if sampling.greedy
                    else dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0))
        config = GenerationConfig(
            **decoding,
            max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n,
            eos_token_id=self.stop_ids, pad_token_id=self.pad_id, return_dict_in_generate=True,
        )
        recorder = _SampledLogprobs() if sampling.logprobs else None
        # The recorder reads the raw logits first; the multimodal placeholders are masked after it.
        mask = SuppressTokensLogitsProcessor(self.banned_ids, device=self.device)
        processors = [recorder, mask] if recorder else [mask]
        seed = batch_seed(requests)
        devices = [self.device] if self.device.type == "cuda" else []
        # A seeded call leaves torch's global generator as it found it; an unseeded one draws from it.
        rng = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
        with torch.no_grad(), rng:
            if seed is not None:
                torch.manual_seed(seed)
            input_ids, feature_mask = input_ids.to(self.device), feature_mask.to(self.device)
            clips = audio_embeddings(self.model, features.to(self.device), feature_mask)
            embeds = merge_audio_embeddings(self.model, input_ids, clips, torch.arange(len(encoded)))
            out = self.model.generate(
                input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask.to(self.device),
                feature_attention_mask=feature_mask,
                generation_config=config, logits_processor=LogitsProcessorList(processors),
            )
        completions = out.sequences[:, width:].cpu()
        logprobs = recorder.finish(out.sequences).cpu() if recorder else None
        results: list[list[Sample]] = []
        for i, enc in enumerate(encoded):
            samples = []
            for row in range(i * sampling.n, (i + 1) * sampling.n):
                tokens, reason = trim_completion(completions[row].tolist(), self.stop_ids)
                samples.append(Sample(
                    prompt_token_ids=list(enc.input_ids),
                    token_ids=tokens,
                    text=self.encoder.tokenizer.decode(tokens, skip_special_tokens=True),
                    finish_reason=reason,
                    logprobs=logprobs[row, : len(tokens)].tolist() if logprobs is not None else None,
                ))
            results.append(samples)
        return results

    def _load(self, named: Sequence[tuple[str, torch.Tensor]]) -> None:
        with torch.no_grad():
            for key, tensor in named:
                self._state[key].copy_(tensor)

    def close(self) -> None:
        del self.model, self._state
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
