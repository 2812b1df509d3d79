"""HTTP to a model server, generic over the server's API: the session (a lean keep-alive
pool, :mod:`.http1`), POST with failures sorted into retryable or not, GET, server-sent
events, best-effort calls.

Nothing here knows SGLang's request or answer shapes; an SGLang-style or vLLM-style policy
builds the body, calls :func:`post` and decodes what comes back.

A POST fails with :class:`Retryable` when retrying is safe because nothing was generated:
the connection was refused or not accepted within the session's ``sock_connect`` timeout,
the server answered 503, or a *reused* keep-alive connection
was closed by the server before any response byte (a stale pooled connection; RFC 9112
section 9.3.1). Any other HTTP status
raises :class:`HTTPStatusError` (a :class:`~gymux.errors.PolicyError`) with an excerpt of the
body, and keeps the status and the whole body for callers that read the server's error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from gymux.errors import PolicyError
from gymux.policies.sglang.http1 import (
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    Parts,
    Pool,
    Response,
)

__all__ = [
    "EventStream",
    "HTTPStatusError",
    "Parts",
    "Pool",
    "Response",
    "Retryable",
    "describe",
    "get",
    "json_bytes",
    "open_session",
    "post",
    "post_quietly",
    "post_read",
]

#: The payload that ends a server-sent event stream.
_SSE_DONE = b"[DONE]"


class Retryable(Exception):
    """Safe to retry: nothing was generated.

    ``refused``: the server is down (the caller may mark it unhealthy). ``stale``: a reused
    keep-alive connection was closed before the request was read.
    """

    def __init__(self, message: str, *, refused: bool, stale: bool = False) -> None:
        super().__init__(message)
        self.refused = refused
        self.stale = stale


class HTTPStatusError(PolicyError):
    """The server answered with an HTTP status that is neither 200 nor retryable.

    ``status`` and ``body`` (the raw answer, e.g. the server's JSON error) are kept.
    """

    def __init__(self, message: str, *, status: int, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def describe(exc: BaseException) -> str:
    """``"TypeName: message"`` (or just the type name when the message is empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def json_bytes(body: Any) -> bytes | Parts:
    """``body`` as JSON, as :func:`post` sends it (bytes, or :class:`Parts` of bytes, are
    taken as already encoded)."""
    return body if isinstance(body, bytes | Parts) else msgspec.json.encode(body)


def open_session(
    *, connections_per_host: int, request_timeout_s: float, connect_timeout_s: float
) -> Pool:
    """A keep-alive connection pool (see :mod:`.http1`): ``request_timeout_s`` bounds each
    request to the end of its answer, ``connect_timeout_s`` each connect."""
    return Pool(
        connections_per_host=connections_per_host,
        request_timeout_s=request_timeout_s,
        connect_timeout_s=connect_timeout_s,
    )


async def get(session: Pool, url: str) -> bytes:
    """``GET url``'s body; :class:`HTTPStatusError` unless the status is 200."""
    async with session.request("GET", url) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise HTTPStatusError(f"GET {url}: HTTP {resp.status}", status=resp.status, body=body)
        return body


async def _send(session: Pool, server: str, path: str, body: Any, label: str) -> Response:
    """Send; the response if its status is 200 (see :func:`post` for what else raises)."""
    try:
        resp = await session.send("POST", server + path, json_bytes(body))
    except ConnectTimeout:
        # Not accepted within connect_timeout_s (a server too busy to accept, not down):
        # nothing was sent, so it is retried. A TimeoutError too, so without this it would
        # read as the request's total timeout ("no answer within request_timeout_s").
        raise Retryable(
            f"{server} did not accept a connection within {session.connect_timeout_s:g}s",
            refused=False,
        ) from None
    except Disconnected as exc:
        if not exc.reused or exc.answered:
            raise
        raise Retryable(
            f"{server} closed a reused keep-alive connection before answering ({describe(exc)})",
            refused=False,
            stale=True,
        ) from None
    except (ConnectionRefusedError, ConnectFailed) as exc:
        raise Retryable(f"{server} refused the connection ({exc})", refused=True) from None
    if resp.status == 200:
        return resp
    try:
        raw = await resp.read()
    finally:
        resp.release()
    if resp.status == 503:
        excerpt = raw[:200].decode("utf-8", "replace")
        raise Retryable(f"{server}: HTTP 503{': ' + excerpt if excerpt else ''}", refused=False)
    text = raw[:200].decode("utf-8", "replace")
    raise HTTPStatusError(
        f"{label} {server}: HTTP {resp.status}: {text}", status=resp.status, body=raw
    )


async def post_read(session: Pool, server: str, path: str, body: Any, *, label: str) -> bytes:
    """``POST server + path`` with the JSON ``body``; the whole answer's body if its
    status is 200. Raises as :func:`post` does."""
    resp = await _send(session, server, path, body, label)
    try:
        return await resp.read()
    finally:
        resp.release()


@asynccontextmanager
async def post(
    session: Pool, server: str, path: str, body: Any, *, label: str
) -> AsyncIterator[Response]:
    """``POST server + path`` with the JSON ``body``; yields the response if its status is
    200 (read it whole, or line by line with :class:`EventStream`).

    ``body`` is encoded once with msgspec and sent as bytes (pass bytes from
    :func:`json_bytes` to encode it only once across retries).

    Raises :class:`Retryable` (see the module doc) or, for another status,
    :class:`HTTPStatusError` ``"{label} {server}: HTTP {status}: {excerpt}"``. Other
    failures propagate: :class:`TimeoutError` when the answer is not complete within the
    session's ``request_timeout_s``, an ``OSError`` when the connection fails mid-answer.
    """
    resp = await _send(session, server, path, body, label)
    try:
        yield resp
    finally:
        resp.release()


async def post_quietly(session: Pool, url: str, body: Any, *, timeout_s: float) -> None:
    """``POST url`` and ignore the outcome (best effort, bounded by ``timeout_s``)."""
    try:
        with anyio.fail_after(timeout_s):
            async with session.request("POST", url, json_bytes(body)) as resp:
                await resp.read()
    except Exception:  # best effort
        pass


class EventStream:
    """The ``data:`` payloads of a server-sent event stream, up to ``data: [DONE]``.

    ``async for payload in EventStream(resp)``; afterwards :attr:`finished` says whether
    ``[DONE]`` arrived (a stream that ends without it was cut short).
    """

    def __init__(self, resp: Response) -> None:
        self._resp = resp
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for line in self._resp.lines():
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == _SSE_DONE:
                self.finished = True
                return
            yield payload
