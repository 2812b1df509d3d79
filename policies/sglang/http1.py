"""A lean HTTP/1.1 client for model servers: keep-alive connection pools, bytes in, bytes out.

Why not aiohttp here: a turn's request to a model server is one POST of ready-made JSON bytes
and one small JSON answer, thousands of them in flight. aiohttp builds a dozen objects per
request (request and response objects, header multidicts, a timer context, traces) that
cost CPU on every turn and that the garbage collector walks while the request is in flight.
This client keeps one :class:`asyncio.Protocol` per pooled connection and per request a
future and a :class:`Response`; the request goes out as one write and the answer is parsed
in ``data_received``. Deadlines are watched per origin by one timer, not one per request
(with thousands of requests in flight, each timer was a push into and a removal from the
event loop's heap, compared in Python).

What it does: ``GET`` and ``POST`` over HTTP/1.1, plain or over TLS (``https://``: the
system's trusted certificates unless the pool is given a ``tls`` context), answers framed
by ``Content-Length``, ``Transfer-Encoding: chunked``
or the end of the connection, streamed reading of the body (for server-sent events), a
per-origin limit of open connections with waiting, idle connections kept for
``keepalive_s``, one deadline per request covering the wait for a connection, the
connect and the whole answer.

Failures: a refused connect raises :class:`ConnectionRefusedError` (an ``OSError``), another
failed connect :class:`ConnectFailed`; a connect not accepted within ``connect_timeout_s``
raises :class:`ConnectTimeout`; the request's
deadline raises :class:`TimeoutError`; a connection that ends before the answer is complete
raises :class:`Disconnected` (a :class:`ConnectionError`) that tells whether the
connection was a reused one and whether any byte of the answer had arrived. A request
cancelled before its answer is complete closes its connection (the server sees the client
go away), and that connection is never reused.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit

__all__ = ["ConnectFailed", "ConnectTimeout", "Disconnected", "Parts", "Pool", "Response"]

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024
_NEVER = float("inf")
#: The least time between two deadline checks of an origin (how late a deadline may fire).
_WATCH_GRAIN_S = 0.005


class Parts(tuple[bytes, ...]):
    """A request body given as fragments, sent as their concatenation: the request is
    written with one copy of them (a prompt's shared pieces are not joined first)."""

    __slots__ = ()


class ConnectTimeout(TimeoutError):
    """The server did not accept a connection within the pool's ``connect_timeout_s``."""


class ConnectFailed(ConnectionError):
    """A connect failed for another reason than a refusal (no route, an address that
    cannot be assigned, every address of a name failing): nothing was sent."""


class Disconnected(ConnectionError):
    """The connection ended before the answer was complete.

    ``reused``: the request went out on a pooled keep-alive connection; ``answered``: some
    byte of the answer had arrived.
    """

    def __init__(self, message: str, *, reused: bool, answered: bool) -> None:
        super().__init__(message)
        self.reused = reused
        self.answered = answered


class _BadAnswer(ConnectionError):
    """The server's bytes are not an HTTP/1.1 answer."""


class Response:
    """An answer's status, headers and body. The body is read with :meth:`read` (whole)
    or :meth:`lines` (as it arrives); either hands the connection back to its pool once
    the answer is complete. Use it inside ``async with pool.request(...)`` (or call
    :meth:`release`)."""

    __slots__ = ("_conn", "_head", "_released", "status")

    def __init__(self, conn: _Connection, status: int, head: bytes) -> None:
        self._conn = conn
        self._head = head
        self._released = False
        self.status = status

    @property
    def headers(self) -> dict[str, str]:
        """Header names in lower case (a repeated header keeps its last value)."""
        return _parse_fields(self._head)

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        while not conn.complete:
            await conn.wait()
        if conn.error is not None:
            raise conn.error
        body = bytes(conn.body)
        conn.body.clear()
        self.release()
        return body

    async def lines(self) -> AsyncIterator[bytes]:
        """The body line by line (``\\n`` kept), each as soon as it is complete; a last
        line without ``\\n`` comes at the end."""
        conn = self._conn
        body = conn.body
        start = 0
        while True:
            end = body.find(b"\n", start)
            if end >= 0:
                line = bytes(body[start : end + 1])
                start = end + 1
                yield line
                continue
            del body[:start]
            start = 0
            if conn.complete:
                if conn.error is not None:
                    raise conn.error
                break
            await conn.wait()
        if body:
            line = bytes(body)
            body.clear()
            yield line
        self.release()

    def release(self) -> None:
        """Give the connection back (kept if the answer is complete and keep-alive, closed
        otherwise). Called by :meth:`read` and :meth:`lines`; safe to call again."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.finish()
        conn.origin.give_back(conn)


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the parser of the answer in progress."""

    __slots__ = (
        "_buf",
        "_chunk_left",
        "_got_bytes",
        "_left",
        "_mode",
        "_waiter",
        "body",
        "closed",
        "complete",
        "error",
        "head",
        "idle_since",
        "keep",
        "origin",
        "transport",
        "uses",
    )

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.uses = 0
        self.idle_since = 0.0
        self.head: tuple[int, bytes] | None = None  # status, raw head
        self.body = bytearray()
        self.complete = False
        self.keep = True
        self.error: BaseException | None = None
        self._buf = bytearray()
        self._mode = 0  # 0: length, 1: chunked, 2: until the connection ends
        self._left = 0
        self._chunk_left = -1  # chunked: bytes left in the chunk (+2 for its CRLF); -1: size line
        self._got_bytes = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A uvloop transport is not an asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        eof = exc is None and self.error is None  # the server's end, not our abort
        if self.head is not None and self._mode == 2 and not self.complete and eof:
            self.complete = True
            self.keep = False
        elif not self.complete and self.uses and self.error is None:
            self.error = Disconnected(
                "the server closed the connection before the answer was complete"
                + (f" ({exc})" if exc else ""),
                reused=self.uses > 1,
                answered=self._got_bytes,
            )
        self._wake()
        self.origin.lost(self)

    def data_received(self, data: bytes) -> None:
        if self.complete or not self.uses:
            # Bytes nobody asked for (after a complete answer, or before any request):
            # the connection cannot be trusted for another request.
            self.keep = False
            if self.transport is not None:
                self.transport.abort()
            return
        self._got_bytes = True
        if self.head is None:
            buf = self._buf
            buf += data
            end = buf.find(_HEAD_END)
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self.fail(_BadAnswer("answer headers over 64 KiB"))
                return
            try:
                self._parse_head(bytes(buf[:end]))
            except ValueError:
                self.fail(_BadAnswer(f"not an HTTP/1.1 answer: {bytes(buf[:80])!r}"))
                return
            data = bytes(buf[end + 4 :])
            buf.clear()
        if data:
            self._feed(data)
        self._wake()

    # -- the answer -------------------------------------------------------------------------

    def _parse_head(self, raw: bytes) -> None:
        # Only what framing needs is looked up (the rest on demand: Response.headers).
        if raw[:7] != b"HTTP/1." or raw[8:9] != b" ":
            raise ValueError(raw[:12])
        status = int(raw[9:12])
        low = raw.lower()
        connection = _field(low, b"\r\nconnection:")
        if raw[7:8] == b"0":
            self.keep = connection == b"keep-alive"
        else:
            self.keep = connection != b"close"
        length = _field(low, b"\r\ncontent-length:")
        if b"chunked" in _field(low, b"\r\ntransfer-encoding:"):
            self._mode = 1
        elif length:
            self._mode = 0
            self._left = int(length)
        elif status in (204, 304) or 100 <= status < 200:
            self._mode = 0
            self._left = 0
        else:
            self._mode = 2
            self.keep = False
        self.head = (status, raw)
        if self._mode == 0 and self._left == 0:
            self.complete = True

    def _feed(self, data: bytes) -> None:
        if self.complete:
            return
        mode = self._mode
        if mode == 0:
            if len(data) >= self._left:
                if len(data) > self._left:
                    self.keep = False  # more than the answer: not reusable
                self.body += data[: self._left]
                self._left = 0
                self.complete = True
            else:
                self.body += data
                self._left -= len(data)
        elif mode == 2:
            self.body += data
        else:
            self._feed_chunked(data)

    def _feed_chunked(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while pos < len(buf):
            if self._chunk_left < 0:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                try:
                    size = int(bytes(buf[pos:end]).split(b";", 1)[0], 16)
                except ValueError:
                    self.fail(_BadAnswer("malformed chunk size"))
                    return
                if size == 0:
                    # The last chunk: an empty line ends it, after trailer lines if any.
                    if buf[end + 2 : end + 4] == b"\r\n" or buf.find(_HEAD_END, end) >= 0:
                        self.complete = True
                        buf.clear()
                        return
                    break  # keep the size line until the rest arrives
                pos = end + 2
                self._chunk_left = size + 2  # the payload and its CRLF
            take = min(self._chunk_left, len(buf) - pos)
            payload = min(take, self._chunk_left - 2)
            if payload > 0:
                self.body += buf[pos : pos + payload]
            self._chunk_left -= take
            pos += take
            if self._chunk_left == 0:
                self._chunk_left = -1
        del buf[:pos]

    def fail(self, exc: BaseException) -> None:
        """End the request in progress with ``exc`` and close the connection."""
        if self.error is None:
            self.error = exc
        self.keep = False
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self) -> None:
        if self.complete:
            return  # the answer is all here, only not read yet
        self.fail(TimeoutError("no complete answer within the request's deadline"))

    # -- driven by the pool and the response -----------------------------------------------

    def send(self, data: bytes, deadline: float) -> None:
        assert self.transport is not None
        self.uses += 1
        self.head = None
        self.complete = False
        self.error = None
        self._got_bytes = False
        self._chunk_left = -1
        self.body.clear()
        self._buf.clear()
        self.origin.watch(self, deadline)
        self.transport.write(data)

    async def wait(self) -> None:
        """Until more of the answer arrives (or it fails: then raise)."""
        if self.error is not None:
            raise self.error
        if self.closed and not self.complete:
            raise Disconnected("the connection is closed", reused=self.uses > 1, answered=True)
        waiter = self._waiter = self.origin.loop.create_future()
        try:
            await waiter
        except BaseException:
            self.keep = False
            raise
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """The request is over: stop watching its deadline; close the connection unless
        the answer was read completely and the server keeps it alive."""
        self.origin.unwatch(self)
        if not (self.complete and self.keep and self.error is None) and not self.closed:
            self.keep = False
            if self.transport is not None:
                self.transport.abort()


class _Origin:
    """The connections to one ``scheme://host:port``: idle ones, how many are open, and the
    requests waiting for one."""

    __slots__ = (
        "_watch",
        "_watch_at",
        "busy",
        "head_tail",
        "host",
        "idle",
        "inflight",
        "loop",
        "open",
        "pool",
        "port",
        "timer_context",
        "tls",
        "waiters",
    )

    def __init__(self, pool: Pool, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.tls = tls
        #: What follows the request's path in its head, up to the end of the Host line.
        name = f"[{host}]" if ":" in host else host  # an IPv6 literal
        self.head_tail = b" HTTP/1.1\r\nHost: %s:%d\r\n" % (name.encode(), port)
        self.loop = asyncio.get_running_loop()
        #: The context its timers run in (their callbacks read no context variable): one
        #: per origin, not a copy of the caller's per call. Not shared across origins: an
        #: origin lives on one loop, and two threads must not enter one context at once.
        self.timer_context = contextvars.Context()
        #: The connections with a request in flight, and its deadline (see :meth:`watch`).
        self.inflight: dict[_Connection, float] = {}
        self._watch: asyncio.TimerHandle | None = None
        self._watch_at = _NEVER
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()  # connections with a request in progress
        #: Connection slots taken: open connections, connects in progress, and slots handed
        #: to a waiting request that has not connected yet.
        self.open = 0
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()

    def watch(self, conn: _Connection, deadline: float) -> None:
        """``conn``'s request must be answered by ``deadline`` (until :meth:`_Connection.finish`).

        One timer per origin, due at the earliest deadline in flight: when it fires it
        expires every request past its deadline and is set again for the earliest left, at
        least ``_WATCH_GRAIN_S`` later, so a deadline is enforced at most that late. Requests
        answered meanwhile cost a dict entry each, set and removed, and no timer.
        """
        self.inflight[conn] = deadline
        if deadline < self._watch_at:
            self._arm(deadline)

    def unwatch(self, conn: _Connection) -> None:
        """``conn``'s request is over: its deadline no longer applies (the timer stays set
        for the earliest deadline seen, and finds nothing due if that one is gone)."""
        self.inflight.pop(conn, None)

    def _arm(self, at: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._watch_at = at
        self._watch = self.loop.call_at(at, self._check, context=self.timer_context)

    def _check(self) -> None:
        self._watch = None
        self._watch_at = _NEVER
        now = self.loop.time()
        inflight = self.inflight
        for conn in [c for c, deadline in inflight.items() if deadline <= now]:
            del inflight[conn]
            conn._expire()
        if inflight:
            self._arm(max(min(inflight.values()), now + _WATCH_GRAIN_S))

    async def acquire(self, deadline: float) -> _Connection:
        idle = self.idle
        keep_s = self.pool.keepalive_s
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < keep_s:
                self.busy.add(conn)
                return conn
            self._drop(conn)
        if self.open < self.pool.connections_per_host:
            self.open += 1  # a slot for the connection made below
        else:
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self.waiters.append(waiter)
            timer = self.loop.call_at(deadline, _expire_waiter, waiter)
            try:
                got = await waiter
            except BaseException:
                # Handed a connection or a slot, but cancelled before resuming: pass it on.
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()
                    if handed is None:
                        self._release_slot()
                    else:
                        self.give_back(handed)
                raise
            finally:
                timer.cancel()
            if got is not None:
                self.busy.add(got)
                return got
            # Handed a slot (``open`` still counts it): connect in it.
        conn = await self._connect(deadline)
        self.busy.add(conn)
        return conn

    async def _connect(self, deadline: float) -> _Connection:
        """A new connection in a slot the caller holds (released if the connect fails)."""
        limit = min(self.pool.connect_timeout_s, max(deadline - self.loop.time(), 0.0))
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.tls
                ),
                limit,
            )
        except TimeoutError:
            self._release_slot()
            if limit < self.pool.connect_timeout_s:
                raise TimeoutError("no complete answer within the request's deadline") from None
            raise ConnectTimeout(f"not accepted within {self.pool.connect_timeout_s:g}s") from None
        except ConnectionRefusedError:
            self._release_slot()
            raise
        except OSError as exc:
            self._release_slot()
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        except BaseException:
            self._release_slot()
            raise
        return conn

    def give_back(self, conn: _Connection) -> None:
        """``conn``'s request is over: keep it for the next (a waiting request first) or
        close it."""
        self.busy.discard(conn)
        if conn.closed or not conn.keep or self.pool.closed or self.pool.keepalive_s <= 0:
            if not conn.closed:
                self._drop(conn)
            return
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        """``conn`` closed (by either side): its slot is free."""
        if conn in self.idle:
            self.idle.remove(conn)
        self.busy.discard(conn)
        self._release_slot()

    def _drop(self, conn: _Connection) -> None:
        if conn.transport is not None and not conn.closed:
            conn.transport.abort()  # connection_lost frees the slot

    def _release_slot(self) -> None:
        """A slot is free: hand it to the first waiting request (which connects in it), or
        count it free."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.open -= 1

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch, self._watch_at = None, _NEVER
        for conn in list(self.idle):
            self._drop(conn)
        self.idle.clear()
        for conn in list(self.busy):
            conn.fail(ConnectionError("the connection pool is closed"))
        self.inflight.clear()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError("the connection pool is closed"))
        self.waiters.clear()


def _field(low_head: bytes, key: bytes) -> bytes:
    """The value of the header line starting with ``key`` (``b"\\r\\nname:"``) in a
    lower-cased head, stripped; ``b""`` when absent."""
    start = low_head.find(key)
    if start < 0:
        return b""
    start += len(key)
    end = low_head.find(b"\r\n", start)
    return (low_head[start:] if end < 0 else low_head[start:end]).strip()


def _parse_fields(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _expire_waiter(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no complete answer within the request's deadline"))


class _Request:
    """``async with pool.request(...) as resp``: the response, released on exit."""

    __slots__ = ("_args", "_pool", "_resp")

    def __init__(self, pool: Pool, args: tuple[str, str, bytes | Parts | None, bytes]) -> None:
        self._pool = pool
        self._args = args
        self._resp: Response | None = None

    async def __aenter__(self) -> Response:
        self._resp = await self._pool.send(*self._args)
        return self._resp

    async def __aexit__(self, *exc: object) -> None:
        if self._resp is not None:
            self._resp.release()


class Pool:
    """Keep-alive HTTP/1.1 connections to any number of origins (``http://host:port``).

    ``connections_per_host`` bounds the open connections per origin (requests beyond it
    wait for one); ``request_timeout_s`` bounds each request from its start to the end of
    its answer; ``connect_timeout_s`` bounds each connect; an idle connection is kept for
    ``keepalive_s`` (0: a new connection per request); ``tls`` is the TLS context of
    ``https://`` origins (default: the system's trust store). Open it inside a running
    event loop; :meth:`close` closes every connection.
    """

    def __init__(
        self,
        *,
        connections_per_host: int,
        request_timeout_s: float,
        connect_timeout_s: float,
        keepalive_s: float = 60.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if connections_per_host < 1:
            raise ValueError("connections_per_host must be at least 1")
        self.connections_per_host = connections_per_host
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.tls = tls
        self.closed = False
        self._origins: dict[str, _Origin] = {}

    def request(
        self, method: str, url: str, body: bytes | Parts | None = None, *, headers: bytes = b""
    ) -> _Request:
        """``async with pool.request("POST", url, body) as resp``: ``headers`` are extra
        header lines, each ending with ``\\r\\n`` (a body is sent as JSON)."""
        return _Request(self, (method, url, body, headers))

    async def send(
        self, method: str, url: str, body: bytes | Parts | None = None, headers: bytes = b""
    ) -> Response:
        """Send a request and return once its status and headers arrived; the caller must
        read the body or call :meth:`Response.release`."""
        if self.closed:
            raise ConnectionError("the connection pool is closed")
        origin, path = self._route(url)
        loop = origin.loop
        deadline = loop.time() + self.request_timeout_s
        conn = await origin.acquire(deadline)
        start = (method.encode(), b" ", path, origin.head_tail)
        parts = () if body is None else (body,) if isinstance(body, bytes) else body
        if body is None:
            data = b"".join((*start, headers, b"\r\n"))
        else:
            data = b"".join(
                (
                    *start,
                    b"Content-Type: application/json\r\n",
                    headers,
                    b"Content-Length: %d\r\n\r\n" % sum(map(len, parts)),
                    *parts,
                )
            )
        conn.send(data, deadline)
        del data, body, parts  # not held while the answer is awaited (thousands in flight)
        try:
            while conn.head is None:
                await conn.wait()
        except BaseException:
            conn.finish()
            origin.give_back(conn)
            raise
        status, head = conn.head
        return Response(conn, status, head)

    def _route(self, url: str) -> tuple[_Origin, bytes]:
        scheme_end = url.find("://")
        slash = url.find("/", scheme_end + 3 if scheme_end >= 0 else 0)
        base = url if slash < 0 else url[:slash]
        path = b"/" if slash < 0 else url[slash:].encode()
        origin = self._origins.get(base)
        if origin is None:
            parts = urlsplit(base)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http:// or https:// URL: {url!r}")
            tls = None
            if parts.scheme == "https":
                tls = self.tls or ssl.create_default_context()
            port = parts.port or (443 if tls else 80)
            origin = self._origins[base] = _Origin(self, parts.hostname, port, tls)
        return origin, path

    async def close(self) -> None:
        """Close every connection; requests in progress fail."""
        self.closed = True
        for origin in self._origins.values():
            origin.close()
