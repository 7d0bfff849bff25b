"""ASGI middleware of the judge service: request-body limits and the loopback-only guard of a server without
keys. Pure ASGI (no FastAPI), so they wrap the app before routing and cost nothing per route."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse

from audio_thinker.core.net import is_loopback
from reward_server.auth import is_protected


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
