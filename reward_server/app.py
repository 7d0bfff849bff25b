"""The judge's FastAPI app: versioned routes, limits, auth, metrics, micro-batching, graceful shutdown.

`create_app(load_backend, settings)` builds one app; the backend loads in the app's worker thread after
start-up (so `/health` answers while a large judge loads), followed by one warm-up forward, after which
`/ready` turns 200. `app_from_env` is the ASGI factory for `uvicorn --factory reward_server.app:app_from_env`.

Status codes: 401 bad/missing key, 413 too many items / too long text / too large body / prompt longer
than the judge's context, 422 schema errors (the message names the field), 429 queue full (with
Retry-After), 502 backend failure, 503 not ready or shutting down, 504 request deadline exceeded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict, Field

from audio_thinker.core.config import JudgeLimits, JudgeScoring
from audio_thinker.core.protocol import parse_response
from audio_thinker.core.rewards import SampleVerdict, compute_rewards
from audio_thinker.core.vocab import ScoreMode, normalize_text
from reward_server.auth import AuthMiddleware, is_protected, load_api_keys
from reward_server.backends import JudgeBackend, load_backend
from reward_server.batcher import DeadlineError, MicroBatcher, QueueFullError, ShuttingDownError
from reward_server.metrics import JudgeMetrics, MetricsMiddleware
from reward_server.middleware import BodyLimitMiddleware, LoopbackOnlyMiddleware
from reward_server.prompts import PROMPT_VERSION, PROMPTS
from reward_server.schemas import (
    ALL_SCORES,
    InfoResponse,
    JudgeItem,
    JudgeRequest,
    JudgeResponse,
    JudgeResult,
    Limits,
    RewardRequest,
    RewardResponse,
    ScoreName,
)
from reward_server.scoring import (
    BackendError,
    Prepared,
    PromptTooLongError,
    prepare,
    score_items,
    score_prepared,
)

log = logging.getLogger(__name__)

ROUTES = frozenset({"/v1/judge", "/get_reward", "/v1/info", "/health", "/ready", "/metrics"})
# Documented in OpenAPI; every error body is {"detail": ...} (422 adds a one-line "message").
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key"},
    413: {
        "description": "Too many items, a text or the body too long, or a prompt longer than the judge's context"
    },
    422: {"description": "Schema error; `message` names the field"},
    429: {"description": "Queue full; retry after `Retry-After` seconds"},
    502: {"description": "The judge backend failed (e.g. the remote completions server)"},
    503: {"description": "Not ready (loading, failed, shutting down)"},
    504: {"description": "Not answered within the request deadline"},
}
_WARMUP = JudgeItem(question="Is the sound a dog barking?", think="I hear short loud barks.", answer="yes")


class ServerSettings(JudgeLimits, JudgeScoring):
    """Limits and keys of one judge server (the limits are shown in /v1/info, the keys never)."""

    model_config = ConfigDict(frozen=True)

    api_keys: frozenset[str] = Field(
        frozenset(), description="Bearer keys; empty: no auth (loopback clients only)."
    )


def _error(status: int, detail: Any, retry_after: int | None = None) -> HTTPException:
    return HTTPException(
        status, detail, headers={"Retry-After": str(retry_after)} if retry_after is not None else None
    )


def _unprocessable(loc: Sequence[str | int], msg: str) -> RequestValidationError:
    """A 422 answered like schema errors, for checks the schema cannot express."""
    return RequestValidationError([{"loc": ("body", *loc), "msg": msg, "type": "value_error"}])


class _Judge:
    """Runtime state of one app: the backend, the batcher, and where in its life it is."""

    def __init__(self, load: Callable[[], JudgeBackend], settings: ServerSettings, metrics: JudgeMetrics):
        self.load_backend = load
        self.settings = settings
        self.metrics = metrics
        self.status = "loading"  # -> ready | failed; -> stopping at shutdown
        self.error = ""
        self.backend: JudgeBackend | None = None
        self.batcher: MicroBatcher[Prepared, JudgeResult] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="judge-model")
        # Tokenization has its own thread: off the event loop, never concurrent on one tokenizer.
        self.tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="judge-tokenize")

    async def start(self, on_fatal: Callable[[], None] | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            backend = await loop.run_in_executor(self.executor, self.load_backend)
            self.backend = backend
            await loop.run_in_executor(self.executor, score_items, backend, [_WARMUP], ALL_SCORES)
        except Exception as exc:
            log.exception("judge backend failed to load")
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            if on_fatal is not None:
                on_fatal()
            return
        s = self.settings
        self.batcher = MicroBatcher(
            lambda items: score_prepared(backend, items),
            s.max_batch_size,
            s.max_wait_ms,
            s.max_queue,
            self.executor,
            on_batch=self._observe_batch,
        )
        self.batcher.start()
        self.status = "ready"
        log.info("judge ready: %s backend, model %s", backend.name, backend.model)

    async def stop(self) -> None:
        if self.status != "failed":
            self.status = "stopping"
        if self.batcher is not None:
            await self.batcher.stop()
        if self.backend is not None:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.close)
        self.executor.shutdown(wait=True)
        self.tokenizer_thread.shutdown(wait=True)

    def _observe_batch(self, items: list[Prepared], seconds: float) -> None:
        self.metrics.batch_size.observe(len(items))
        self.metrics.batch_duration.observe(seconds)
        for item in items:
            for name in item.scores:
                self.metrics.items.labels(name).inc()

    def ready_backend(self) -> JudgeBackend:
        if self.status != "ready" or self.backend is None:
            detail = f"judge is {self.status}" + (f": {self.error}" if self.error else "")
            raise _error(503, detail, self.settings.retry_after_s)
        return self.backend

    def check_text(self, field: str, text: str) -> None:
        if len(text) > self.settings.max_text_chars:
            raise _error(413, f"{field}: {len(text)} characters, the limit is {self.settings.max_text_chars}")

    def check_count(self, field: str, n: int) -> None:
        if n > self.settings.max_items:
            raise _error(413, f"{field}: {n} entries, the limit is {self.settings.max_items} per request")

    async def judge(
        self, items: Sequence[JudgeItem], scores: Sequence[ScoreName], score_mode: ScoreMode
    ) -> list[JudgeResult]:
        """Score items through the batcher; every failure becomes an HTTP error, never a made-up score."""
        backend = self.ready_backend()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout_s
        try:
            prepared = await loop.run_in_executor(self.tokenizer_thread, prepare, backend, items, scores, score_mode)
        except PromptTooLongError as exc:
            raise _error(413, str(exc)) from None
        assert self.batcher is not None
        try:
            return await self.batcher.submit(prepared, max(deadline - loop.time(), 0.0))
        except QueueFullError as exc:
            raise _error(
                429, f"{exc}; retry after {self.settings.retry_after_s} s", self.settings.retry_after_s
            ) from None
        except DeadlineError:
            raise _error(
                504, f"no answer within the request deadline of {self.settings.request_timeout_s:g} s"
            ) from None
        except ShuttingDownError as exc:
            raise _error(503, str(exc), self.settings.retry_after_s) from None
        except BackendError as exc:
            log.warning("judge backend failed: %s", exc)
            raise _error(502, f"judge backend failed: {exc}") from None
        except Exception as exc:
            log.exception("judge batch failed")
            raise _error(500, f"judge failed: {type(exc).__name__}: {exc}") from None


def create_app(
    load: Callable[[], JudgeBackend], settings: ServerSettings, on_fatal: Callable[[], None] | None = None
) -> FastAPI:
    """One judge app. `load` builds the backend (in the app's worker thread); `on_fatal` is called when that
    fails (build_server stops the server with it). Empty `settings.api_keys` means no auth: protected routes
    then answer loopback clients only; `auth.check_auth_setup` decides whether that is allowed at all."""
    metrics = JudgeMetrics()
    judge = _Judge(load, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(judge.start(on_fatal))
        try:
            yield
        finally:
            await loader
            await judge.stop()

    app = FastAPI(
        title="audio-thinker reward judge",
        version=PROMPT_VERSION,
        lifespan=lifespan,
        description="Consistency and think-quality scores of reasoning responses (see docs/judge.md).",
    )
    app.state.judge = judge
    app.state.metrics = metrics
    metrics.queue_depth.set_function(lambda: judge.batcher.queued_items if judge.batcher else 0)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in jsonable_encoder(exc.errors())]
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": errors, "message": message}, status_code=422)

    @app.post("/v1/judge", response_model=JudgeResponse, tags=["judge"], responses=_ERRORS)
    async def judge_route(request: JudgeRequest) -> JudgeResponse:
        """Consistency and/or think quality of each item, in request order."""
        backend = judge.ready_backend()
        judge.check_count("items", len(request.items))
        for i, item in enumerate(request.items):
            for field in ("question", "think", "answer"):
                judge.check_text(f"items[{i}].{field}", getattr(item, field))
            for j, choice in enumerate(item.choices or []):
                judge.check_text(f"items[{i}].choices[{j}]", choice)
        mode = request.score_mode or settings.score_mode
        results = await judge.judge(request.items, request.scores, mode)
        return JudgeResponse(results=results, model=backend.model, prompt_version=PROMPT_VERSION, score_mode=mode)

    @app.post("/get_reward", response_model=RewardResponse, tags=["judge"], responses=_ERRORS)
    async def get_reward(request: RewardRequest) -> RewardResponse:
        """The OpenRLHF remote-reward contract; the reward is defined in docs/judge.md."""
        judge.ready_backend()
        judge.check_count("query", len(request.query))
        parsed = []
        for i, (query, prompt, label) in enumerate(zip(request.query, request.prompts, request.labels)):
            if not query.startswith(prompt):
                raise _unprocessable(
                    ["query", i],
                    f"query[{i}] does not start with prompts[{i}] (the response is what follows the prompt)",
                )
            if not label.strip():
                raise _unprocessable(["labels", i], f"labels[{i}] is empty: the reward needs the gold answer")
            judge.check_text(f"prompts[{i}]", prompt)
            judge.check_text(f"query[{i}] (response part)", query[len(prompt) :])
            judge.check_text(f"labels[{i}]", label)
            parsed.append(parse_response(query[len(prompt) :]))
        think = [i for i, p in enumerate(parsed) if p.mode == "think"]
        items = [
            JudgeItem(question=request.prompts[i], think=parsed[i].think, answer=parsed[i].answer)
            for i in think
        ]
        verdicts = dict(zip(think, await judge.judge(items, ALL_SCORES, settings.score_mode))) if items else {}
        samples = []
        for i, (p, label) in enumerate(zip(parsed, request.labels)):
            correct = p.mode != "invalid" and normalize_text(p.answer or "") == normalize_text(label)
            v = verdicts.get(i, JudgeResult())
            samples.append(SampleVerdict(p.mode, correct, str(i), v.consistency, v.think_quality))
        terms = compute_rewards(samples, step=1, total_steps=1, variant="atar_cr_tr").samples
        return RewardResponse(
            rewards=[t.total for t in terms],
            scores=[float(t.correct) for t in terms],
            extra_logs={
                "format_reward": [t.format for t in terms],
                "accuracy_reward": [t.accuracy for t in terms],
                "consistency_reward": [t.consistency for t in terms],
                "think_reward": [t.think for t in terms],
                "think_mode": [float(t.mode == "think") for t in terms],
                "correct": [float(t.correct) for t in terms],
            },
        )

    @app.get("/v1/info", response_model=InfoResponse, tags=["service"])
    async def info() -> InfoResponse:
        backend = judge.backend
        return InfoResponse(
            model=backend.model if backend else "",
            backend=backend.name if backend else "",
            prompt_version=PROMPT_VERSION,
            prompts={name: p.version for name, p in PROMPTS.items()},
            scores=list(ALL_SCORES),
            limits=Limits(**settings.limits().model_dump(exclude={"retry_after_s"})),
            auth=bool(settings.api_keys),
        )

    @app.get("/health", tags=["service"])
    async def health() -> JSONResponse:
        """The process is alive (503 only when the backend failed to load: restart it)."""
        if judge.status == "failed":
            return JSONResponse({"status": "failed", "error": judge.error}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", tags=["service"])
    async def ready() -> JSONResponse:
        """200 once the model is loaded and one warm-up forward has run."""
        body: dict[str, str] = {"status": judge.status}
        if judge.error:
            body["error"] = judge.error
        return JSONResponse(body, status_code=200 if judge.status == "ready" else 503)

    @app.get("/metrics", tags=["service"])
    async def metrics_route() -> Response:
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            for path, operations in schema["paths"].items():
                if is_protected(path) and settings.api_keys:
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Outermost first on the wire: metrics see everything, auth runs before the body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_keys:
        app.add_middleware(AuthMiddleware, keys=settings.api_keys)
    else:
        app.add_middleware(LoopbackOnlyMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=ROUTES)
    return app


def app_from_env() -> FastAPI:
    """ASGI factory: `uvicorn --factory reward_server.app:app_from_env --host ... --port ...`.

    Reads AUDIO_THINKER_JUDGE_MODEL (required), AUDIO_THINKER_JUDGE_BACKEND (transformers | vllm | openai),
    AUDIO_THINKER_JUDGE_OPENAI_BASE_URL, AUDIO_THINKER_JUDGE_API_KEYS / AUDIO_THINKER_JUDGE_API_KEY_FILE,
    and AUDIO_THINKER_JUDGE_NO_AUTH=1 to run without keys (then only loopback clients are served).
    A backend that fails to load sends SIGTERM to this process, so uvicorn exits instead of idling.
    """
    env = os.environ
    model = env.get("AUDIO_THINKER_JUDGE_MODEL")
    if not model:
        raise RuntimeError("set AUDIO_THINKER_JUDGE_MODEL to the judge model folder (or served model name)")
    keys = load_api_keys(env.get("AUDIO_THINKER_JUDGE_API_KEY_FILE"))
    if not keys and env.get("AUDIO_THINKER_JUDGE_NO_AUTH") != "1":
        raise RuntimeError(
            "no API keys: set AUDIO_THINKER_JUDGE_API_KEYS, or AUDIO_THINKER_JUDGE_NO_AUTH=1 (loopback clients only)"
        )
    kind = env.get("AUDIO_THINKER_JUDGE_BACKEND", "transformers")
    base_url = env.get("AUDIO_THINKER_JUDGE_OPENAI_BASE_URL")
    return create_app(
        lambda: load_backend(kind, model, openai_base_url=base_url),
        ServerSettings(api_keys=keys),
        on_fatal=lambda: os.kill(os.getpid(), signal.SIGTERM),
    )
