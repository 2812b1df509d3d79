"""TEST DOUBLE: a scripted stand-in for the OpenAI chat completions API, on loopback.

This is not a model. It implements ``POST /v1/chat/completions`` with the request and
response shapes of the OpenAI API (``choices[0].message.content``, ``finish_reason``,
``usage``, ``logprobs.content[*].logprob``) so that the real aiohttp client in
``gymux.policies.openai`` can be tested over real sockets.

* ``reply``: a function of the request's messages (``list[dict]``) returning the text,
  sync or async; default ``"Thought: ...\\nAction: move up"``.
* ``latency_s``: delay before each answer.
* ``finish_reason``: what ``choices[0].finish_reason`` says.
* logprobs: returned (one per whitespace-separated word) when the request asks for them.
* Failure injection: ``fail_next(kind, times=1, **params)`` queues failures answered
  before normal replies: ``"429"`` (``retry_after=`` seconds or an HTTP-date string, or
  None for no header), ``"500"``, ``"malformed"`` (non-JSON body with status 200),
  ``"no_choices"``, ``"hang"`` (never answers until the client gives up),
  ``"context"`` (HTTP 400 with a context-length message, as vLLM/OpenAI send).
* Every request is recorded (``requests``: headers incl. Authorization, JSON body, time).
* ``max_seen_concurrency``: the most requests handled at the same moment.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from aiohttp import web

Reply = Callable[[list[dict[str, Any]]], "str | Awaitable[str]"]


def _default_reply(messages: list[dict[str, Any]]) -> str:
    return "Thought: I will go up.\nAction: move up"


@dataclass
class Recorded:
    headers: dict[str, str]
    body: Any
    at: float
    path: str


@dataclass
class _Failure:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


class OpenAIDouble:
    """Run with ``async with OpenAIDouble(...) as srv:``; ``srv.base_url`` is ``http://127.0.0.1:PORT``."""

    def __init__(
        self,
        *,
        reply: Reply = _default_reply,
        latency_s: float = 0.0,
        finish_reason: str = "stop",
    ) -> None:
        self.reply = reply
        self.latency_s = latency_s
        self.finish_reason = finish_reason
        self.requests: list[Recorded] = []
        self.failures: deque[_Failure] = deque()
        self.in_flight = 0
        self.max_seen_concurrency = 0
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._closing: anyio.Event | None = None

    def fail_next(self, kind: str, times: int = 1, **params: Any) -> None:
        for _ in range(times):
            self.failures.append(_Failure(kind, params))

    async def __aenter__(self) -> OpenAIDouble:
        self._closing = anyio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._closing is not None:
            self._closing.set()  # release hanging handlers so cleanup does not wait on them
        if self._runner is not None:
            with anyio.CancelScope(shield=True):
                await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = await request.json()
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(Recorded(dict(request.headers), body, time.monotonic(), request.path))
        self.in_flight += 1
        self.max_seen_concurrency = max(self.max_seen_concurrency, self.in_flight)
        try:
            return await self._answer(body)
        finally:
            self.in_flight -= 1

    async def _answer(self, body: Any) -> web.StreamResponse:
        if self.latency_s:
            await anyio.sleep(self.latency_s)
        if self.failures:
            failure = self.failures.popleft()
            response = await self._fail(failure)
            if response is not None:
                return response
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return web.json_response(
                {"error": {"message": "messages is required", "type": "invalid_request_error"}},
                status=400,
            )
        text = self.reply(body["messages"])
        if inspect.isawaitable(text):
            text = await text
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": self.finish_reason,
        }
        words = str(text).split()
        if body.get("logprobs"):
            choice["logprobs"] = {
                "content": [
                    {"token": w, "logprob": -0.1 * (i + 1), "bytes": None, "top_logprobs": []}
                    for i, w in enumerate(words)
                ]
            }
        else:
            choice["logprobs"] = None
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [choice],
                "usage": {
                    "prompt_tokens": prompt_words,
                    "completion_tokens": len(words),
                    "total_tokens": prompt_words + len(words),
                },
            }
        )

    async def _fail(self, failure: _Failure) -> web.StreamResponse | None:
        kind, params = failure.kind, failure.params
        if kind == "429":
            headers = {}
            if params.get("retry_after") is not None:
                headers["Retry-After"] = str(params["retry_after"])
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}},
                status=429,
                headers=headers,
            )
        if kind == "500":
            return web.json_response(
                {"error": {"message": "internal error", "type": "server_error"}}, status=500
            )
        if kind == "malformed":
            return web.Response(
                body=b'{"choices": [ {"message": oops', content_type="application/json"
            )
        if kind == "no_choices":
            return web.json_response({"id": "x", "object": "chat.completion", "choices": []})
        if kind == "hang":
            assert self._closing is not None
            with anyio.move_on_after(params.get("seconds", 3600)):
                await self._closing.wait()
            return None
        if kind == "context":
            return web.json_response(
                {
                    "error": {
                        "message": (
                            "This model's maximum context length is 4096 tokens. However, "
                            "your messages resulted in 5000 tokens. Please reduce the length."
                        ),
                        "type": "invalid_request_error",
                        "code": "context_length_exceeded",
                    }
                },
                status=400,
            )
        raise ValueError(f"unknown failure kind {kind!r}")
