"""`audio-thinker serve-judge` and the programmatic way to run the judge server in-process.

`build_server(...)` returns a `uvicorn.Server`: run it with `server.run()` (blocking, e.g. in a thread or
a Ray actor) and stop it gracefully with `server.should_exit = True`: it stops accepting connections,
answers the requests in flight, drains the batch queue, then releases the model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import uvicorn

from reward_server.app import ServerSettings, create_app
from reward_server.auth import check_auth_setup, load_api_keys
from reward_server.backends import JudgeBackend, load_backend
from reward_server.options import ServeOptions

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


def backend_loader(options: ServeOptions) -> Callable[[], JudgeBackend]:
    """The backend that `serve-judge`'s options name, loaded when the server starts (in its worker thread)."""
    return lambda: load_backend(
        options.backend,
        options.model,
        openai_base_url=options.openai_base_url,
        tokenizer=options.openai_tokenizer,
        device=options.device,
        dtype=options.dtype,
        top_logprobs=options.openai_top_logprobs,
        max_model_len=options.max_model_len,
        gpu_memory_utilization=options.gpu_memory_utilization,
        enforce_eager=options.enforce_eager,
    )


def run_serve_judge(options: ServeOptions) -> int:
    """Serve until SIGINT/SIGTERM; 1 when the model fails to load. Raises AuthConfigError for refused keys."""
    settings = ServerSettings(
        **options.limits().model_dump(), score_mode=options.score_mode, api_keys=load_api_keys(options.api_key_file)
    )
    server = build_server(
        backend_loader(options),
        settings,
        host=options.host,
        port=options.port,
        no_auth=options.no_auth,
        log_level="info",
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
