"""Bearer API keys: where they come from, where they are required, and when running without them is allowed.

Keys come from `AUDIO_THINKER_JUDGE_API_KEYS` (comma-separated) and/or a file with one key per line.
Every `/v1/*` route and `/get_reward` need `Authorization: Bearer <key>`; `/health`, `/ready`, `/metrics`
(and the OpenAPI docs) are public. The check runs as ASGI middleware, before the body is even read, so an
unauthenticated caller learns nothing about the API beyond the 401.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from starlette.responses import JSONResponse

from audio_thinker.core.errors import UserError
from audio_thinker.core.net import is_loopback

API_KEYS_ENV = "AUDIO_THINKER_JUDGE_API_KEYS"


class AuthConfigError(UserError, ValueError):
    """Keys missing, unreadable, or `--no-auth` where it is not allowed."""


def load_api_keys(key_file: str | None = None, env: Mapping[str, str] | None = None) -> frozenset[str]:
    """Keys from the environment variable and the key file (blank lines and `#` comments skipped)."""
    env = os.environ if env is None else env
    keys = [k.strip() for k in env.get(API_KEYS_ENV, "").split(",") if k.strip()]
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise AuthConfigError(f"API key file {path} does not exist")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if any(c.isspace() for c in line):
                raise AuthConfigError(f"{path}:{n}: an API key must not contain whitespace")
            keys.append(line)
    return frozenset(keys)


def check_auth_setup(host: str, keys: frozenset[str], no_auth: bool) -> None:
    """Refuse a server that would be open by accident."""
    if keys and no_auth:
        raise AuthConfigError("--no-auth was given but API keys are configured: choose one")
    if not keys and not no_auth:
        raise AuthConfigError(
            f"no API keys: set {API_KEYS_ENV}=key1,key2 or --api-key-file FILE, or pass --no-auth (loopback hosts only)"
        )
    if no_auth and not is_loopback(host):
        raise AuthConfigError(f"--no-auth is refused on the non-loopback host {host!r}: configure API keys")


def is_protected(path: str) -> bool:
    return path.startswith("/v1/") or path == "/get_reward"


def key_matches(header: str | None, keys: frozenset[str]) -> bool:
    """`Bearer <key>` with a configured key; constant-time comparison against every key."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    token_bytes = token.strip().encode()
    return any(hmac.compare_digest(token_bytes, key.encode()) for key in keys)


class AuthMiddleware:
    """401 for protected routes without a valid key; no-op when the server runs with --no-auth."""

    def __init__(self, app: Callable, keys: frozenset[str]):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and self.keys and is_protected(scope["path"]):
            header = dict(scope["headers"]).get(b"authorization")
            if not key_matches(header.decode("latin-1") if header else None, self.keys):
                detail = "missing API key" if header is None else "invalid API key"
                response = JSONResponse(
                    {"detail": f"{detail}: send 'Authorization: Bearer <key>'"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
