"""A policy that calls any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Works with OpenAI and other commercial APIs, vLLM, llama.cpp's server, SGLang's OpenAI
layer, ... ::

    policy = OpenAICompatPolicy(base_url="http://localhost:8000", model="qwen2.5-7b")
    async with Runtime() as rt:
        await rt.run(Workload(env="maze"), policy=policy)

* One :class:`aiohttp.ClientSession` (keep-alive connection pool) per policy, opened by
  ``async with policy`` and closed on exit; the runtime does both.
* ``base_url`` may be given with or without the ``/v1`` suffix (``http://h:8000``,
  ``http://h:8000/v1`` and ``http://h:8000/v1/chat/completions`` all work).
* The API key is read from the environment variable ``api_key_env`` (default
  ``OPENAI_API_KEY``) when the policy is entered, and sent as ``Authorization: Bearer``.
  Without the variable no ``Authorization`` header is sent (local servers need none).
  The key is never logged nor shown in ``repr``.
* At most ``max_concurrency`` requests are in flight at once (an
  :class:`anyio.CapacityLimiter`); a request waiting out a retry keeps its slot, so a
  rate-limited server sees the pressure drop.
* HTTP 429: waits what ``Retry-After`` says (seconds or an HTTP date; exponential backoff
  when absent), at most ``max_rate_limit_retries`` times; a ``Retry-After`` longer than
  ``max_retry_after_s`` fails the call at once rather than blocking the episode.
* HTTP 5xx, connection errors and per-request timeouts (``request_timeout_s``) are
  retried ``max_retries`` times with exponential backoff and full jitter.
* HTTP 400 whose message says the prompt exceeds the model's context ->
  ``PolicyResponse(finish_reason="context_limit")`` (the episode ends ``context_limit``).
  Other 4xx, malformed JSON and responses without ``choices`` raise :class:`PolicyError`
  with the status and an excerpt of the body.
* ``logprobs=True`` asks for ``logprobs`` and reads ``choices[0].logprobs.content[*].logprob``
  when the server returns them.

**Text only.** Chat-completions responses carry text, not token ids, so responses have
``token_ids=None`` and trajectories produced with this policy have ``tokens=None``: they
record the conversation as text (and per-token logprobs, when asked for, on the
response only). Use the SGLang policy for token-exact training data.
"""

from __future__ import annotations

import email.utils
import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
import anyio
import msgspec

from gymux.policies.protocol import PolicyError, PolicyRequest, PolicyResponse

__all__ = ["OpenAICompatPolicy", "chat_completions_url", "parse_retry_after"]

_CONTEXT_RE = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|too many tokens|prompt is too long"
    r"|exceeds? the (available )?context",
    re.IGNORECASE,
)


def chat_completions_url(base_url: str) -> str:
    """``http://h:8000`` / ``http://h:8000/v1`` / ``.../v1/chat/completions`` -> the endpoint."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Retry(Exception):
    """Internal: the attempt failed in a retryable way."""

    def __init__(self, message: str, *, rate_limited: bool = False, wait_s: float | None = None):
        super().__init__(message)
        self.rate_limited = rate_limited
        self.wait_s = wait_s


def _excerpt(body: bytes | str, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _error_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body excerpt."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return _excerpt(body)
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            parts = [str(err[k]) for k in ("message", "code", "type") if err.get(k)]
            if parts:
                return _excerpt(" | ".join(parts))
        elif isinstance(err, str):
            return _excerpt(err)
        if isinstance(data.get("message"), str):
            return _excerpt(data["message"])
    return _excerpt(body)


class OpenAICompatPolicy:
    """Chat completions over HTTP; see the module docstring for behaviour."""

    name: str = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 64,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        logprobs: bool = False,
        request_timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 4,
        max_rate_limit_retries: int = 8,
        max_retry_after_s: float = 120.0,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        extra_body: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not model:
            raise ValueError("model must be a non-empty model name")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if request_timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if max_retries < 0 or max_rate_limit_retries < 0:
            raise ValueError("retry counts must be >= 0")
        if not api_key_env:
            raise ValueError("api_key_env must name an environment variable")
        self.url = chat_completions_url(base_url)
        self.model = model
        self.version = model
        if name is not None:
            self.name = name
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.stop = list(stop) if stop is not None else None
        self.logprobs = logprobs
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_retries = max_retries
        self.max_rate_limit_retries = max_rate_limit_retries
        self.max_retry_after_s = max_retry_after_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.extra_body = dict(extra_body or {})
        self._session: aiohttp.ClientSession | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        #: Counters, for tests and progress displays.
        self.stats: dict[str, int] = {
            "requests": 0,
            "rate_limited": 0,
            "retried": 0,
            "failed": 0,
        }

    def __repr__(self) -> str:  # never show the key
        return (
            f"OpenAICompatPolicy(url={self.url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency})"
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("OpenAICompatPolicy is already entered")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        connector = aiohttp.TCPConnector(limit=self.max_concurrency, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(connector=connector, headers=headers)
        self._limiter = anyio.CapacityLimiter(self.max_concurrency)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.close()

    # -- requests -------------------------------------------------------------------------

    def build_body(self, request: PolicyRequest) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.stop:
            body["stop"] = self.stop
        if self.logprobs:
            body["logprobs"] = True
        body.update(self.extra_body)
        return body

    def _backoff(self, attempt: int) -> float:
        cap = min(self.backoff_max_s, self.backoff_s * (2**attempt))
        return random.uniform(cap / 2, cap)  # "equal jitter": never zero, never above cap

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        session, limiter = self._session, self._limiter
        if session is None or limiter is None:
            raise PolicyError("OpenAICompatPolicy used outside 'async with policy'")
        payload = msgspec.json.encode(self.build_body(request))
        failures = 0
        rate_limits = 0
        async with limiter:
            while True:
                try:
                    return await self._attempt(session, payload)
                except _Retry as retry:
                    if retry.rate_limited:
                        rate_limits += 1
                        self.stats["rate_limited"] += 1
                        if rate_limits > self.max_rate_limit_retries:
                            self.stats["failed"] += 1
                            raise PolicyError(
                                f"{self.url}: still rate limited (HTTP 429) after "
                                f"{self.max_rate_limit_retries} retries: {retry}"
                            ) from None
                        wait = retry.wait_s
                        if wait is None:
                            wait = self._backoff(rate_limits - 1)
                        elif wait > self.max_retry_after_s:
                            self.stats["failed"] += 1
                            raise PolicyError(
                                f"{self.url}: rate limited (HTTP 429) with Retry-After "
                                f"{wait:.0f}s, more than max_retry_after_s="
                                f"{self.max_retry_after_s:g}"
                            ) from None
                    else:
                        failures += 1
                        if failures > self.max_retries:
                            self.stats["failed"] += 1
                            raise PolicyError(
                                f"{self.url}: failed after {failures} attempts: {retry}"
                            ) from None
                        wait = self._backoff(failures - 1)
                    self.stats["retried"] += 1
                    await anyio.sleep(wait)

    async def _attempt(self, session: aiohttp.ClientSession, payload: bytes) -> PolicyResponse:
        self.stats["requests"] += 1
        timeout = aiohttp.ClientTimeout(
            total=self.request_timeout_s, sock_connect=self.connect_timeout_s
        )
        try:
            async with session.post(self.url, data=payload, timeout=timeout) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                body = await resp.read()
        except TimeoutError:
            raise _Retry(f"no response within {self.request_timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        if status == 429:
            raise _Retry(
                _error_message(body), rate_limited=True, wait_s=parse_retry_after(retry_after)
            )
        if status >= 500:
            raise _Retry(f"HTTP {status}: {_error_message(body)}")
        if status != 200:
            message = _error_message(body)
            if status in (400, 413, 422) and _CONTEXT_RE.search(message):
                return PolicyResponse(text="", finish_reason="context_limit")
            self.stats["failed"] += 1
            raise PolicyError(f"{self.url}: HTTP {status}: {message}")
        return self._parse(body)

    def _parse(self, body: bytes) -> PolicyResponse:
        def bad(why: str) -> PolicyError:
            self.stats["failed"] += 1
            return PolicyError(f"{self.url}: malformed response ({why}): {_excerpt(body)!r}")

        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise bad("not JSON") from None
        if not isinstance(data, dict):
            raise bad("not a JSON object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise bad("no choices")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise bad("choices[0].message missing")
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise bad("choices[0].message.content is not a string")
        finish: Literal["stop", "length"] = (
            "length" if choice.get("finish_reason") == "length" else "stop"
        )
        logprobs: list[float] | None = None
        lp = choice.get("logprobs")
        if self.logprobs and isinstance(lp, dict) and isinstance(lp.get("content"), list):
            try:
                logprobs = [float(item["logprob"]) for item in lp["content"]]
            except (KeyError, TypeError, ValueError):
                raise bad("choices[0].logprobs.content[*].logprob unreadable") from None
        usage = data.get("usage")
        prompt_tokens = completion_tokens = None
        if isinstance(usage, dict):
            p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
            prompt_tokens = p if isinstance(p, int) else None
            completion_tokens = c if isinstance(c, int) else None
        return PolicyResponse(
            text=content,
            finish_reason=finish,
            token_ids=None,
            logprobs=logprobs,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
