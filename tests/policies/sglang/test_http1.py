"""The lean HTTP/1.1 client (:mod:`gymux.policies.sglang.http1`) against real sockets.

Most servers here are raw ``asyncio.start_server`` handlers on 127.0.0.1 that write their
answers byte for byte, so framing, keep-alive and failures are exactly what each test says;
one test runs a real aiohttp server (and one a real uvicorn server, when installed). Errors
are also checked through :mod:`gymux.policies.sglang.transport`, which sorts them into
``Retryable`` and ``HTTPStatusError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from gymux.policies.sglang import transport
from gymux.policies.sglang.http1 import ConnectTimeout, Disconnected, Parts, Pool

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

#: Generous bound for anything that should happen promptly (a failure, not a hang).
PROMPT = 10.0


# -- a scripted raw server ----------------------------------------------------------------


class Request:
    """One request as the server read it off the wire."""

    def __init__(self, line: bytes, head: bytes, body: bytes) -> None:
        self.line = line
        self.head = head
        self.body = body
        self.headers: dict[str, str] = {}
        for raw in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = raw.partition(":")
            self.headers[name.strip().lower()] = value.strip()


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection; ``None`` at EOF (or reset) before one starts."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    head = head[:-4]
    req = Request(head.split(b"\r\n", 1)[0], head, b"")
    length = int(req.headers.get("content-length", "0"))
    if length:
        req.body = await reader.readexactly(length)
    return req


async def until_eof(reader: asyncio.StreamReader) -> None:
    """Until the client goes away (EOF or a reset); what it sends meanwhile is dropped."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


def answer(body: bytes = b"ok", *, status: str = "200 OK", extra: bytes = b"") -> bytes:
    """An HTTP/1.1 answer framed by Content-Length."""
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        extra,
        body,
    )


#: The plain keep-alive answer most servers here give.
OK = answer()

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Scripted:
    """``async with Scripted(handler) as srv``: a TCP server on 127.0.0.1 running
    ``handler(reader, writer, n)`` for its n-th accepted connection (from 0). It counts
    accepted connections, the most open at once, and the connections whose client went
    away (``eofs``: the handler reports them with :meth:`saw_eof`)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.eofs: asyncio.Queue[int] = asyncio.Queue()
        self.requests: list[Request] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        n = self.accepted
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(reader, writer, n)
        except (ConnectionError, asyncio.CancelledError):
            pass  # cancelled: the server is closing (a cancelled task would be logged)
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def saw_eof(self, reader: asyncio.StreamReader, n: int) -> None:
        """Wait until connection ``n``'s client goes away, then report it in ``eofs``."""
        await until_eof(reader)
        self.eofs.put_nowait(n)

    async def next_eof(self) -> int:
        """The next connection whose client went away (fails the test if none does)."""
        with anyio.fail_after(PROMPT):
            return await self.eofs.get()


def keepalive(reply: bytes | Callable[[Request], bytes], srv: list[Scripted]) -> Handler:
    """A handler that answers every request on the connection with ``reply`` (bytes, or
    made from the request) and records the requests in ``srv[0].requests``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (req := await read_request(reader)) is not None:
            srv[0].requests.append(req)
            writer.write(reply(req) if callable(reply) else reply)
            await writer.drain()

    return handle


def serve_keepalive(reply: bytes | Callable[[Request], bytes] = OK) -> Scripted:
    """A keep-alive server that answers every request with ``reply``."""
    box: list[Scripted] = []
    srv = Scripted(keepalive(reply, box))
    box.append(srv)
    return srv


def new_pool(**kw: float) -> Pool:
    opts = {"connections_per_host": 4, "request_timeout_s": 10.0, "connect_timeout_s": 5.0}
    opts.update(kw)
    return Pool(**opts)  # type: ignore[arg-type]


async def get_body(pool: Pool, url: str) -> tuple[int, bytes]:
    async with pool.request("GET", url) as resp:
        return resp.status, await resp.read()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- requests on the wire -----------------------------------------------------------------


async def test_post_body_and_headers_arrive_intact_and_get_has_no_body() -> None:
    """A POST carries the exact body with Host, Content-Type: application/json and
    Content-Length (plus the caller's extra header lines); a GET sends no body and no
    Content-Length, and the server reads both off one connection in order."""
    body = b'{"text": "h\xc3\xa9llo", "n": [1, 2, 3]}' + b"x" * 100_000
    async with serve_keepalive(lambda req: answer(b"got %d" % len(req.body))) as srv:
        pool = new_pool()
        try:
            async with pool.request(
                "POST", srv.url + "/generate?x=1", body, headers=b"X-Trace: abc\r\n"
            ) as resp:
                assert resp.status == 200
                assert resp.headers["content-length"] == str(len(b"got 100036"))
                assert await resp.read() == b"got %d" % len(body)
            assert await get_body(pool, srv.url + "/health") == (200, b"got 0")
        finally:
            await pool.close()
    post, get = srv.requests
    port = srv.url.rsplit(":", 1)[1]
    assert post.line == b"POST /generate?x=1 HTTP/1.1"
    assert post.body == body
    assert post.headers["host"] == f"127.0.0.1:{port}"
    assert post.headers["content-type"] == "application/json"
    assert post.headers["content-length"] == str(len(body))
    assert post.headers["x-trace"] == "abc"
    assert get.line == b"GET /health HTTP/1.1"
    assert get.headers["host"] == f"127.0.0.1:{port}"
    assert "content-length" not in get.headers and "content-type" not in get.headers
    assert get.body == b""
    assert srv.accepted == 1


async def test_a_body_in_parts_arrives_as_their_concatenation() -> None:
    """``Parts`` (a prompt's shared pieces and the rest of a body) is written as one
    request whose body is the fragments in order, with their total Content-Length; through
    ``transport.post_read`` too, on the same keep-alive connection."""
    parts = Parts((b'{"input_ids":[', b"1,2" * 3000, b",", b"", b"7]", b',"x":"\xc3\xa9"}'))
    whole = b"".join(parts)
    async with serve_keepalive(lambda req: answer(b"got %d" % len(req.body))) as srv:
        pool = new_pool()
        try:
            async with pool.request("POST", srv.url + "/generate", parts) as resp:
                assert await resp.read() == b"got %d" % len(whole)
            got = await transport.post_read(pool, srv.url, "/generate", parts, label="t")
            assert got == b"got %d" % len(whole)
        finally:
            await pool.close()
    assert [r.body for r in srv.requests] == [whole, whole]
    assert [r.headers["content-length"] for r in srv.requests] == [str(len(whole))] * 2
    assert srv.accepted == 1


async def test_requests_in_flight_do_not_hold_the_bytes_they_wrote() -> None:
    """Once written, a request's bytes are not kept while its answer is awaited: with 40
    requests of 200 KB in flight (the server has read them all and holds its answers), the
    client holds far less than 40 x 200 KB (thousands of in-flight 2k-token prompts were
    ~100 MB of request copies)."""
    import tracemalloc

    n, size = 40, 200_000
    release = asyncio.Event()
    all_in = asyncio.Event()
    count = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, k: int) -> None:
        while (req := await read_request(reader)) is not None:
            assert len(req.body) == size
            del req
            count[0] += 1
            if count[0] == n:
                all_in.set()
            await release.wait()
            writer.write(OK)
            await writer.drain()

    body = Parts((b"x" * size,))
    async with Scripted(handle) as srv:
        pool = new_pool(connections_per_host=n)
        statuses: list[int] = []

        async def one() -> None:
            async with pool.request("POST", srv.url + "/generate", body) as resp:
                await resp.read()
                statuses.append(resp.status)

        tracemalloc.start()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
                with anyio.fail_after(PROMPT):
                    await all_in.wait()
                held, _ = tracemalloc.get_traced_memory()
                release.set()
        finally:
            tracemalloc.stop()
            await pool.close()
    assert statuses == [200] * n
    assert held < n * size / 4, f"{held} bytes traced with {n} requests in flight"


# -- answer framing -----------------------------------------------------------------------


async def test_content_length_answer_and_empty_answers() -> None:
    """A Content-Length body is read exactly (bytes after it are not part of it); a 204 and
    a ``Content-Length: 0`` answer have empty bodies and keep the connection."""
    replies = iter(
        [
            answer(b"0123456789"),
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            answer(b"last"),
        ]
    )
    async with serve_keepalive(lambda req: next(replies)) as srv:
        pool = new_pool()
        try:
            assert await get_body(pool, srv.url + "/a") == (200, b"0123456789")
            assert await get_body(pool, srv.url + "/b") == (204, b"")
            assert await get_body(pool, srv.url + "/c") == (200, b"")
            assert await get_body(pool, srv.url + "/d") == (200, b"last")
        finally:
            await pool.close()
    assert srv.accepted == 1


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    b"5;x=y\r\nhello\r\n"
    b"1\r\n \r\n"
    b'A;name="quoted value"\r\n0123456789\r\n'
    b"2\r\n\r\n\r\n"  # a chunk whose payload is CRLF itself
    b"0\r\nX-Trailer: t1\r\nX-Other: t2\r\n\r\n"
)
CHUNKED_BODY = b"hello 0123456789\r\n"


async def test_chunked_answer_with_extensions_and_trailers() -> None:
    """A chunked answer in one write: chunk extensions are ignored, a payload holding CRLF
    is kept, trailers end the answer, and the connection is reused afterwards."""
    async with serve_keepalive(CHUNKED) as srv:
        pool = new_pool()
        try:
            for _ in range(3):
                async with pool.request("GET", srv.url + "/") as resp:
                    assert resp.headers["transfer-encoding"] == "chunked"
                    assert await resp.read() == CHUNKED_BODY
        finally:
            await pool.close()
    assert srv.accepted == 1


async def test_chunked_answer_one_byte_per_write() -> None:
    """The same chunked answer written one byte at a time (a drain and a trip through the
    event loop between bytes, so every framing boundary falls mid-read) parses the same,
    twice on one connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            for i in range(len(CHUNKED)):
                writer.write(CHUNKED[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)

    async with Scripted(handle) as srv:
        pool = new_pool()
        try:
            assert await get_body(pool, srv.url + "/") == (200, CHUNKED_BODY)
            assert await get_body(pool, srv.url + "/") == (200, CHUNKED_BODY)
        finally:
            await pool.close()
    assert srv.accepted == 1


@pytest.mark.parametrize("split", ["one byte per write", "head alone", "mid body", "whole"])
async def test_content_length_answer_split_across_reads(split: str) -> None:
    """The pool reads every connection into one shared buffer: a Content-Length answer
    parses the same however its bytes fall into reads (head split byte by byte, head and
    body apart, the body cut in two, all in one), including bodies larger than the buffer,
    and answers on one connection do not bleed into each other."""
    bodies = [b"x" * 10, bytes(range(256)) * 1200, b"{}"]  # 307,200 bytes > the buffer

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        i = 0
        while await read_request(reader) is not None:
            data = answer(bodies[i % len(bodies)])
            head = data.index(b"\r\n\r\n") + 4
            if split == "one byte per write":
                cuts = [*range(1, head + 1), head + 5, len(data)]
            elif split == "head alone":
                cuts = [head, len(data)]
            elif split == "mid body":
                cuts = [head + (len(data) - head) // 2, len(data)]
            else:
                cuts = [len(data)]
            start = 0
            for cut in cuts:
                if cut > start:
                    writer.write(data[start:cut])
                    await writer.drain()
                    await asyncio.sleep(0)
                start = cut
            i += 1

    async with Scripted(handle) as srv:
        pool = new_pool()
        try:
            for round_ in range(2):
                for body in bodies:
                    assert await get_body(pool, srv.url + "/") == (200, body), (split, round_)
        finally:
            await pool.close()
    assert srv.accepted == 1


async def test_answer_framed_by_connection_close_is_read_to_eof_and_not_reused() -> None:
    """An answer with neither Content-Length nor chunked encoding runs to the end of the
    connection (its body arrives in pieces); the connection is not reused."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
        await writer.drain()
        writer.write(b"second %d" % n)
        await writer.drain()
        # The handler's exit closes the connection: that ends the answer.

    async with Scripted(handle) as srv:
        pool = new_pool()
        try:
            assert await get_body(pool, srv.url + "/") == (200, b"first second 0")
            assert await get_body(pool, srv.url + "/") == (200, b"first second 1")
        finally:
            await pool.close()
    assert srv.accepted == 2


# -- streaming ----------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["chunked", "close"])
async def test_lines_arrive_as_the_server_writes_them(framing: str) -> None:
    """``Response.lines()`` hands each SSE line over as soon as it is complete: the server
    writes the next line only after the test has received the previous one (buffering the
    whole body would deadlock), and a last line without a newline comes at the end. Both
    for a chunked answer and one framed by the connection's end."""
    received = [asyncio.Event() for _ in range(3)]
    parts = [b"data: one\n", b"\ndata: t", b"wo\n", b"data: [DONE]"]

    def frame(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if framing == "chunked" else data

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        te = b"Transfer-Encoding: chunked\r\n" if framing == "chunked" else b""
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + te + b"\r\n")
        writer.write(frame(parts[0]))
        await writer.drain()
        await received[0].wait()
        writer.write(frame(parts[1]))
        await writer.drain()
        await asyncio.sleep(0)
        writer.write(frame(parts[2]))
        await writer.drain()
        await received[2].wait()
        writer.write(frame(parts[3]))
        if framing == "chunked":
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with Scripted(handle) as srv:
        pool = new_pool()
        try:
            got: list[bytes] = []
            with anyio.fail_after(PROMPT):
                async with pool.request("POST", srv.url + "/generate", b"{}") as resp:
                    async for line in resp.lines():
                        if len(got) < len(received):
                            received[len(got)].set()
                        got.append(line)
        finally:
            await pool.close()
    assert got == [b"data: one\n", b"\n", b"data: two\n", b"data: [DONE]"]


async def test_event_stream_through_transport() -> None:
    """``transport.post`` + ``EventStream`` read the ``data:`` payloads of a chunked
    stream up to ``[DONE]``; the connection goes back to the pool and is reused."""
    stream = b"".join(
        b"%x\r\n%s\r\n" % (len(p), p)
        for p in (b": comment\n", b'data: {"a": 1}\n\n', b'data: {"a": 2}\n\n')
    )
    stream += b"d\r\ndata: [DONE]\n\r\n0\r\n\r\n"
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + stream
    async with serve_keepalive(reply) as srv:
        pool = transport.open_session(
            connections_per_host=2, request_timeout_s=10, connect_timeout_s=5
        )
        try:
            for _ in range(2):
                async with transport.post(pool, srv.url, "/generate", {"q": 1}, label="t") as r:
                    events = transport.EventStream(r)
                    assert [p async for p in events] == [b'{"a": 1}', b'{"a": 2}']
                    assert events.finished
        finally:
            await pool.close()
    assert srv.accepted == 1
    assert srv.requests[0].body == b'{"q":1}'


# -- keep-alive ---------------------------------------------------------------------------


async def test_keepalive_reuses_one_connection() -> None:
    """Sequential requests (POST and GET) to one origin share one TCP connection."""
    async with serve_keepalive() as srv:
        pool = new_pool()
        try:
            for i in range(5):
                async with pool.request("POST", srv.url + "/p", b"%d" % i) as resp:
                    assert await resp.read() == b"ok"
                assert await get_body(pool, srv.url + "/g") == (200, b"ok")
        finally:
            await pool.close()
    assert srv.accepted == 1
    assert [r.body for r in srv.requests if r.line.startswith(b"POST")] == [
        b"0",
        b"1",
        b"2",
        b"3",
        b"4",
    ]


@pytest.mark.parametrize(
    ("reply", "reused"),
    [
        (answer(extra=b"Connection: close\r\n"), False),
        (answer(extra=b"connection:   CLOSE\r\n"), False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", True),
        (answer(extra=b"Connection: keep-alive\r\n"), True),
    ],
    ids=["close", "close-odd-case", "http10", "http10-keepalive", "http11-keepalive"],
)
async def test_connection_header_decides_reuse(reply: bytes, reused: bool) -> None:
    """``Connection: close`` (any case) and an HTTP/1.0 answer without ``keep-alive`` end
    the connection after the answer; HTTP/1.0 with ``keep-alive`` and HTTP/1.1 keep it.
    The server keeps every connection open, so a new connection is the client's doing;
    a connection the client drops is closed (the server sees EOF)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(reply)
            await writer.drain()
        srv.eofs.put_nowait(n)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool()
        try:
            for _ in range(3):
                assert await get_body(pool, srv.url + "/") == (200, b"ok")
            if not reused:
                assert {await srv.next_eof(), await srv.next_eof()} == {0, 1}
        finally:
            await pool.close()
    assert srv.accepted == (1 if reused else 3)


async def test_keepalive_zero_never_reuses() -> None:
    """With ``keepalive_s=0`` every request opens a new connection, and each is closed
    once its answer is read (the server sees EOF) though the server would keep it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(answer())
            await writer.drain()
        srv.eofs.put_nowait(n)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool(keepalive_s=0)
        try:
            for i in range(3):
                assert await get_body(pool, srv.url + "/") == (200, b"ok")
                assert await srv.next_eof() == i
        finally:
            await pool.close()
    assert srv.accepted == 3


async def test_idle_connection_expires_after_keepalive_s() -> None:
    """An idle connection older than ``keepalive_s`` is dropped (the server sees EOF) and
    the request goes out on a new one."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(answer())
            await writer.drain()
        srv.eofs.put_nowait(n)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool(keepalive_s=0.05)
        try:
            assert await get_body(pool, srv.url + "/") == (200, b"ok")
            await anyio.sleep(0.2)  # let the idle connection age past keepalive_s
            assert await get_body(pool, srv.url + "/") == (200, b"ok")
            assert await srv.next_eof() == 0
        finally:
            await pool.close()
    assert srv.accepted == 2


# -- the per-origin limit -----------------------------------------------------------------


async def test_connections_per_host_limit() -> None:
    """With ``connections_per_host=2``, five concurrent requests to a server that holds
    its answers until released never have more than two connections open; released, all
    five complete (the waiting ones on the connections handed back)."""
    release = asyncio.Event()
    arrived = asyncio.Queue[int]()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (req := await read_request(reader)) is not None:
            arrived.put_nowait(n)
            await release.wait()
            writer.write(answer(req.body))
            await writer.drain()

    results: list[bytes] = []

    async def one(pool: Pool, url: str, i: int) -> None:
        async with pool.request("POST", url, b"%d" % i) as resp:
            results.append(await resp.read())

    async with Scripted(handle) as srv:
        pool = new_pool(connections_per_host=2)
        try:
            with anyio.fail_after(PROMPT):
                async with anyio.create_task_group() as tg:
                    for i in range(5):
                        tg.start_soon(one, pool, srv.url + "/", i)
                    # Two requests reach the server; the other three wait in the pool.
                    assert {await arrived.get(), await arrived.get()} == {0, 1}
                    for _ in range(5):
                        await anyio.sleep(0)
                    assert arrived.empty() and srv.accepted == 2
                    release.set()
        finally:
            await pool.close()
    assert sorted(results) == [b"0", b"1", b"2", b"3", b"4"]
    assert srv.accepted == 2 and srv.max_open == 2


async def test_wait_for_a_connection_counts_against_the_deadline() -> None:
    """A request waiting for a free connection (limit 1, held by a request the server
    never answers and whose own deadline is far off) raises ``TimeoutError`` (not
    ``ConnectTimeout``) at its deadline without ever connecting: no hang."""
    got = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        got.set()
        await until_eof(reader)

    async with Scripted(handle) as srv:
        pool = new_pool(connections_per_host=1, request_timeout_s=30)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(get_body, pool, srv.url + "/")
                await got.wait()
                pool.request_timeout_s = 0.3  # read at each request's start
                with pytest.raises(TimeoutError) as err, anyio.fail_after(PROMPT):
                    await get_body(pool, srv.url + "/")
                assert not isinstance(err.value, ConnectTimeout)
                assert srv.accepted == 1
                tg.cancel_scope.cancel()
        finally:
            await pool.close()
    assert srv.accepted == 1


# -- failures sorted by transport -----------------------------------------------------------


async def test_stale_pooled_connection_is_retryable_and_a_retry_succeeds() -> None:
    """The race RFC 9112 9.3.1 describes: the server closes an idle keep-alive connection
    just as the client sends on it (here: it reads the second request and closes without
    a byte of answer). ``transport.post`` raises ``Retryable(stale=True, refused=False)``
    and the retry goes out on a new connection and succeeds."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(b"first %d" % n))
        await writer.drain()
        if n == 0:
            await read_request(reader)  # the request on the reused connection: dropped

    async with Scripted(handle) as srv:
        pool = transport.open_session(
            connections_per_host=4, request_timeout_s=10, connect_timeout_s=5
        )
        try:
            assert await transport.post_read(pool, srv.url, "/g", {}, label="t") == b"first 0"
            with pytest.raises(transport.Retryable) as err:
                await transport.post_read(pool, srv.url, "/g", {}, label="t")
            assert err.value.stale and not err.value.refused
            assert await transport.post_read(pool, srv.url, "/g", {}, label="t") == b"first 1"
        finally:
            await pool.close()
    assert srv.accepted == 2


async def test_connection_refused_is_retryable_refused() -> None:
    """Nothing listening: ``transport.post`` raises ``Retryable(refused=True)``; the pool
    itself raises ``ConnectionRefusedError`` and frees the slot (a limit-1 pool keeps
    answering with refusals, not timeouts)."""
    url = f"http://127.0.0.1:{closed_port()}"
    pool = transport.open_session(connections_per_host=1, request_timeout_s=5, connect_timeout_s=5)
    try:
        with pytest.raises(transport.Retryable) as err:
            async with transport.post(pool, url, "/generate", {}, label="t"):
                pass
        assert err.value.refused and not err.value.stale
        for _ in range(3):
            with pytest.raises(ConnectionRefusedError):
                await get_body(pool, url + "/")
    finally:
        await pool.close()


async def test_503_is_retryable_and_400_is_http_status_error_with_the_whole_body() -> None:
    """503 raises ``Retryable(refused=False)``; 400 raises ``HTTPStatusError`` carrying
    the status and the whole body (longer than the message's excerpt); a 200 after both
    still uses the one connection."""
    err_body = b'{"error": "' + b"e" * 500 + b'"}'
    replies = iter(
        [
            answer(b"busy", status="503 Service Unavailable"),
            answer(err_body, status="400 Bad Request"),
            answer(b"fine"),
        ]
    )
    async with serve_keepalive(lambda req: next(replies)) as srv:
        pool = transport.open_session(
            connections_per_host=1, request_timeout_s=10, connect_timeout_s=5
        )
        try:
            with pytest.raises(transport.Retryable) as retry:
                await transport.post_read(pool, srv.url, "/generate", {}, label="gen")
            assert not retry.value.refused and not retry.value.stale
            assert "503" in str(retry.value) and "busy" in str(retry.value)
            with pytest.raises(transport.HTTPStatusError) as bad:
                await transport.post_read(pool, srv.url, "/generate", {}, label="gen")
            assert bad.value.status == 400
            assert bad.value.body == err_body
            assert str(bad.value).startswith(f"gen {srv.url}: HTTP 400: ")
            assert await transport.post_read(pool, srv.url, "/g", {}, label="gen") == b"fine"
        finally:
            await pool.close()
    assert srv.accepted == 1


async def test_get_non_200_raises_http_status_error() -> None:
    """``transport.get`` returns a 200's body and raises ``HTTPStatusError`` otherwise."""
    replies = iter([answer(b"up"), answer(b"nope", status="404 Not Found")])
    async with serve_keepalive(lambda req: next(replies)) as srv:
        pool = new_pool()
        try:
            assert await transport.get(pool, srv.url + "/health") == b"up"
            with pytest.raises(transport.HTTPStatusError) as err:
                await transport.get(pool, srv.url + "/missing")
            assert err.value.status == 404 and err.value.body == b"nope"
        finally:
            await pool.close()


# -- deadlines, cancellation, dying servers -------------------------------------------------


async def test_request_deadline_raises_timeout_and_closes_the_connection() -> None:
    """A server that reads the request and never answers: the request raises
    ``TimeoutError`` (not ``ConnectTimeout``) after ``request_timeout_s`` and its
    connection is closed (the server sees EOF); ``transport.post`` lets it through."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        await srv.saw_eof(reader, n)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool(request_timeout_s=0.3)
        try:
            start = anyio.current_time()
            with pytest.raises(TimeoutError) as err:
                await get_body(pool, srv.url + "/")
            assert not isinstance(err.value, ConnectTimeout)
            assert anyio.current_time() - start < 30
            assert await srv.next_eof() == 0
            with pytest.raises(TimeoutError) as err2:
                await transport.post_read(pool, srv.url, "/g", {}, label="t")
            assert not isinstance(err2.value, transport.Retryable)
            assert await srv.next_eof() == 1
        finally:
            await pool.close()


async def test_deadlines_are_watched_per_origin_and_answered_requests_leave_nothing() -> None:
    """Deadlines started at different times each expire (the origin's one timer is set
    again for the next), requests answered meanwhile on the same origin succeed, and once
    all are over nothing is left watched and no timer is pending."""
    got_slow: asyncio.Queue[int] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (req := await read_request(reader)) is not None:
            if b"/slow" in req.line:
                got_slow.put_nowait(n)
                await until_eof(reader)  # never answered
                return
            writer.write(OK)
            await writer.drain()

    async with Scripted(handle) as srv:
        pool = new_pool(request_timeout_s=0.3, connections_per_host=8)
        outcomes: list[str] = []

        async def slow() -> None:
            try:
                await get_body(pool, srv.url + "/slow")
            except TimeoutError:
                outcomes.append("timeout")

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(3):  # one after another: three different deadlines
                    tg.start_soon(slow)
                    await got_slow.get()
                    assert await get_body(pool, srv.url + "/fast") == (200, b"ok")
            assert outcomes == ["timeout"] * 3
            (origin,) = pool._origins.values()
            assert origin.inflight == {} and origin._watch is None
            for _ in range(20):
                assert await get_body(pool, srv.url + "/fast") == (200, b"ok")
            assert origin.inflight == {}
        finally:
            await pool.close()


async def test_deadline_mid_body_raises_timeout() -> None:
    """The deadline covers the whole answer: headers and part of a Content-Length body,
    then silence, raises ``TimeoutError`` from ``read()`` and closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await srv.saw_eof(reader, n)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool(request_timeout_s=0.3)
        try:
            async with pool.request("GET", srv.url + "/") as resp:
                assert resp.status == 200
                with pytest.raises(TimeoutError):
                    await resp.read()
            assert await srv.next_eof() == 0
        finally:
            await pool.close()


async def test_cancel_mid_answer_closes_the_connection() -> None:
    """Cancelling a request (anyio cancel scope) after part of its body arrived closes
    its connection (the server sees EOF), and the pool's next request works on a new
    connection."""
    partial_sent = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            partial_sent.set()
            await srv.saw_eof(reader, n)
        else:
            writer.write(answer(b"second"))
            await writer.drain()
            await until_eof(reader)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool(connections_per_host=1)
        try:
            reading = asyncio.Event()

            async def doomed() -> None:
                async with pool.request("GET", srv.url + "/") as resp:
                    reading.set()
                    await resp.read()

            with anyio.fail_after(PROMPT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(doomed)
                    await partial_sent.wait()
                    await reading.wait()
                    tg.cancel_scope.cancel()
            assert await srv.next_eof() == 0
            assert await get_body(pool, srv.url + "/") == (200, b"second")
        finally:
            await pool.close()
    assert srv.accepted == 2


async def test_cancel_while_waiting_for_headers_closes_the_connection() -> None:
    """Cancelling before any answer byte arrived also closes the connection, and the
    slot is free again (a limit-1 pool's next request connects and is answered)."""
    got = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 0:
            got.set()
            await srv.saw_eof(reader, n)
        else:
            writer.write(answer(b"next"))
            await writer.drain()
            await until_eof(reader)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool(connections_per_host=1)
        try:
            with anyio.fail_after(PROMPT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(get_body, pool, srv.url + "/")
                    await got.wait()
                    tg.cancel_scope.cancel()
            assert await srv.next_eof() == 0
            assert await get_body(pool, srv.url + "/") == (200, b"next")
        finally:
            await pool.close()


async def test_server_dies_mid_body_is_disconnected_answered() -> None:
    """Headers and part of a Content-Length body, then the server closes: reading raises
    ``Disconnected`` with ``answered=True``; through ``transport.post`` it is no
    ``Retryable`` but propagates as an ``OSError``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()

    async with Scripted(handle) as srv:
        pool = transport.open_session(
            connections_per_host=1, request_timeout_s=10, connect_timeout_s=5
        )
        try:
            async with pool.request("GET", srv.url + "/") as resp:
                with pytest.raises(Disconnected) as err:
                    await resp.read()
            assert err.value.answered and not err.value.reused
            with pytest.raises(OSError) as err2:
                async with transport.post(pool, srv.url, "/g", {}, label="t") as resp:
                    await resp.read()
            assert isinstance(err2.value, Disconnected) and err2.value.answered
        finally:
            await pool.close()
    assert srv.accepted == 2


async def test_reused_connection_cut_mid_head_is_not_retryable() -> None:
    """On a *reused* connection, a server that sends part of the status line and then
    closes is ``Disconnected(reused=True, answered=True)``: something was answered, so
    ``transport.post`` does not call it stale but lets it through."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer())
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 20")
        await writer.drain()

    async with Scripted(handle) as srv:
        pool = transport.open_session(
            connections_per_host=1, request_timeout_s=10, connect_timeout_s=5
        )
        try:
            assert await transport.post_read(pool, srv.url, "/g", {}, label="t") == b"ok"
            with pytest.raises(Disconnected) as err:
                await transport.post_read(pool, srv.url, "/g", {}, label="t")
            assert err.value.reused and err.value.answered
        finally:
            await pool.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 abc Nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024),
        b"hello, not http",
    ],
    ids=["ssh", "http2", "bad-status", "bad-chunk-size", "huge-head", "short-then-close"],
)
async def test_garbage_answer_is_a_connection_error(garbage: bytes) -> None:
    """Bytes that are not an HTTP/1.1 answer raise a ``ConnectionError`` promptly (no
    hang, though the server keeps the connection open where it can), and the connection
    is closed."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(garbage)
        await writer.drain()
        if garbage != b"hello, not http":
            await srv.saw_eof(reader, n)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool(request_timeout_s=30)
        try:
            with pytest.raises(ConnectionError), anyio.fail_after(PROMPT):
                await get_body(pool, srv.url + "/")
            if garbage != b"hello, not http":
                assert await srv.next_eof() == 0
        finally:
            await pool.close()


# -- closing the pool ---------------------------------------------------------------------


async def test_pool_close_closes_idle_connections_and_refuses_requests() -> None:
    """``Pool.close()`` closes idle keep-alive connections (the server sees EOF) and later
    requests raise ``ConnectionError`` without connecting."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(answer())
            await writer.drain()
        srv.eofs.put_nowait(n)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(2):  # two concurrent requests: two idle connections
                    tg.start_soon(get_body, pool, srv.url + "/")
            assert srv.accepted == 2
            await pool.close()
            assert {await srv.next_eof(), await srv.next_eof()} == {0, 1}
            with pytest.raises(ConnectionError):
                await get_body(pool, srv.url + "/")
            with pytest.raises(ConnectionError):
                await transport.post_read(pool, srv.url, "/g", {}, label="t")
        finally:
            await pool.close()
    assert srv.accepted == 2


async def test_pool_close_fails_waiting_requests() -> None:
    """A request waiting for a connection (limit reached) fails with ``ConnectionError``
    when the pool closes."""
    got = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        got.set()
        await until_eof(reader)

    async with Scripted(handle) as srv:
        pool = new_pool(connections_per_host=1)
        try:
            first: list[BaseException] = []

            async def in_progress() -> None:
                try:
                    await get_body(pool, srv.url + "/")
                except ConnectionError as exc:  # the pool closed under it
                    first.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(in_progress)
                await got.wait()
                waiting = asyncio.ensure_future(get_body(pool, srv.url + "/"))
                await asyncio.sleep(0)  # it reaches the pool's wait for a connection
                await pool.close()
                with pytest.raises(ConnectionError), anyio.fail_after(PROMPT):
                    await waiting
            assert len(first) == 1
        finally:
            await pool.close()


# -- real servers -------------------------------------------------------------------------


async def test_against_aiohttp_server() -> None:
    """A real aiohttp server: a JSON POST is echoed, a GET answered, a streamed (chunked)
    answer read line by line, all over one keep-alive connection (same client port)."""
    peers: list[object] = []

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else 0)
        assert request.content_type == "application/json"
        return web.Response(body=await request.read(), content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else 0)
        return web.Response(text="healthy")

    async def stream(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else 0)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(b"data: %d\n\n" % i)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/health", health)
    app.router.add_post("/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    pool: Pool | None = None
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        pool = transport.open_session(
            connections_per_host=2, request_timeout_s=10, connect_timeout_s=5
        )
        body = {"text": "é" * 1000, "ids": list(range(100))}
        got = await transport.post_read(pool, url, "/echo", body, label="t")
        assert got == transport.json_bytes(body)
        assert await transport.get(pool, url + "/health") == b"healthy"
        async with transport.post(pool, url, "/stream", {}, label="t") as resp:
            assert resp.headers["transfer-encoding"] == "chunked"
            events = transport.EventStream(resp)
            assert [p async for p in events] == [b"0", b"1", b"2"]
            assert events.finished
        assert await transport.post_read(pool, url, "/echo", b"[1]", label="t") == b"[1]"
        assert len(peers) == 4 and len(set(peers)) == 1
    finally:
        if pool is not None:
            await pool.close()
        await runner.cleanup()


async def test_against_uvicorn_server() -> None:
    """A real uvicorn server (ASGI app): a JSON POST echoed and a streamed (chunked)
    answer read line by line, over one keep-alive connection (same client address)."""
    uvicorn = pytest.importorskip("uvicorn")
    clients: list[object] = []

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        clients.append(tuple(scope["client"]))
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for line in (b"data: 0\n\n", b"data: 1\n\n", b"data: [DONE]\n\n"):
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    # A socket already listening: connects queue in its backlog until uvicorn accepts,
    # so nothing has to wait for the server to be ready.
    sock = socket.socket()
    pool: Pool | None = None
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                pool = transport.open_session(
                    connections_per_host=2, request_timeout_s=10, connect_timeout_s=5
                )
                with anyio.fail_after(PROMPT):
                    got = await transport.post_read(pool, url, "/echo", {"a": 1}, label="t")
                    assert got == b'{"a":1}'
                    async with transport.post(pool, url, "/stream", {}, label="t") as resp:
                        assert resp.headers["transfer-encoding"] == "chunked"
                        events = transport.EventStream(resp)
                        assert [p async for p in events] == [b"0", b"1"]
                        assert events.finished
                    assert await transport.post_read(pool, url, "/e", b"[2]", label="t") == b"[2]"
                assert len(clients) == 3 and len(set(clients)) == 1
            finally:
                if pool is not None:
                    await pool.close()
                server.should_exit = True
    finally:
        sock.close()


def test_keepalive_round_trip_under_uvloop() -> None:
    """Under uvloop (anyio's ``use_uvloop``) a pooled POST round trip works and the
    second request reuses the connection."""
    pytest.importorskip("uvloop")

    async def main() -> tuple[list[bytes], int]:
        async with serve_keepalive(lambda req: answer(req.body)) as srv:
            pool = new_pool()
            try:
                got = []
                for i in range(2):
                    async with pool.request("POST", srv.url + "/", b'{"i": %d}' % i) as resp:
                        got.append(await resp.read())
            finally:
                await pool.close()
        return got, srv.accepted

    got, accepted = anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    assert got == [b'{"i": 0}', b'{"i": 1}'] and accepted == 1


# -- found while writing these tests, then fixed ----------------------------------------


async def test_cancelled_waiter_does_not_lose_the_connection_it_was_handed() -> None:
    """Limit 1: request B waits for A's connection; A's answer is read (the connection is
    handed to B) and B is cancelled in the same tick, before it resumes. The connection
    must go back to the pool: a third request C gets it and is answered."""
    async with serve_keepalive() as srv:
        pool = new_pool(connections_per_host=1, request_timeout_s=1.0)
        try:
            resp_a = await pool.send("GET", srv.url + "/a")
            b = asyncio.ensure_future(pool.send("GET", srv.url + "/b"))
            await asyncio.sleep(0)  # B runs up to its wait for the (only) connection
            assert not b.done()
            assert await resp_a.read() == b"ok"  # hands the connection to B's waiter ...
            b.cancel()  # ... and B is cancelled before it resumes
            with pytest.raises(asyncio.CancelledError):
                await b
            assert await get_body(pool, srv.url + "/c") == (200, b"ok")
        finally:
            await pool.close()


async def test_freed_slot_is_not_taken_twice() -> None:
    """Limit 1: A's answer says ``Connection: close``; B waits for a connection. Reading
    A's answer frees the slot for B, and request C starts in the same tick. B and C must
    still share one connection at a time: the server sees at most one open connection
    and two in all (A's, then one for B and C)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(answer(extra=b"Connection: close\r\n" if n == 0 else b""))
            await writer.drain()
            if n == 0:
                return

    async with Scripted(handle) as srv:
        pool = new_pool(connections_per_host=1)
        try:
            resp_a = await pool.send("GET", srv.url + "/a")
            b = asyncio.ensure_future(get_body(pool, srv.url + "/b"))
            await asyncio.sleep(0)  # B waits for the connection
            assert await resp_a.read() == b"ok"  # closes A's connection: frees the slot
            c = asyncio.ensure_future(get_body(pool, srv.url + "/c"))
            with anyio.fail_after(PROMPT):
                assert await b == (200, b"ok") and await c == (200, b"ok")
        finally:
            await pool.close()
    assert srv.accepted == 2 and srv.max_open == 1


async def test_deadline_during_close_framed_answer_is_not_a_complete_body() -> None:
    """An answer framed by the connection's end whose deadline passes mid-body (the
    client aborts: the server sees EOF) must raise ``TimeoutError`` when read, not hand
    over the part that arrived as if it were the whole body."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
        await writer.drain()
        await srv.saw_eof(reader, n)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool(request_timeout_s=0.3)
        try:
            async with pool.request("GET", srv.url + "/") as resp:
                assert await srv.next_eof() == 0  # the deadline passed: the client aborted
                with pytest.raises(TimeoutError):
                    await resp.read()
        finally:
            await pool.close()


async def test_pool_close_fails_requests_in_progress() -> None:
    """``Pool.close()`` says "Close every connection; requests in progress fail": a
    request waiting on its answer must fail and its connection close (server sees EOF)."""
    got = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        got.set()
        await srv.saw_eof(reader, n)

    srv = Scripted(handle)
    async with srv:
        pool = new_pool()
        pending = asyncio.ensure_future(get_body(pool, srv.url + "/"))
        try:
            await got.wait()
            await pool.close()
            with anyio.fail_after(2):
                assert await srv.eofs.get() == 0
                with pytest.raises(ConnectionError):
                    await pending
        finally:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
            await pool.close()


async def test_bytes_beyond_the_answer_retire_the_connection() -> None:
    """A server that writes more than its answer (bytes after a Content-Length body, or an
    answer nobody asked for): the answer is read as framed, and the next request goes out
    on a new connection, not one with stray bytes waiting in it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (req := await read_request(reader)) is not None:
            writer.write(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
            await writer.drain()
            assert req.line.startswith(b"GET")

    async with Scripted(handle) as srv:
        pool = new_pool()
        try:
            for _ in range(3):
                assert await get_body(pool, srv.url + "/") == (200, b"ok")
        finally:
            await pool.close()
        assert srv.accepted == 3


async def test_https_round_trip_with_a_given_tls_context(tmp_path: Path) -> None:
    """``https://`` origins speak TLS: a keep-alive POST and GET against a local TLS server
    whose self-signed certificate (made by ``openssl`` here) the pool's ``tls`` context
    trusts; without that context the system's trust store refuses it (retryable, as any
    failed connect)."""
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_cert = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    make_cert += ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"]
    make_cert += ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(make_cert, check=True, capture_output=True)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while (req := await read_request(reader)) is not None:
                writer.write(answer(req.body or b"got"))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    trusting = ssl.create_default_context(cafile=str(cert))
    pool = Pool(connections_per_host=2, request_timeout_s=10, connect_timeout_s=5, tls=trusting)
    default = new_pool()
    try:
        async with pool.request("POST", url + "/x", b'{"a": 1}') as resp:
            assert (resp.status, await resp.read()) == (200, b'{"a": 1}')
        assert await get_body(pool, url + "/") == (200, b"got")
        assert accepted == 1  # kept alive over TLS
        with pytest.raises(transport.Retryable, match="CERTIFICATE_VERIFY_FAILED") as raised:
            await transport.post_read(default, url, "/x", {}, label="t")
        assert raised.value.refused
    finally:
        await pool.close()
        await default.close()
        server.close()
        await server.wait_closed()
