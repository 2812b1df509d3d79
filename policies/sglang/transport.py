"""HTTP to a model server, generic over the server's API: the session, POST with failures
sorted into retryable or not, GET, server-sent events, best-effort calls.

Nothing here knows SGLang's request or answer shapes; an SGLang-style or vLLM-style policy
builds the body, calls :func:`post` and decodes what comes back.

A POST fails with :class:`Retryable` when retrying is safe because nothing was generated:
the connection was refused or not accepted within the session's ``sock_connect`` timeout,
the server answered 503, or a *reused* keep-alive connection
was closed by the server before any response byte (a stale pooled connection; RFC 9112
section 9.3.1 -- aiohttp itself retries only idempotent methods). Any other HTTP status
raises :class:`HTTPStatusError` (a :class:`~gymux.errors.PolicyError`) with an excerpt of the
body, and keeps the status and the whole body for callers that read the server's error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import aiohttp
import anyio
import msgspec

from gymux.errors import PolicyError

__all__ = [
    "EventStream",
    "HTTPStatusError",
    "Retryable",
    "describe",
    "get",
    "json_bytes",
    "open_session",
    "post",
    "post_quietly",
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


_JSON_HEADERS = {"Content-Type": "application/json"}


def _json_text(body: object) -> str:
    # msgspec encodes a body of a thousand token ids ~60x faster than json.dumps.
    return msgspec.json.encode(body).decode()


def json_bytes(body: Any) -> bytes:
    """``body`` as JSON, as :func:`post` sends it (bytes are taken as already encoded)."""
    return body if isinstance(body, bytes) else msgspec.json.encode(body)


#: Whether the calling task's last request went out on a pooled (reused) connection; set by
#: :class:`_ReuseConnector` in the task that sends the request (aiohttp connects in it).
_reused: ContextVar[bool] = ContextVar("gymux_http_reused", default=False)
_USED = "_gymux_used"  # marks a connection's protocol once a request went out on it


class _ReuseConnector(aiohttp.TCPConnector):
    """A TCP connector that notes in :data:`_reused` whether a connection is a pooled one.

    Cheaper than an :class:`aiohttp.TraceConfig` (whose hooks cost a dozen coroutine calls
    and parameter objects on every request): one attribute test and one context variable.
    """

    async def connect(self, req: Any, traces: list[Any], timeout: aiohttp.ClientTimeout) -> Any:  # noqa: ASYNC109
        conn = await super().connect(req, traces, timeout)
        proto = conn.protocol
        if proto is not None:
            _reused.set(getattr(proto, _USED, False))
            setattr(proto, _USED, True)
        return conn


def open_session(
    *, connections_per_host: int, request_timeout_s: float, connect_timeout_s: float
) -> aiohttp.ClientSession:
    """A keep-alive session whose requests can tell whether they reused a connection."""
    connector = _ReuseConnector(limit=0, limit_per_host=connections_per_host, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s),
        json_serialize=_json_text,
    )


async def get(session: aiohttp.ClientSession, url: str) -> bytes:
    """``GET url``'s body; :class:`HTTPStatusError` unless the status is 200."""
    async with session.get(url) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise HTTPStatusError(f"GET {url}: HTTP {resp.status}", status=resp.status, body=body)
        return body


@asynccontextmanager
async def post(
    session: aiohttp.ClientSession, server: str, path: str, body: Any, *, label: str
) -> AsyncIterator[aiohttp.ClientResponse]:
    """``POST server + path`` with the JSON ``body``; yields the response if its status is 200.

    ``body`` is encoded once with msgspec and sent as bytes (pass bytes from
    :func:`json_bytes` to encode it only once across retries).

    Raises :class:`Retryable` (see the module doc) or, for another status,
    :class:`HTTPStatusError` ``"{label} {server}: HTTP {status}: {excerpt}"``. Other client
    errors (a connection dropped mid-answer) propagate as they are.
    """
    _reused.set(False)
    try:
        resp_cm = session.post(server + path, data=json_bytes(body), headers=_JSON_HEADERS)
        resp = await resp_cm.__aenter__()
    except aiohttp.ClientConnectorError as exc:
        raise Retryable(f"{server} refused the connection ({exc.os_error})", refused=True) from None
    except aiohttp.ConnectionTimeoutError:
        # Not accepted within sock_connect (a server too busy to accept, not down): nothing
        # was sent, so it is retried. A TimeoutError too, so without this it read as the
        # request's total timeout ("no answer within request_timeout_s") at once.
        raise Retryable(
            f"{server} did not accept a connection within {session.timeout.sock_connect:g}s",
            refused=False,
        ) from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        if not _reused.get():
            raise
        raise Retryable(
            f"{server} closed a reused keep-alive connection before answering ({describe(exc)})",
            refused=False,
            stale=True,
        ) from None
    try:
        if resp.status == 503:
            excerpt = (await resp.read())[:200].decode("utf-8", "replace")
            raise Retryable(f"{server}: HTTP 503{': ' + excerpt if excerpt else ''}", refused=False)
        if resp.status != 200:
            raw = await resp.read()
            text = raw[:200].decode("utf-8", "replace")
            raise HTTPStatusError(
                f"{label} {server}: HTTP {resp.status}: {text}", status=resp.status, body=raw
            )
        yield resp
    finally:
        await resp_cm.__aexit__(None, None, None)


async def post_quietly(
    session: aiohttp.ClientSession, url: str, body: Any, *, timeout_s: float
) -> None:
    """``POST url`` and ignore the outcome (best effort, bounded by ``timeout_s``)."""
    try:
        with anyio.fail_after(timeout_s):
            async with session.post(url, data=json_bytes(body), headers=_JSON_HEADERS) as resp:
                await resp.read()
    except Exception:  # best effort
        pass


class EventStream:
    """The ``data:`` payloads of a server-sent event stream, up to ``data: [DONE]``.

    ``async for payload in EventStream(resp)``; afterwards :attr:`finished` says whether
    ``[DONE]`` arrived (a stream that ends without it was cut short).
    """

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for line in self._resp.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == _SSE_DONE:
                self.finished = True
                return
            yield payload
