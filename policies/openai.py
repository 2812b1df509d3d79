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
  retried ``max_retries`` times with exponential backoff and equal jitter
  (:func:`gymux._backoff.backoff_delay`).
* HTTP 400 whose message says the prompt exceeds the model's context ->
  ``PolicyResponse(finish_reason="context_limit")`` (the episode ends ``context_limit``).
  Other 4xx, malformed JSON and responses without ``choices`` raise :class:`PolicyError`
  with the status and an excerpt of the body. Answers are decoded into msgspec Structs
  (:class:`ChatCompletion`, :class:`ErrorBody`); what does not fit is a malformed response.
* Options: :class:`gymux.policies.options.OpenAIOptions` (``options=``), or the same names
  as keywords; an invalid one raises :class:`PolicyOptionsError` naming the field.
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
import re
import time
from typing import Annotated, Any, Literal

import aiohttp
import anyio
import msgspec

from gymux._backoff import backoff_delay
from gymux.errors import PolicyOptionsError
from gymux.policies.base import BasePolicy
from gymux.policies.options import OpenAIOptions, build_options
from gymux.policies.protocol import PolicyError, PolicyRequest, PolicyResponse

__all__ = [
    "ChatCompletion",
    "ErrorBody",
    "OpenAICompatPolicy",
    "OpenAIOptions",
    "chat_completions_url",
    "parse_retry_after",
]

_CONTEXT_RE = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|too many tokens|prompt is too long"
    r"|exceeds? the (available )?context",
    re.IGNORECASE,
)


# -- the wire: what an OpenAI-compatible server answers ---------------------------------------


class _TokenLogprob(msgspec.Struct):
    logprob: float


class _Logprobs(msgspec.Struct):
    content: list[_TokenLogprob] | None = None


class _ChatMessage(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _ChatMessage
    finish_reason: str | None = None
    #: Decoded only when the policy asked for logprobs.
    logprobs: msgspec.Raw = msgspec.Raw(b"null")


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ChatCompletion(msgspec.Struct):
    """The parts of a ``/v1/chat/completions`` answer the policy reads."""

    choices: Annotated[list[_Choice], msgspec.Meta(min_length=1)]
    usage: _Usage | None = None


class _ErrorDetail(msgspec.Struct):
    message: str | None = None
    code: str | int | None = None
    type: str | None = None


class ErrorBody(_ErrorDetail):
    """An error answer: ``{"error": {"message", "code", "type"}}``, ``{"error": "..."}`` or
    the detail fields at the top level."""

    error: _ErrorDetail | str | None = None


def chat_completions_url(base_url: str) -> str:
    """``http://h:8000`` / ``http://h:8000/v1`` / ``.../v1/chat/completions`` -> the endpoint."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise PolicyOptionsError(f"base_url must start with http:// or https://, got {base_url!r}")
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
        data = msgspec.json.decode(body, type=ErrorBody)
    except msgspec.DecodeError:
        return _excerpt(body)
    if isinstance(data.error, str):
        return _excerpt(data.error)
    detail = data.error or data
    parts = [str(v) for v in (detail.message, detail.code, detail.type) if v]
    if parts:
        return _excerpt(" | ".join(parts))
    if data.message:
        return _excerpt(data.message)
    return _excerpt(body)


class OpenAICompatPolicy(BasePolicy):
    """Chat completions over HTTP; see the module docstring for behaviour.

    Give the options as ``options=OpenAIOptions(...)`` or as keywords of the same names.
    """

    name = "openai"
    Options = OpenAIOptions

    def __init__(self, *, options: OpenAIOptions | None = None, **keywords: Any) -> None:
        opts = self.options = build_options(
            OpenAIOptions, options, keywords, who="OpenAICompatPolicy"
        )
        self.url = chat_completions_url(opts.base_url)
        self.model = opts.model
        self.version = opts.model
        if opts.name is not None:
            self.name = opts.name
        self.api_key_env = opts.api_key_env
        self.max_concurrency = opts.max_concurrency
        self.logprobs = opts.logprobs
        self.request_timeout_s = opts.request_timeout_s
        self.max_retry_after_s = opts.max_retry_after_s
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

    async def aopen(self) -> None:
        """Open the keep-alive connection pool (reading the API key now)."""
        if self._session is not None:
            raise RuntimeError("OpenAICompatPolicy is already entered")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        connector = aiohttp.TCPConnector(limit=self.max_concurrency, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(connector=connector, headers=headers)
        self._limiter = anyio.CapacityLimiter(self.max_concurrency)

    @property
    def request_slots(self) -> tuple[int, int]:
        """``(max_concurrency, requests waiting for a slot now)``: what the run summary
        samples to tell whether this cap held episodes back."""
        limiter = self._limiter
        waiting = limiter.statistics().tasks_waiting if limiter is not None else 0
        return self.max_concurrency, waiting

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.close()

    # -- requests -------------------------------------------------------------------------

    def build_body(self, request: PolicyRequest) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        opts = self.options
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if opts.temperature is not None:
            body["temperature"] = opts.temperature
        if opts.top_p is not None:
            body["top_p"] = opts.top_p
        if opts.max_tokens is not None:
            body["max_tokens"] = opts.max_tokens
        if opts.stop:
            body["stop"] = opts.stop
        if self.logprobs:
            body["logprobs"] = True
        body.update(opts.extra_body)
        return body

    def _backoff(self, attempt: int) -> float:
        """Seconds before the retry after the ``attempt``-th failure (``attempt >= 1``)."""
        return backoff_delay(attempt, self.options.backoff_s, self.options.backoff_max_s)

    def _give_up(self, message: str) -> PolicyError:
        self.stats["failed"] += 1
        return PolicyError(f"{self.url}: {message}")

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        session, limiter = self._session, self._limiter
        if session is None or limiter is None:
            raise PolicyError("OpenAICompatPolicy used outside 'async with policy'")
        payload = msgspec.json.encode(self.build_body(request))
        opts = self.options
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
                        if rate_limits > opts.max_rate_limit_retries:
                            raise self._give_up(
                                f"still rate limited (HTTP 429) after "
                                f"{opts.max_rate_limit_retries} retries: {retry}"
                            ) from None
                        wait = retry.wait_s
                        if wait is None:
                            wait = self._backoff(rate_limits)
                        elif wait > self.max_retry_after_s:
                            raise self._give_up(
                                f"rate limited (HTTP 429) with Retry-After {wait:.0f}s, more "
                                f"than max_retry_after_s={self.max_retry_after_s:g}"
                            ) from None
                    else:
                        failures += 1
                        if failures > opts.max_retries:
                            raise self._give_up(
                                f"failed after {failures} attempts: {retry}"
                            ) from None
                        wait = self._backoff(failures)
                    self.stats["retried"] += 1
                    await anyio.sleep(wait)

    async def _attempt(self, session: aiohttp.ClientSession, payload: bytes) -> PolicyResponse:
        self.stats["requests"] += 1
        timeout = aiohttp.ClientTimeout(
            total=self.request_timeout_s, sock_connect=self.options.connect_timeout_s
        )
        try:
            async with session.post(self.url, data=payload, timeout=timeout) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                body = await resp.read()
        except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: not the total timeout
            raise _Retry(
                f"no connection accepted within {self.options.connect_timeout_s:g}s"
            ) from None
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
            raise self._give_up(f"HTTP {status}: {message}")
        return self._parse(body)

    def _parse(self, body: bytes) -> PolicyResponse:
        def bad(why: str) -> PolicyError:
            return self._give_up(f"malformed response ({why}): {_excerpt(body)!r}")

        try:
            data = msgspec.json.decode(body, type=ChatCompletion)
        except msgspec.ValidationError as exc:
            raise bad(str(exc)) from None
        except msgspec.DecodeError:
            raise bad("not JSON") from None
        choice = data.choices[0]
        finish: Literal["stop", "length"] = "length" if choice.finish_reason == "length" else "stop"
        logprobs: list[float] | None = None
        if self.logprobs:
            try:
                read = msgspec.json.decode(choice.logprobs, type=_Logprobs | None)
            except msgspec.DecodeError as exc:
                raise bad(f"choices[0].logprobs unreadable: {exc}") from None
            if read is not None and read.content is not None:
                logprobs = [item.logprob for item in read.content]
        usage = data.usage or _Usage()
        return PolicyResponse(
            text=choice.message.content or "",
            finish_reason=finish,
            token_ids=None,
            logprobs=logprobs,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
