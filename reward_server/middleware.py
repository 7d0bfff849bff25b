"""ASGI middleware of the judge service: request ids and generic 500s, request-body limits, and the loopback-only
guard of a server without keys. Pure ASGI (no FastAPI), so they wrap the app before routing and cost nothing per
route."""

from __future__ import annotations

import contextvars
import logging
import secrets
from collections.abc import Callable

from starlette.responses import JSONResponse

from audio_thinker.core.net import is_loopback
from reward_server.auth import is_protected

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("judge_request_id", default="-")


def request_id() -> str:
    """The id of the request being answered (what its response's X-Request-ID and 5xx body carry)."""
    return _request_id.get()


class RequestIdMiddleware:
    """Every response carries a fresh X-Request-ID; an unexpected error answers a generic 500 with that id (the
    traceback goes to the log under it), never the exception's text."""

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = secrets.token_hex(8)
        token = _request_id.set(rid)
        started = False

        async def send_with_id(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s: %s %s failed", rid, scope["method"], scope["path"])
            if started:
                raise
            response = JSONResponse({"detail": "internal error", "request_id": rid}, status_code=500)
            await response(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)


class BodyLimitMiddleware:
    """413 for a request body over `max_bytes`, checked on Content-Length and on the bytes actually read."""

    def __init__(self, app: Callable, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse(
            {"detail": f"request body is larger than the limit of {self.max_bytes} bytes"}, status_code=413
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


class LoopbackOnlyMiddleware:
    """Without API keys, protected routes serve loopback clients only (a second guard behind --no-auth)."""

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        client = scope.get("client")
        if (
            scope["type"] == "http"
            and is_protected(scope["path"])
            and not (client and is_loopback(client[0]))
        ):
            response = JSONResponse(
                {"detail": "this judge runs without API keys and serves loopback clients only"}, 401
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
