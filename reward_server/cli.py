"""`audio-thinker serve-judge` and the programmatic way to run the judge server in-process.

`build_server(...)` returns a `uvicorn.Server`: run it with `server.run()` (blocking, e.g. in a thread or
a Ray actor) and stop it gracefully with `server.should_exit = True`: it stops accepting connections,
answers the requests in flight, drains the batch queue, then releases the model.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Sequence

import uvicorn
from pydantic import Field, model_validator

from audio_thinker.core.config import JudgeLimits, JudgeScoring
from audio_thinker.core.options import add_model_arguments
from audio_thinker.core.vocab import Dtype, JudgeBackendName
from reward_server.app import ServerSettings, create_app
from reward_server.auth import check_auth_setup, load_api_keys
from reward_server.backends import JudgeBackend, load_backend

log = logging.getLogger(__name__)


def build_server(
    load: Callable[[], JudgeBackend],
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    no_auth: bool = False,
    log_level: str = "warning",
) -> uvicorn.Server:
    """A configured, not yet started server; `port=0` picks a free port (see `server_port`).

    Raises AuthConfigError when there are no keys without `no_auth`, or `no_auth` on a non-loopback host.
    """
    check_auth_setup(host, settings.api_keys, no_auth)

    def stop() -> None:  # the backend failed to load: exit instead of serving 503 forever
        server.should_exit = True

    app = create_app(load, settings, on_fatal=stop)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        log_config=None,
    )
    server = uvicorn.Server(config)
    return server


def server_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful with port=0)."""
    if not server.started or not server.servers:
        raise RuntimeError("the server is not started yet")
    return server.servers[0].sockets[0].getsockname()[1]


class ServerThread:
    """A built server running in a background thread (tests, benchmarks, a Ray actor).

    with ServerThread(build_server(...)) as url:   # returns once the socket listens
        JudgeClient(url, ...).wait_ready()
    """

    def __init__(self, server: uvicorn.Server):
        self.server = server
        self.thread = threading.Thread(target=server.run, name="judge-server", daemon=True)

    def start(self, timeout_s: float = 60.0) -> str:
        """Start serving; returns the base URL. Raises RuntimeError if it does not listen within timeout_s."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the judge server did not start listening within {timeout_s:g} s")
            time.sleep(0.02)
        host = self.server.config.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://{host}:{server_port(self.server)}"

    def stop(self, timeout_s: float | None = None) -> None:
        """Graceful stop: finish requests in flight, drain the queue, release the model, join the thread."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise RuntimeError("the judge server thread did not stop in time")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
        False, description="With --backend vllm: no compilation or CUDA graphs (faster start, slower steps)."
    )

    @model_validator(mode="after")
    def _openai_url(self) -> ServeOptions:
        if self.backend == "openai" and not self.openai_base_url:
            raise ValueError("--backend openai needs --openai-base-url (the completions server)")
        return self

    def load(self) -> JudgeBackend:
        return load_backend(
            self.backend,
            self.model,
            openai_base_url=self.openai_base_url,
            tokenizer=self.openai_tokenizer,
            device=self.device,
            dtype=self.dtype,
            top_logprobs=self.openai_top_logprobs,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization,
            enforce_eager=self.enforce_eager,
        )


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


def run_serve_judge(options: ServeOptions) -> int:
    """Serve until SIGINT/SIGTERM; 1 when the model fails to load. Raises AuthConfigError for refused keys."""
    settings = ServerSettings(
        **options.limits().model_dump(), score_mode=options.score_mode, api_keys=load_api_keys(options.api_key_file)
    )
    server = build_server(
        options.load, settings, host=options.host, port=options.port, no_auth=options.no_auth, log_level="info"
    )
    log.info(
        "judge on http://%s:%d (%s backend, %s); loading the model",
        options.host,
        options.port,
        options.backend,
        options.model,
    )
    server.run()
    judge = server.config.app.state.judge
    if judge.status == "failed":
        log.error("serve-judge: the judge failed to load: %s", judge.error)
        return 1
    return 0
