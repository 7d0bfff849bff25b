"""The one HTTP client of an OpenAI-compatible chat endpoint (`vllm serve`, any `/v1/chat/completions`), for
`make-cot`'s rationales: bounded concurrency, retries with exponential backoff, and an error that says what the
server answered instead of an invented text."""

from __future__ import annotations

import asyncio
import json

import httpx

from audio_thinker.core.errors import UserError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 30.0


class ChatError(UserError, RuntimeError):
    """A completion that failed (after the retries, for transient failures); the message names the cause."""


def chat_url(base: str) -> str:
    """`http://host:port`, `.../v1` or the full `.../v1/chat/completions` -> the full completions URL."""
    base = base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


def completion_text(body: str) -> str:
    """The first choice's message content of a chat-completions response body; ChatError for anything else."""
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ChatError(f"not a chat-completions response: {body[:200]!r}") from None
    if not isinstance(content, str):
        raise ChatError(f"the response's message content is {type(content).__name__}, not text")
    return content


class ChatClient:
    """Async chat completions against one endpoint; at most `concurrency` requests in flight."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        concurrency: int,
    ):
        """The limits are `CotOptions`' (`make-cot --timeout-s ...`)."""
        self.url = chat_url(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(headers=headers, timeout=timeout_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.slots = asyncio.Semaphore(concurrency)

    async def served_model(self) -> str:
        """The first model the endpoint serves (`GET /v1/models`), for requests that need a model name."""
        url = self.url.removesuffix("/chat/completions") + "/models"
        try:
            response = await self.http.get(url)
            response.raise_for_status()
            return str(response.json()["data"][0]["id"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise ChatError(f"{url}: cannot list the served models ({exc}); pass the model name") from None

    async def complete(self, model: str, messages: list[dict], max_tokens: int, temperature: float = 0.0) -> str:
        """The assistant's text. Connection errors, timeouts, 408/429/5xx and bodies that are not a completion are
        retried `max_retries` times with backoff `backoff_s * 2**attempt`; other statuses fail at once."""
        payload = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1)))
            try:
                async with self.slots:
                    response = await self.http.post(self.url, json=payload)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:200]!r}"
                continue
            if response.status_code != 200:
                raise ChatError(f"{self.url}: HTTP {response.status_code}: {response.text[:200]!r}")
            try:
                return completion_text(response.text)
            except ChatError as exc:
                last = str(exc)
        raise ChatError(f"{self.url}: failed after {self.max_retries + 1} attempts; last: {last}")

    async def aclose(self) -> None:
        await self.http.aclose()
