"""The judge's FastAPI app: versioned routes, limits, auth, metrics, micro-batching, graceful shutdown.

`create_app(load_backend, settings)` builds one app; the backend loads in the app's worker thread after
start-up (so `/health` answers while a large judge loads), followed by one warm-up forward, after which
`/ready` turns 200. `app_from_env` is the ASGI factory for `uvicorn --factory reward_server.app:app_from_env`.

Status codes: 401 bad/missing key, 413 too many items / choices / too long text / too large body / prompt
longer than the judge's context, 422 schema errors (the message names the field; invalid unicode too), 429
queue full (with Retry-After), 502 backend failure, 503 not ready or shutting down, 504 request deadline
exceeded, 500 unexpected. A 5xx body is generic and carries the request id (every response has it in
X-Request-ID); the details are in the server's log under that id. Responses name the model, never its path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from audio_thinker.core.judge_config import JudgeLimits, JudgeScoring
from audio_thinker.core.rewards import SampleError
from audio_thinker.core.vocab import ScoreMode
from reward_server.auth import AuthMiddleware, is_protected, load_api_keys
from reward_server.backends import JudgeBackend, load_backend
from reward_server.batch_rewards import batch_rewards, judge_requests, mark, question_text, sample_terms
from reward_server.metrics import JudgeMetrics, MetricsMiddleware
from reward_server.middleware import BodyLimitMiddleware, LoopbackOnlyMiddleware, RequestIdMiddleware, request_id
from reward_server.prompts import PROMPT_VERSION, PROMPTS
from reward_server.runtime import JudgeRuntime
from reward_server.schemas import (
    ALL_SCORES,
    InfoResponse,
    JudgeRequest,
    JudgeResponse,
    JudgeResult,
    Limits,
    RewardRequest,
    RewardResponse,
    RewardsRequest,
    RewardsResponse,
    Rollout,
)

log = logging.getLogger(__name__)

ROUTES = frozenset({"/v1/judge", "/v1/rewards", "/get_reward", "/v1/info", "/health", "/ready", "/metrics"})
# Documented in OpenAPI; every error body is {"detail": ...} (422 adds a one-line "message").
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key"},
    413: {
        "description": "Too many items or choices, a text, an item or the body too long, or a prompt longer than "
        "the judge's context"
    },
    422: {"description": "Schema error (invalid unicode included); `message` names the field"},
    429: {"description": "Queue full; retry after `Retry-After` seconds"},
    502: {"description": "The judge backend failed (e.g. the remote completions server)"},
    503: {"description": "Not ready (loading, failed, shutting down)"},
    504: {"description": "Not answered within the request deadline"},
    500: {"description": "Unexpected error; the body has the request id, the server log the details"},
}


class ServerSettings(JudgeLimits, JudgeScoring):
    """Limits and keys of one judge server (the limits are shown in /v1/info, the keys never)."""

    model_config = ConfigDict(frozen=True)

    api_keys: frozenset[str] = Field(
        frozenset(), description="Bearer keys; empty: no auth (loopback clients only)."
    )


def _unprocessable(loc: Sequence[str | int], msg: str) -> RequestValidationError:
    """A 422 answered like schema errors, for checks the schema cannot express."""
    return RequestValidationError([{"loc": ("body", *loc), "msg": msg, "type": "value_error"}])


def create_app(
    load: Callable[[], JudgeBackend], settings: ServerSettings, on_fatal: Callable[[], None] | None = None
) -> FastAPI:
    """One judge app. `load` builds the backend (in the app's worker thread); `on_fatal` is called when that
    fails (build_server stops the server with it). Empty `settings.api_keys` means no auth: protected routes
    then answer loopback clients only; `auth.check_auth_setup` decides whether that is allowed at all."""
    metrics = JudgeMetrics()
    judge = JudgeRuntime(load, settings, metrics)

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
        # ASCII JSON: a field name or message may carry a lone surrogate, which has no UTF-8 form.
        body = json.dumps({"detail": errors, "message": message})
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.status_code >= 500:
            body["request_id"] = request_id()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.post("/v1/judge", response_model=JudgeResponse, tags=["judge"], responses=_ERRORS)
    async def judge_route(request: JudgeRequest) -> JudgeResponse:
        """Consistency and/or think quality of each item, in request order."""
        backend = judge.ready_backend()
        judge.check_count("items", len(request.items))
        for i, item in enumerate(request.items):
            judge.check_judge_item(f"items[{i}]", item)
        mode = request.score_mode or settings.score_mode
        results = await judge.judge(request.items, [request.scores] * len(request.items), mode)
        return JudgeResponse(results=results, model=backend.model_name, prompt_version=PROMPT_VERSION, score_mode=mode)

    async def verdicts_of(asks: list, mode: ScoreMode, field: str) -> dict[int, JudgeResult]:
        """The judge's results for `judge_requests`' asks, by batch index (errors name `field[index]`)."""
        if not asks:
            return {}
        where = [f"{field}[{i}]" for i, _, _ in asks]
        results = await judge.judge([item for _, item, _ in asks], [scores for _, _, scores in asks], mode, where)
        return {i: result for (i, _, _), result in zip(asks, results)}

    @app.post("/v1/rewards", response_model=RewardsResponse, tags=["judge"], responses=_ERRORS)
    async def rewards_route(request: RewardsRequest) -> RewardsResponse:
        """The paper's reward over one training batch (eq. 7 with ATAR at `step` of `total_steps`): every term,
        the totals, and on request eq. 8's group advantages (docs/judge.md)."""
        backend = judge.ready_backend()
        judge.check_count("items", len(request.items))
        marked = []
        for i, r in enumerate(request.items):
            for name in ("question", "response", "answer"):
                judge.check_text(f"items[{i}].{name}", getattr(r, name))
            for j, choice in enumerate(r.choices or ()):
                judge.check_text(f"items[{i}].choices[{j}]", choice)
            judge.check_item(f"items[{i}]", (r.question, r.response, r.answer), r.choices)
            try:
                marked.append(mark(r))
            except ValueError as exc:
                raise _unprocessable(["items", i, "answer"], str(exc)) from None
        asks = judge_requests(request.items, marked, request.variant)
        mode = request.score_mode or settings.score_mode
        verdicts = await verdicts_of(asks, mode, "items")
        try:
            batch = batch_rewards(
                request.items, marked, verdicts, request.step, request.total_steps, request.variant,
                request.invalid_accuracy,
            )  # fmt: skip
        except SampleError as exc:
            raise _unprocessable(["items", exc.index, exc.field], exc.message) from None
        return RewardsResponse(
            think_rate=batch.think_rate, gamma_think=batch.gamma_think, gamma_no_think=batch.gamma_no_think,
            samples=sample_terms(batch, verdicts, request.advantages), model=backend.model_name,
            prompt_version=PROMPT_VERSION,
        )  # fmt: skip

    @app.post("/get_reward", response_model=RewardResponse, tags=["judge"], responses=_ERRORS)
    async def get_reward(request: RewardRequest) -> RewardResponse:
        """The OpenRLHF remote-reward contract: the reward with both ATAR factors at 1 (a stateless request knows
        neither the step nor the batch; /v1/rewards does), defined in docs/judge.md."""
        judge.ready_backend()
        judge.check_count("query", len(request.query))
        rollouts = []
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
            judge.check_item(f"query[{i}]", (query, label), None)
            # Only the question reaches the judge, not the trainer's chat scaffolding and its special tokens.
            rollouts.append(Rollout(group=str(i), question=question_text(prompt), response=query[len(prompt) :],
                                    answer=label))  # fmt: skip
        marked = [mark(r) for r in rollouts]
        asks = judge_requests(rollouts, marked, "atar_cr_tr")
        verdicts = await verdicts_of(asks, settings.score_mode, "query")
        terms = batch_rewards(rollouts, marked, verdicts, step=1, total_steps=1).samples
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

    @app.get("/v1/info", response_model=InfoResponse, tags=["service"], responses={401: _ERRORS[401]})
    async def info() -> InfoResponse:
        backend = judge.backend
        return InfoResponse(
            model=backend.model_name if backend else "",
            backend=backend.name if backend else "",
            prompt_version=PROMPT_VERSION,
            prompts={name: p.version for name, p in PROMPTS.items()},
            scores=list(ALL_SCORES),
            limits=Limits(**settings.limits().model_dump(exclude={"retry_after_s"})),
            auth=bool(settings.api_keys),
        )

    def _state() -> dict[str, str]:
        body = {"status": judge.status}
        if judge.status == "failed":
            body["error"] = f"{judge.error_kind} (the server log says why)"
        return body

    @app.get("/health", tags=["service"], responses={503: {"description": "The backend failed to load"}})
    async def health() -> JSONResponse:
        """The process is alive (503 only when the backend failed to load: restart it)."""
        if judge.status == "failed":
            return JSONResponse(_state(), status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", tags=["service"], responses={503: {"description": "Loading, failed or stopping"}})
    async def ready() -> JSONResponse:
        """200 once the model is loaded and one warm-up forward has run."""
        return JSONResponse(_state(), status_code=200 if judge.status == "ready" else 503)

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
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
    app.add_middleware(RequestIdMiddleware)
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
