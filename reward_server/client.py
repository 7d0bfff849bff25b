"""Light judge client (httpx + the shared pydantic schemas; importing it never imports torch).

`JudgeClient` (sync) and `AsyncJudgeClient` keep one pooled connection set, time out every call, and
retry 429 / 5xx / connection errors with exponential backoff and jitter, waiting at least what the
server's `Retry-After` asks. After the last retry they raise JudgeUnavailableError: a failed judge call
is never turned into a score or a reward of 0. Other 4xx answers raise JudgeRequestError at once (retrying
a bad request cannot help).

    with JudgeClient("http://127.0.0.1:8000", api_key="...") as judge:
        results = judge.judge([{"question": q, "think": t, "answer": a}], scores=["consistency"])

One module of ~380 lines: the sync and async clients share their retry policy and answer checks, and every HTTP
call to the judge goes through here.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from audio_thinker.core.judge_config import JudgeConfig
from audio_thinker.core.errors import UserError
from audio_thinker.core.vocab import ScoreMode
from reward_server.schemas import (
    InfoResponse,
    JudgeItem,
    JudgeRequest,
    JudgeResponse,
    JudgeResult,
    RewardRequest,
    RewardResponse,
    ScoreName,
)

# A run's judge settings are the defaults of every client (one default per key: `JudgeConfig`).
TIMEOUT_S = JudgeConfig.model_fields["call_timeout_s"].default
MAX_RETRIES = JudgeConfig.model_fields["max_retries"].default

API_KEY_ENV = "AUDIO_THINKER_JUDGE_API_KEY"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
M = TypeVar("M", bound=BaseModel)


class JudgeError(UserError, RuntimeError):
    """A judge call that did not produce results; `status` is the last HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None, detail: Any = None):
        super().__init__(message)
        self.status = status
        self.detail = detail


class JudgeRequestError(JudgeError):
    """The server refused the request (401, 413, 422, ...): fix the request, do not retry."""


class JudgeUnavailableError(JudgeError):
    """Every attempt failed with 429 / 5xx / a connection error / a timeout."""


def retry_delay(
    attempt: int,
    base_s: float,
    max_s: float,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (0-based).

    Exponential backoff with "equal jitter": uniform in [b/2, b] for b = min(max_s, base_s * 2**attempt), so
    retries of many clients spread out but never collapse to 0. A server's Retry-After is a floor, capped at
    max_s so that a bad header cannot stall the caller indefinitely.
    """
    backoff = min(max_s, base_s * 2**attempt)
    delay = (rng or random).uniform(backoff / 2, backoff)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_s))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text


def _judge_request(
    items: Sequence[JudgeItem | Mapping[str, Any]],
    scores: Sequence[ScoreName] | None,
    score_mode: ScoreMode | None,
) -> JudgeRequest:
    """The request body; `score_mode` None leaves the field out (the server's default; servers that predate the
    field accept the request)."""
    body: dict[str, Any] = {"items": [i.model_dump() if isinstance(i, JudgeItem) else dict(i) for i in items]}
    if scores is not None:
        body["scores"] = list(scores)
    if score_mode is not None:
        body["score_mode"] = score_mode
    return JudgeRequest.model_validate(body)


def _parse(model: type[M], response: httpx.Response, url: str) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise JudgeError(
            f"{url}: the server's answer does not match {model.__name__}: {exc}", response.status_code
        ) from None


def _results(request: JudgeRequest, response: JudgeResponse, url: str) -> list[JudgeResult]:
    if len(response.results) != len(request.items):
        raise JudgeError(f"{url}: {len(response.results)} results for {len(request.items)} items")
    return response.results


class _Base:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        max_retries: int,
        backoff_base_s: float,
        backoff_max_s: float,
        seed: int | None,
    ):
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self.limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.rng = random.Random(seed)

    def _outcome(
        self, response: httpx.Response | None, error: Exception | None, path: str, attempt: int
    ) -> float | None:
        """None when `response` is the answer; else the delay before the next attempt (raises when none is left)."""
        url = self.base_url + path
        if response is not None and response.status_code < 400:
            return None
        if response is not None and response.status_code not in RETRY_STATUSES:
            detail = _detail(response)
            raise JudgeRequestError(
                f"{url}: HTTP {response.status_code}: {detail}", response.status_code, detail
            )
        if attempt >= self.max_retries:
            what = (
                f"HTTP {response.status_code}: {_detail(response)}"
                if response is not None
                else f"{type(error).__name__}: {error}"
            )
            raise JudgeUnavailableError(
                f"{url}: failed after {attempt + 1} attempts, last: {what}",
                response.status_code if response is not None else None,
                _detail(response) if response is not None else None,
            )
        retry_after = parse_retry_after(response.headers.get("retry-after")) if response is not None else None
        return retry_delay(attempt, self.backoff_base_s, self.backoff_max_s, retry_after, self.rng)

    def _ready(self, response: httpx.Response) -> bool:
        """Whether a /ready answer says ready; raises when it says the model failed to load (no point waiting)."""
        if response.status_code == 200:
            return True
        try:
            body = response.json()
        except ValueError:
            return False
        if isinstance(body, dict) and body.get("status") == "failed":
            raise JudgeUnavailableError(
                f"{self.base_url}: the judge failed to load: {body.get('error', '')}",
                response.status_code,
                body,
            )
        return False


class JudgeClient(_Base):
    """Blocking client; safe to share between threads (httpx.Client is)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = TIMEOUT_S,
        max_retries: int = MAX_RETRIES,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        seed: int | None = None,
    ):
        super().__init__(base_url, api_key, timeout_s, max_retries, backoff_base_s, backoff_max_s, seed)
        self.http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, limits=self.limits
        )

    def _call(self, method: str, path: str, body: BaseModel | None = None) -> httpx.Response:
        content = body.model_dump_json(exclude_none=True) if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else None
        attempt = 0
        while True:
            response, error = None, None
            try:
                response = self.http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as exc:
                error = exc
            delay = self._outcome(response, error, path, attempt)
            if delay is None:
                assert response is not None
                return response
            time.sleep(delay)
            attempt += 1

    def judge(
        self,
        items: Sequence[JudgeItem | Mapping[str, Any]],
        scores: Sequence[ScoreName] | None = None,
        score_mode: ScoreMode | None = None,
    ) -> list[JudgeResult]:
        """Results in item order; `scores` defaults to both consistency and think_quality, `score_mode`
        (expected / argmax) to the server's."""
        request = _judge_request(items, scores, score_mode)
        response = _parse(JudgeResponse, self._call("POST", "/v1/judge", request), self.base_url)
        return _results(request, response, self.base_url)

    def get_reward(
        self, query: Sequence[str], prompts: Sequence[str], labels: Sequence[str]
    ) -> RewardResponse:
        request = RewardRequest(query=list(query), prompts=list(prompts), labels=list(labels))
        return _parse(RewardResponse, self._call("POST", "/get_reward", request), self.base_url)

    def info(self) -> InfoResponse:
        return _parse(InfoResponse, self._call("GET", "/v1/info"), self.base_url)

    def is_ready(self) -> bool:
        """One /ready probe, no retries."""
        try:
            return self.http.get("/ready").status_code == 200
        except httpx.TransportError:
            return False

    def is_alive(self) -> bool:
        """One /health probe, no retries: whether the process answers at all (it may still be loading)."""
        try:
            return self.http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.2) -> None:
        """Block until /ready answers 200; JudgeUnavailableError after `timeout_s` or as soon as the judge
        reports that its model failed to load."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._ready(self.http.get("/ready")):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise JudgeUnavailableError(f"{self.base_url}: not ready after {timeout_s:g} s")
            time.sleep(poll_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncJudgeClient(_Base):
    """asyncio client: many concurrent `judge` calls share one connection pool."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = TIMEOUT_S,
        max_retries: int = MAX_RETRIES,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        seed: int | None = None,
    ):
        super().__init__(base_url, api_key, timeout_s, max_retries, backoff_base_s, backoff_max_s, seed)
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, limits=self.limits
        )

    async def _call(self, method: str, path: str, body: BaseModel | None = None) -> httpx.Response:
        content = body.model_dump_json(exclude_none=True) if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else None
        attempt = 0
        while True:
            response, error = None, None
            try:
                response = await self.http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as exc:
                error = exc
            delay = self._outcome(response, error, path, attempt)
            if delay is None:
                assert response is not None
                return response
            await asyncio.sleep(delay)
            attempt += 1

    async def judge(
        self,
        items: Sequence[JudgeItem | Mapping[str, Any]],
        scores: Sequence[ScoreName] | None = None,
        score_mode: ScoreMode | None = None,
    ) -> list[JudgeResult]:
        request = _judge_request(items, scores, score_mode)
        response = _parse(JudgeResponse, await self._call("POST", "/v1/judge", request), self.base_url)
        return _results(request, response, self.base_url)

    async def get_reward(
        self, query: Sequence[str], prompts: Sequence[str], labels: Sequence[str]
    ) -> RewardResponse:
        request = RewardRequest(query=list(query), prompts=list(prompts), labels=list(labels))
        return _parse(RewardResponse, await self._call("POST", "/get_reward", request), self.base_url)

    async def info(self) -> InfoResponse:
        return _parse(InfoResponse, await self._call("GET", "/v1/info"), self.base_url)

    async def is_ready(self) -> bool:
        try:
            return (await self.http.get("/ready")).status_code == 200
        except httpx.TransportError:
            return False

    async def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._ready(await self.http.get("/ready")):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise JudgeUnavailableError(f"{self.base_url}: not ready after {timeout_s:g} s")
            await asyncio.sleep(poll_s)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
