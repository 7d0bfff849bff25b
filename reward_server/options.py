"""The options of `audio-thinker serve-judge` as a typed model, and the argparse sub-command derived from it.

Apart from `reward_server.cli` so that building the CLI (and `--help`) does not import the web stack.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, model_validator

from audio_thinker.core.judge_config import JudgeLimits, JudgeScoring
from audio_thinker.core.net import bind_error
from audio_thinker.core.options import OptionError, add_model_arguments
from audio_thinker.core.vocab import Dtype, JudgeBackendName


class ServeOptions(JudgeLimits, JudgeScoring):
    """The options of `audio-thinker serve-judge`: the judge's limits and scoring plus what to serve and where."""

    model: str = Field(description="Judge model folder (the served model name for --backend openai).")
    backend: JudgeBackendName = Field("transformers", description="Where the judge's forward passes run.")
    openai_base_url: str | None = Field(
        None, description="With --backend openai: the base URL of the OpenAI-compatible completions server."
    )
    openai_tokenizer: str | None = Field(
        None, description="With --backend openai: folder with the judge's tokenizer and config (none: --model)."
    )
    openai_top_logprobs: int | None = Field(
        None,
        ge=1,
        description="With --backend openai: read the labels from the top-k logprobs of a non-vLLM server "
        "(none: vLLM's logprob_token_ids).",
    )
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface; needs API keys).")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: a free one).")
    api_key_file: str | None = Field(
        None, description="File with one API key per line (also read: AUDIO_THINKER_JUDGE_API_KEYS)."
    )
    no_auth: bool = Field(False, description="Serve without API keys (loopback hosts and clients only).")
    device: str | None = Field(
        None, description="Torch device of --backend transformers (none: cuda if available, else cpu)."
    )
    dtype: Dtype | None = Field(
        None, description="Weights dtype (none: bfloat16 on GPU, float32 on CPU; vllm: the model's)."
    )
    max_model_len: int | None = Field(
        None, ge=1, description="With --backend vllm: context length (none: the model's)."
    )
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="With --backend vllm: GPU memory share.")
    enforce_eager: bool = Field(
        False,
        description="With --backend vllm: no compilation or CUDA graphs (faster start, slower steps; always on CPU).",
    )
    replicas: int | None = Field(
        None, ge=1, description="Serve on Ray Serve with this many replicas (none: one uvicorn process, no Ray)."
    )
    autoscale: str | None = Field(
        None, description="Serve on Ray Serve, autoscaled between MIN,MAX replicas (e.g. 1,4)."
    )
    replica_cpus: float = Field(1.0, gt=0, description="With --replicas/--autoscale: Ray CPUs per replica.")
    replica_gpus: float = Field(0.0, ge=0, description="With --replicas/--autoscale: Ray GPUs per replica.")

    @model_validator(mode="after")
    def _openai_url(self) -> ServeOptions:
        if self.backend == "openai" and not self.openai_base_url:
            raise ValueError("--backend openai needs --openai-base-url (the completions server)")
        return self

    @model_validator(mode="after")
    def _scaling(self) -> ServeOptions:
        if self.replicas is not None and self.autoscale is not None:
            raise ValueError("--replicas and --autoscale: choose one")
        if self.autoscale is not None:
            self.autoscale_bounds()
        return self

    def autoscale_bounds(self) -> tuple[int, int] | None:
        """(min, max) replicas of --autoscale; ValueError naming the option when it is not MIN,MAX."""
        if self.autoscale is None:
            return None
        parts = self.autoscale.split(",")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"--autoscale {self.autoscale!r}: expected MIN,MAX (two whole numbers, e.g. 1,4)")
        low, high = (int(p) for p in parts)
        if high < 1 or low > high:
            raise ValueError(f"--autoscale {self.autoscale!r}: need MIN <= MAX and MAX >= 1")
        return low, high

    @property
    def on_ray_serve(self) -> bool:
        return self.replicas is not None or self.autoscale is not None

    def check_inputs(self) -> None:
        """Before the web stack or a model loads: the model folder (the tokenizer's, with --backend openai) holds
        a config.json, the API key file is a file, and --port is free on --host (OptionError naming the option)."""
        option, folder = ("--model", self.model)
        if self.openai_tokenizer:
            option, folder = ("--openai-tokenizer", self.openai_tokenizer)
        if not (Path(folder) / "config.json").is_file():
            what = "no such folder" if not Path(folder).exists() else "not a Hugging Face model folder (no config.json)"
            raise OptionError(f"{option} {folder}: {what}")
        if self.api_key_file is not None and not Path(self.api_key_file).is_file():
            raise OptionError(f"--api-key-file {self.api_key_file}: no such file")
        error = None if self.port == 0 else bind_error(self.host, self.port)
        if error:
            raise OptionError(f"--port {self.port}: cannot listen on {self.host}:{self.port} ({error}): choose another")


def add_serve_parser(
    subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """The `serve-judge` sub-command, its options derived from ServeOptions."""
    parser = subparsers.add_parser(
        "serve-judge",
        parents=list(parents),
        help="run the reward-judge REST service (docs/judge.md)",
        description="Serve the judge until SIGINT/SIGTERM. Exit code 2: options refused; 1: the model failed to load.",
    )
    add_model_arguments(parser, ServeOptions, exclude=JudgeLimits.model_fields)
    add_model_arguments(parser.add_argument_group("limits (shown in /v1/info)"), JudgeLimits)
    return parser
