"""The dashboard's guards (docs/dashboard.md, "Security"): the Host allow-list of a loopback server, the token's
sessions and one-time links, redirects that stay on the site, and the headers every answer carries.

- Loopback: only requests whose Host is a loopback name are served (421 otherwise), so a web page that rebinds
  its own DNS name to 127.0.0.1 cannot read the dashboard from the user's browser.
- With a token (needed off loopback): `Authorization: Bearer <token>`, or a session cookie holding a random
  session id (never the token; HttpOnly, SameSite=Strict, Max-Age, Secure behind TLS). A session starts from a
  one-time link `/?token=<link token>`: the command prints one, `POST /api/link` with the bearer token mints
  another; a link token works once, then it is gone.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

COOKIE = "audio_thinker_dashboard"
SESSION_S = 12 * 3600
LINK_S = 24 * 3600  # an unused link token expires after this
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' {nonce}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def host_name(header: str) -> str:
    """The name of a Host header, without port or IPv6 brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def same_site_path(path: str) -> str:
    """A redirect target on this site: one leading slash (`//host` and `/\\host` would leave it), percent-encoded."""
    return "/" + quote(path.lstrip("/\\"), safe="/:@-._~!$'()*+,;=")


class Sessions:
    """Random session ids and one-time link tokens, in memory (a restart logs everyone out)."""

    def __init__(self, token: str):
        self.token = token
        self.sessions: dict[str, float] = {}  # id -> expiry
        self.links: dict[str, float] = {}
        self.lock = threading.Lock()

    def mint_link(self) -> str:
        link = secrets.token_urlsafe(24)
        with self.lock:
            self.links[link] = time.time() + LINK_S
        return link

    def use_link(self, link: str) -> bool:
        """True once per minted link token (and only before it expires)."""
        with self.lock:
            expiry = self.links.pop(link, 0.0)
        return expiry > time.time()

    def start(self) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.time()
        with self.lock:
            self.sessions = {k: v for k, v in self.sessions.items() if v > now}
            self.sessions[sid] = now + SESSION_S
        return sid

    def valid(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())
        sid = request.cookies.get(COOKIE, "")
        with self.lock:
            return bool(sid) and self.sessions.get(sid, 0.0) > time.time()

    def login(self, request: Request) -> Response | None:
        """The answer to a `?token=` link: a redirect that sets the session cookie, or a 401 for a used or unknown
        link; None when the request carries no link."""
        link = request.query_params.get("token")
        if link is None:
            return None
        if not self.use_link(link):
            return PlainTextResponse("this link was used or is unknown: ask for a new one (POST /api/link)", 401)
        rest = "&".join(f"{quote(k)}={quote(v)}" for k, v in request.query_params.multi_items() if k != "token")
        response = RedirectResponse(same_site_path(request.url.path) + ("?" + rest if rest else ""), status_code=303)
        response.set_cookie(COOKIE, self.start(), max_age=SESSION_S, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")  # fmt: skip
        return response


def secure_headers(response: Response, nonce: str) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value.format(nonce=f"'nonce-{nonce}'"))
    return response
