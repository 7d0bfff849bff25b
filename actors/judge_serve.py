"""The judge on Ray Serve: the same FastAPI app (`reward_server.app.create_app`) behind Serve's FastAPI ingress,
with N replicas or autoscaled between a minimum and a maximum. Every Ray Serve call of the project is here.

Each replica is one whole judge: its own backend, micro-batcher, queue limit (429), API keys and /metrics
registry. A replica loads its model in its constructor, so Serve routes traffic to it only once it is loaded
(a restarted or scaled-up replica never answers 503 "loading"); a replica whose backend failed reports it in
its health check and Serve replaces it. Serve's own per-replica limit of concurrent requests is set above what
the judge's queue can hold, so overload is the judge's documented 429 with Retry-After, never a request
parked in Serve's router.

HTTP reaches the replicas through `JudgeFront`, a light ingress deployment that hands each request whole to a
replica (`JudgeReplica.forward`, the judge app called in-process) and sends it again to another replica when the
one it was on dies: Serve's proxy does not resend a request whose replica died, which clients saw as HTTP 500.
Judging is a pure function of the request, so sending it again is safe.

Two private Ray calls, both here: the HTTP port of a Serve instance that was already running (serve.start
keeps its options), and the replicas' process ids (the GCS actor table) for tests and benchmarks that kill one.

Why in `actors/` and not in `reward_server/`: the judge service must run without Ray (import-linter contract
in pyproject.toml); Serve is one more way to host it, like the `JudgeServer` actor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import ray._private.state as _ray_state
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application
from ray.serve import context as _serve_context
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from audio_thinker.core.net import free_port
from reward_server.app import ServerSettings, create_app
from reward_server.auth import load_api_keys
from reward_server.backends import JudgeBackend, load_backend
from reward_server.client import JudgeClient

APP_NAME = "audio-thinker-judge"
DEPLOYMENT_NAME = "JudgeReplica"
FRONT_NAME = "JudgeFront"
FORWARD_ATTEMPTS = 4  # a request whose replica died is sent to another one, at most this many times in all
FORWARD_PAUSE_S = 0.2  # between attempts: Serve's router notices the dead replica
# (method, path, query string, raw headers, body, client address) of one HTTP request, and its answer.
Forwarded = tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes, tuple[str, int] | None]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
_HOP_BY_HOP = {b"content-length", b"transfer-encoding", b"connection"}


@dataclass(frozen=True)
class Scaling:
    """A fixed number of replicas, or autoscaling between `min_replicas` and `max_replicas` (on the ongoing
    requests per replica, `target_ongoing` each)."""

    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing: float = 4.0

    def options(self) -> dict[str, Any]:
        if self.max_replicas is not None:
            return {
                "autoscaling_config": {
                    "min_replicas": self.min_replicas or 0,
                    "initial_replicas": max(self.min_replicas or 0, 1),
                    "max_replicas": self.max_replicas,
                    "target_ongoing_requests": self.target_ongoing,
                }
            }
        return {"num_replicas": self.replicas or 1}


@serve.deployment(name=DEPLOYMENT_NAME, health_check_period_s=2.0, health_check_timeout_s=30.0)
@serve.ingress()
class JudgeReplica:
    """One replica: the judge app of `reward_server.app`, its backend loaded before the replica takes traffic."""

    def __init__(self, load: Callable[[], JudgeBackend], settings: ServerSettings):
        backend = load()
        self.judge_app = create_app(lambda: backend, settings)

    def __serve_build_asgi_app__(self):
        return self.judge_app

    async def forward(self, request: Forwarded) -> Answer:
        """One HTTP request of JudgeFront, answered by this replica's app in-process."""
        method, path, query, headers, body, client = request
        headers = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]  # the body arrives whole
        transport = httpx.ASGITransport(app=self.judge_app, client=client or ("0.0.0.0", 0))
        async with httpx.AsyncClient(transport=transport, base_url="http://judge") as http:
            url = httpx.URL(path=path, query=query)
            answer = await http.request(method, url, headers=headers, content=body)
        return answer.status_code, answer.headers.raw, answer.content

    def check_health(self) -> None:
        judge = self.judge_app.state.judge
        if judge.status == "failed":
            raise RuntimeError(f"the judge backend failed: {judge.error}")


@serve.deployment(name=FRONT_NAME, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100_000)
class JudgeFront:
    """The application's HTTP ingress: every request to a judge replica, again to another if that one dies."""

    def __init__(self, judge: DeploymentHandle):
        self.judge = judge.options(method_name="forward")

    async def __call__(self, request: Request) -> Response:
        client = (request.client.host, request.client.port) if request.client else None
        call: Forwarded = (request.method, request.url.path, request.url.query.encode(), request.headers.raw,
                           await request.body(), client)  # fmt: skip
        for attempt in range(FORWARD_ATTEMPTS):
            try:
                status, headers, content = await self.judge.remote(call)
            except RayActorError:  # the replica died (or went unreachable) with the request on it
                if attempt + 1 == FORWARD_ATTEMPTS:
                    break
                await asyncio.sleep(FORWARD_PAUSE_S)
                continue
            response = Response(content, status_code=status)
            response.raw_headers = [(k, v) for k, v in headers if k.lower() != b"content-length"] + [
                (b"content-length", str(len(content)).encode())
            ]
            return response
        return JSONResponse({"detail": "no judge replica could answer; retry"}, 503, headers={"Retry-After": "1"})


def application(judge: Any) -> Application:
    """The judge application: JudgeFront in front of the bound JudgeReplica deployment `judge`."""
    return JudgeFront.bind(judge)


def replica_options(settings: ServerSettings, num_cpus: float, num_gpus: float) -> dict[str, Any]:
    """Per-replica Serve options: resources, and a concurrency limit above the judge's queue (every request
    holds at least one item, so the judge's own 429 comes first)."""
    return {
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": settings.max_queue + settings.max_batch_size + 8,
    }


def build_app(args: dict[str, Any]) -> Application:
    """The application builder of a Serve config file (`import_path: actors.judge_serve:build_app`, the KubeRay
    RayService in deploy/kuberay/judge-rayservice.yaml): `args` are `model`, `backend` (transformers | vllm |
    openai), `openai_base_url`, and any limit of JudgeLimits; keys from AUDIO_THINKER_JUDGE_API_KEYS or
    `api_key_file`. Replicas, autoscaling and resources go in the config's `deployments:` entry `JudgeReplica`."""
    args = dict(args)
    model, backend = args.pop("model"), args.pop("backend", "transformers")
    base_url = args.pop("openai_base_url", None)
    keys = load_api_keys(args.pop("api_key_file", None))
    if not keys:
        raise ValueError("the judge on Ray Serve needs API keys: set AUDIO_THINKER_JUDGE_API_KEYS or api_key_file")
    settings = ServerSettings(**args, api_keys=keys)
    options = replica_options(settings, num_cpus=1.0, num_gpus=0.0)
    del options["ray_actor_options"]  # resources: from the config file
    return application(
        JudgeReplica.options(**options).bind(lambda: load_backend(backend, model, openai_base_url=base_url), settings)
    )


class JudgeDeployment:
    """The judge deployed on Ray Serve as the application `name` at the root route (Serve is started on
    `host:port`, port 0: a free one, unless it already runs); `url` is Serve's HTTP proxy. Ray must be
    initialised."""

    def __init__(
        self,
        load: Callable[[], JudgeBackend],
        settings: ServerSettings,
        scaling: Scaling,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        name: str = APP_NAME,
    ):
        self.name = name
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # a run's console: one line per step
        serve.start(
            http_options={"host": host, "port": port or free_port(host)}, logging_config={"log_level": "WARNING"}
        )
        deployment = JudgeReplica.options(**scaling.options(), **replica_options(settings, num_cpus, num_gpus))
        serve.run(application(deployment.bind(load, settings)), name=name, route_prefix="/")
        http = _serve_context._get_global_client().http_config  # Serve already running keeps its own port
        host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host
        self.url = f"http://{host}:{http.port}"

    def replica_pids(self) -> list[int]:
        """The process ids of the running replicas (benchmarks and tests kill one by its pid)."""
        return sorted(set(_replica_pids(self.name)))

    def recover(self, timeout_s: float) -> str:
        """After calls failed: Serve restarts dead replicas and the proxy URL stays; wait until it is ready."""
        with JudgeClient(self.url, timeout_s=timeout_s) as client:
            client.wait_ready(timeout_s)
        return self.url

    def close(self, stop_serve: bool = False) -> None:
        """Delete the application; `stop_serve` also stops Serve (a training run's own judge)."""
        serve.delete(self.name)
        if stop_serve:
            serve.shutdown()


def _replica_pids(app_name: str) -> list[int]:
    # The GCS actor table (ray.util.state would need the dashboard, which a local run does not start).
    prefix = f"SERVE_REPLICA::{app_name}#{DEPLOYMENT_NAME}#"
    return [
        int(a["Pid"])
        for a in _ray_state.actors().values()
        if a.get("State") == "ALIVE" and str(a.get("Name", "")).startswith(prefix)
    ]


def shutdown() -> None:
    """Stop Serve on the cluster (its controller and proxies)."""
    serve.shutdown()
