"""Judge backends behind one interface: token ids of judging prompts in, label log-probabilities out.

- `TransformersBackend`: the model in this process (CPU or one GPU), left-padded batches.
- `VLLMBackend`: an in-process vLLM engine; the ONLY module of the judge that calls vLLM.
- `OpenAIBackend`: a remote OpenAI-compatible `/v1/completions` endpoint (e.g. `vllm serve` of the judge).

All three tokenize with the judge's own Hugging Face tokenizer (loaded here, checked against the verdict
labels at start-up) and send token ids, so every backend scores exactly the same inputs. Methods are
blocking: the server calls them from one worker thread, never from the event loop.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from audio_thinker.core.devices import DEVICES_ENV, cpu_only
from audio_thinker.core.models import compute_device, cpu_kv_cache_bytes
from reward_server.prompts import ALL_LABELS, label_token_ids
from reward_server.scoring import BackendError

BACKENDS = ("transformers", "vllm", "openai")
# transformers' from_pretrained is not thread-safe: two judges loading at once in one process (two apps,
# a benchmark) can get meta tensors. Loads are serialised; scoring is not affected.
_LOAD_LOCK = threading.Lock()


def load_tokenizer(path: str) -> Any:
    """The judge's Hugging Face tokenizer; a missing folder is an error that names it."""
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"judge model folder {path} does not exist (build the tiny one with `audio-thinker make-tiny`)"
        )
    return AutoTokenizer.from_pretrained(path)


def redact_url(url: str) -> str:
    """`url` without its user:password@ part."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def _max_positions(path: str) -> int:
    config = AutoConfig.from_pretrained(path)
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"{path}/config.json has no usable max_position_embeddings ({n!r})")
    return n


def load_backend(
    kind: str,
    model: str,
    *,
    openai_base_url: str | None = None,
    tokenizer: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    top_logprobs: int | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.5,
    enforce_eager: bool = False,
    progress: bool = True,
) -> JudgeBackend:
    """Build the backend `kind` for `model` (a folder; for openai the served model name, with `tokenizer` the
    folder holding its tokenizer and config, default `model`); `progress=False`: no loading bar (transformers)."""
    if kind == "transformers":
        return TransformersBackend(model, device=device, dtype=dtype, progress=progress)
    if kind == "vllm":
        return VLLMBackend(
            model,
            dtype=dtype or "auto",
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
        )
    if kind == "openai":
        if not openai_base_url:
            raise ValueError("the openai backend needs the server URL (--openai-base-url)")
        return OpenAIBackend(openai_base_url, model, tokenizer or model, top_logprobs=top_logprobs)
    raise ValueError(f"unknown judge backend {kind!r}; expected one of {', '.join(BACKENDS)}")


class JudgeBackend(ABC):
    """Common part: the tokenizer and the checked label ids (checked first: a judge whose labels are not
    single tokens fails before any weights are loaded). Subclasses set `max_prompt_tokens` and implement
    `label_logprobs`; `close` releases what they hold.
    """

    name: str = ""
    max_prompt_tokens: int = 0

    def __init__(self, model: str, tokenizer_path: str):
        self.model = model
        self.tokenizer = load_tokenizer(tokenizer_path)
        label_ids = label_token_ids(self.tokenizer)
        self.label_ids = [label_ids[label] for label in ALL_LABELS]

    @property
    def model_name(self) -> str:
        """The model as responses name it: a local folder by its name, never its path."""
        return Path(self.model).name or self.model

    @abstractmethod
    def label_logprobs(self, prompt_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """log P(label | prompt), shape (len(prompt_ids), len(ALL_LABELS)); -inf where a label is not visible."""

    def close(self) -> None:  # noqa: B027 - a no-op by default: only some backends hold something to release
        """Release the model / engine / connections (the server calls it once, at shutdown)."""


class TransformersBackend(JudgeBackend):
    """Local causal LM. Sequences are sorted by length and cut into chunks of at most `max_batch_tokens`
    padded tokens; explicit position ids make left padding exact (not just approximately RoPE-invariant)."""

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_tokens: int = 32768,
        progress: bool = True,
    ):
        super().__init__(model_path, model_path)
        self.max_prompt_tokens = _max_positions(model_path) - 1
        self.device = torch.device(device) if device else compute_device()
        torch_dtype = (
            getattr(torch, dtype)
            if dtype
            else (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        )
        with _LOAD_LOCK:
            hide = not progress and hf_logging.is_progress_bar_enabled()  # transformers' bar is process-wide
            if hide:
                hf_logging.disable_progress_bar()
            try:
                self.net = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(self.device).eval()
            finally:
                if hide:
                    hf_logging.enable_progress_bar()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError(f"judge tokenizer of {model_path} has neither a pad nor an eos token")
        self.max_batch_tokens = max_batch_tokens

    def label_logprobs(self, prompt_ids: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.empty((len(prompt_ids), len(ALL_LABELS)), dtype=np.float64)
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        chunk: list[int] = []
        for i in order:
            if chunk and len(prompt_ids[i]) * (len(chunk) + 1) > self.max_batch_tokens:
                out[chunk] = self._forward([prompt_ids[j] for j in chunk])
                chunk = []
            chunk.append(i)
        if chunk:
            out[chunk] = self._forward([prompt_ids[j] for j in chunk])
        return out

    def _forward(self, seqs: list[Sequence[int]]) -> np.ndarray:
        if any(len(s) == 0 for s in seqs):
            raise BackendError("empty judging prompt")
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[row, width - len(s) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = (
                self.net(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device),
                    logits_to_keep=1,
                )
                .logits[:, -1]
                .float()
            )
            logp = torch.log_softmax(logits, dim=-1)[:, self.label_ids]
        return logp.cpu().double().numpy()


class VLLMBackend(JudgeBackend):
    """In-process vLLM engine; `logprob_token_ids` returns the full-vocabulary log-probability of exactly
    the label tokens (vLLM >= 0.12 sampling parameter), from one decoding step per prompt."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        enforce_eager: bool = False,
    ):
        # One process: the engine lives in the server's worker thread (docs/architecture.md, 'Outside dependencies').
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform

        if cpu_only() and not current_platform.is_cpu():
            raise BackendError(
                f"{DEVICES_ENV}=cpu (a rehearsal computes on the CPU) but this vLLM is a GPU build: the judge's vLLM "
                "backend then needs the CPU build of vLLM (`make install` on a machine without a GPU)"
            )
        super().__init__(model_path, model_path)
        kv_bytes = cpu_kv_cache_bytes(model_path, dtype, max_model_len) if current_platform.is_cpu() else None
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=True,
            # On the CPU no torch.compile, as in the rollout engine: compiling the tiny judge cost 10-17 s of every
            # start (measured), for a judge that computes one token per item.
            enforce_eager=enforce_eager or current_platform.is_cpu(),
            kv_cache_memory_bytes=kv_bytes,
        )
        self.max_prompt_tokens = self.llm.llm_engine.model_config.max_model_len - 1
        self.params = SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=self.label_ids, detokenize=False
        )

    def label_logprobs(self, prompt_ids: Sequence[Sequence[int]]) -> np.ndarray:
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(ids)} for ids in prompt_ids], self.params, use_tqdm=False
        )
        out = np.empty((len(prompt_ids), len(ALL_LABELS)), dtype=np.float64)
        for row, result in enumerate(outputs):
            steps = result.outputs[0].logprobs if result.outputs else None
            if not steps:
                raise BackendError(f"vLLM returned no logprobs for prompt {row}")
            try:
                out[row] = [steps[0][t].logprob for t in self.label_ids]
            except KeyError as exc:
                raise BackendError(
                    f"vLLM left out the logprob of label token {exc} for prompt {row}"
                ) from None
        return out

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()


class OpenAIBackend(JudgeBackend):
    """Remote `/v1/completions` with logprobs. Two modes:

    - exact (default, `top_logprobs=None`): sends vLLM's `logprob_token_ids` extension, so the server
      returns the log-probability of every label token: the same scores as the local backends.
    - top-k (`top_logprobs=k`, any OpenAI-compatible server): labels are looked up in the k most likely
      tokens; a label outside them counts as probability 0, and a score none of whose labels is visible
      fails (BackendError) instead of producing a number.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer_path: str,
        api_key: str | None = None,
        top_logprobs: int | None = None,
        timeout_s: float = 60.0,
        max_prompt_tokens: int | None = None,
    ):
        super().__init__(model, tokenizer_path)
        self.where = redact_url(base_url)  # what errors (and so logs) say: no user:password@
        self.max_prompt_tokens = max_prompt_tokens or _max_positions(tokenizer_path) - 1
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.top_logprobs = top_logprobs
        # The servers key top_logprobs by the decoded token text.
        self.label_text = [self.tokenizer.decode([t]) for t in self.label_ids]

    def label_logprobs(self, prompt_ids: Sequence[Sequence[int]]) -> np.ndarray:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": [list(ids) for ids in prompt_ids],
            "max_tokens": 1,
            "temperature": 0.0,
        }
        if self.top_logprobs is None:
            body.update(logprobs=len(self.label_ids), logprob_token_ids=self.label_ids)
        else:
            body["logprobs"] = self.top_logprobs
        try:
            response = self.http.post("/v1/completions", json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"judge endpoint {self.where}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise BackendError(f"judge endpoint {self.where}: HTTP {response.status_code}: {response.text[:500]}")
        choices = sorted(response.json().get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(prompt_ids):
            raise BackendError(
                f"judge endpoint returned {len(choices)} choices for {len(prompt_ids)} prompts"
            )
        out = np.full((len(prompt_ids), len(ALL_LABELS)), -np.inf, dtype=np.float64)
        for row, choice in enumerate(choices):
            top = ((choice.get("logprobs") or {}).get("top_logprobs") or [None])[0]
            if not isinstance(top, dict):
                raise BackendError(f"judge endpoint returned no top_logprobs for prompt {row}")
            for col, text in enumerate(self.label_text):
                if text in top:
                    out[row, col] = float(top[text])
        return out

    def close(self) -> None:
        self.http.close()
