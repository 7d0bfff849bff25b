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
from collections.abc import Callable

import uvicorn

from reward_server.app import ServerSettings, create_app
from reward_server.auth import AuthConfigError, check_auth_setup, load_api_keys
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


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        api_keys=load_api_keys(args.api_key_file),
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_items=args.max_items,
        max_text_chars=args.max_text_chars,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout_s,
    )


def run_serve_judge(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; exit code 1 when the configuration is refused or the model fails to load."""
    try:
        if args.backend == "openai" and not args.openai_base_url:
            raise ValueError("--backend openai needs --openai-base-url (the completions server)")
        settings = settings_from_args(args)
        server = build_server(
            lambda: load_backend(
                args.backend,
                args.model,
                openai_base_url=args.openai_base_url,
                tokenizer=args.openai_tokenizer,
                device=args.device,
                dtype=args.dtype,
                top_logprobs=args.openai_top_logprobs,
                max_model_len=args.max_model_len,
                gpu_memory_utilization=args.gpu_memory_utilization,
                enforce_eager=args.enforce_eager,
            ),
            settings,
            host=args.host,
            port=args.port,
            no_auth=args.no_auth,
            log_level="info",
        )
    except (AuthConfigError, ValueError) as exc:
        log.error("serve-judge: %s", exc)
        return 1
    log.info(
        "judge on http://%s:%d (%s backend, %s); loading the model",
        args.host,
        args.port,
        args.backend,
        args.model,
    )
    server.run()
    judge = server.config.app.state.judge
    if judge.status == "failed":
        log.error("serve-judge: the judge failed to load: %s", judge.error)
        return 1
    return 0
