"""Trajectories to other machines through NATS JetStream (extra ``nats``: ``nats-py``).

The store stays the source of truth on each node; JetStream is the transport to trainers
elsewhere. Use the sink beside the store sink::

    Runtime(out="runs/x", sinks=[JetStreamSink("nats://head:4222")])

    async with JetStreamReader("nats://head:4222", durable="grpo") as reader:
        async for item in reader.messages(idle_timeout_s=30):
            train(item.trajectories)
            await item.ack()                         # the durable consumer moves on

**Messages.** One message per trajectory (the store's ``TRAJECTORY`` payload) and one per RL
group (the store's ``GROUP`` payload: a group crosses whole or not at all), on subject
``gymux.trajectories`` of stream ``GYMUX``, with headers ``Nats-Msg-Id`` (the episode id;
``group:<group id>`` for a group), ``Gymux-Record-Type`` (2 or 3) and ``Gymux-Count``.

**Durability.** ``write`` returns when JetStream acknowledged the message. JetStream
acknowledges *before* fsync unless the server runs with ``jetstream { sync_interval:
always }``; with ``monitor_url`` (the server's ``http`` port) the sink checks that, and
refuses a server that would lose acknowledged writes in a crash. The stream is file-backed.

**Reconnects and duplicates.** The client reconnects forever; a publish that gets no
acknowledgement (server down, restarting, no JetStream yet) is sent again with the same
``Nats-Msg-Id`` until ``retry_timeout_s``; the stream drops the copies it already holds
within its ``duplicate_window`` (counted in :attr:`JetStreamSink.duplicates`).

**Coalescing.** With ``sync_interval: always`` the server fsyncs every message, so one
message per trajectory is slow (about 200/s on a laptop-class disk, whatever the number of
producers). ``coalesce=True`` publishes whatever concurrent writers have queued as one
message (``Gymux-Record-Type: batch``, :func:`encode_batch`; ``Nats-Msg-Id`` ``batch:`` +
a digest of the member ids, so a retried batch is still dropped by the stream): group
commit over the transport, ~100x faster at 64 producers. Groups stay whole inside a batch.
The stream then de-duplicates batches, not episodes: a consumer that must see an episode
once (e.g. when an episode is rerun on another node) keeps the member ids it has seen
(:attr:`JetStreamItem.members`).

**Misconfiguration** is one line, :class:`JetStreamConfigError`: no JetStream, the stream
missing (``create_stream=False``), memory storage, de-duplication off, the subject not in
the stream, ``max_payload`` below ``min_max_payload`` (NATS defaults to 1 MiB: raise it in
the server config, ``max_payload: 8MB``), or ``sync_interval`` not ``always``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import struct
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from gymux._lifecycle import AsyncResource
from gymux.errors import SinkError
from gymux.stores.codec import decode_group, decode_trajectory, encode_group, encode_trajectory
from gymux.stores.format import RecordType
from gymux.trajectory import Trajectory

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

__all__ = [
    "DEFAULT_STREAM_NAME",
    "DEFAULT_SUBJECT",
    "HDR_COUNT",
    "HDR_TYPE",
    "JetStreamConfigError",
    "JetStreamError",
    "JetStreamItem",
    "JetStreamReader",
    "JetStreamSink",
]

_log = structlog.get_logger("gymux.stores.jetstream")

DEFAULT_STREAM_NAME = "GYMUX"
DEFAULT_SUBJECT = "gymux.trajectories"
HDR_MSG_ID = "Nats-Msg-Id"
HDR_TYPE = "Gymux-Record-Type"
HDR_COUNT = "Gymux-Count"
#: ``Gymux-Record-Type`` of a message holding several (see :func:`encode_batch`).
BATCH = "batch"
_MIB = 1 << 20


class JetStreamError(SinkError):
    """Publishing to or reading from JetStream failed."""


class JetStreamConfigError(JetStreamError):
    """The NATS server or the stream is not configured as gymux needs (one line: what, and
    how to fix it)."""


def _nats() -> Any:
    try:
        import nats
    except ImportError:
        raise JetStreamError(
            "the JetStream transport needs nats-py: pip install 'gymux[nats]'"
        ) from None
    return nats


async def _quiet_error(exc: Exception) -> None:
    """nats-py reports every failed (re)connect attempt; the sink's own messages say what
    matters (disconnected, reconnected, gave up)."""
    _log.debug("nats client error", error=repr(exc))


async def _connect(
    servers: str | Sequence[str], name: str, *, connect_attempts: int = 8, **options: Any
) -> Client:
    """A client that reconnects forever once connected; the first connection is tried
    ``connect_attempts`` times per server (0.25 s apart) before giving up."""
    nats = _nats()
    urls = [servers] if isinstance(servers, str) else list(servers)
    settings: dict[str, Any] = {
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": max(1, connect_attempts),
        "reconnect_time_wait": 0.25,
        "connect_timeout": 5,
        "error_cb": _quiet_error,
    }
    settings.update(options)
    try:
        client: Client = await nats.connect(urls, **settings)
    except Exception as exc:  # nats raises its own and OS errors
        raise JetStreamError(f"cannot connect to NATS at {', '.join(urls)}: {exc!r}") from None
    # nats-py reads the option at each reconnect: from now on, never give up.
    client.options["max_reconnect_attempts"] = options.get("max_reconnect_attempts", -1)
    return client


def _check_sync(monitor_url: str) -> None:
    """Refuse a server whose JetStream acknowledges before fsync (blocking: in a thread)."""
    import urllib.request  # only here: the import is not cheap

    url = monitor_url.rstrip("/") + "/jsz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            info = json.load(resp)
    except (OSError, ValueError) as exc:
        raise JetStreamConfigError(f"cannot read {url} to check sync_interval: {exc}") from None
    config = info.get("config") or {}
    if not config.get("sync_always"):
        interval = config.get("sync_interval")
        raise JetStreamConfigError(
            f"JetStream at {monitor_url} acknowledges before fsync (sync_interval "
            f"{interval} ns): set 'jetstream {{ sync_interval: always }}' in the server config"
        )


class JetStreamSink(AsyncResource):
    """A :class:`~gymux.sinks.Sink` publishing each trajectory (and each RL group, whole) to
    a JetStream stream; ``write`` returns once the stream acknowledged it. See the module
    doc for durability, reconnects, duplicates and configuration checks.

    ``create_stream``: create the stream when missing (file storage, ``duplicate_window_s``,
    messages up to the server's ``max_payload``). ``min_max_payload``: the smallest server
    ``max_payload`` accepted (bytes). ``monitor_url``: the server's monitoring endpoint
    (``http://host:8222``), to check ``sync_interval: always``; ``require_sync=False``
    skips that check.
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        stream: str = DEFAULT_STREAM_NAME,
        subject: str = DEFAULT_SUBJECT,
        create_stream: bool = True,
        duplicate_window_s: float = 600.0,
        min_max_payload: int = 8 * _MIB,
        monitor_url: str | None = None,
        require_sync: bool = True,
        publish_timeout_s: float = 5.0,
        retry_timeout_s: float = 120.0,
        connect_options: dict[str, Any] | None = None,
        coalesce: bool = False,
        max_batch: int = 256,
    ) -> None:
        self.servers = servers
        self.stream = stream
        self.subject = subject
        self.create_stream = create_stream
        self.coalesce = coalesce
        self.max_batch = max_batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._lock = asyncio.Lock()
        #: Batch messages published (``coalesce``).
        self.batches = 0
        self.duplicate_window_s = duplicate_window_s
        self.min_max_payload = min_max_payload
        self.monitor_url = monitor_url
        self.require_sync = require_sync
        self.publish_timeout_s = publish_timeout_s
        self.retry_timeout_s = retry_timeout_s
        self.connect_options = dict(connect_options or {})
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        #: Trajectories acknowledged by the stream (group members counted one by one).
        self.written = 0
        #: Messages the stream already held (a retry after a lost acknowledgement).
        self.duplicates = 0
        #: Publishes sent again after no acknowledgement came.
        self.retries = 0
        self.reconnects = 0
        #: The stream sequence of the last message acknowledged.
        self.last_seq = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """The :class:`~gymux.sinks.Sink` name of :meth:`aopen`."""
        await self.aopen()

    async def aopen(self) -> None:
        nats = _nats()

        async def reconnected() -> None:
            self.reconnects += 1
            _log.info("nats reconnected", servers=self.servers)

        async def disconnected() -> None:
            _log.warning("nats disconnected", servers=self.servers)

        options: dict[str, Any] = {
            "reconnected_cb": reconnected,
            "disconnected_cb": disconnected,
        }
        options.update(self.connect_options)
        nc = await _connect(self.servers, "gymux-sink", **options)
        try:
            js = nc.jetstream(timeout=self.publish_timeout_s)
            await self._check(nats, nc, js)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js

    async def _check(self, nats: Any, nc: Client, js: JetStreamContext) -> None:
        where = ", ".join([self.servers] if isinstance(self.servers, str) else self.servers)
        errors = nats.js.errors
        try:
            await js.account_info()
        except (
            errors.ServiceUnavailableError,
            errors.NoStreamResponseError,
            nats.errors.NoRespondersError,
        ):
            raise JetStreamConfigError(
                f"JetStream is not enabled on {where}: start nats-server with -js "
                "(or a 'jetstream {}' block in its config)"
            ) from None
        except (errors.APIError, nats.errors.TimeoutError) as exc:
            raise JetStreamConfigError(f"JetStream on {where} does not answer: {exc!r}") from None
        if nc.max_payload < self.min_max_payload:
            raise JetStreamConfigError(
                f"NATS at {where} has max_payload {nc.max_payload} bytes, gymux needs at least "
                f"{self.min_max_payload} for large trajectories: set 'max_payload: "
                f"{max(1, self.min_max_payload // _MIB)}MB' in the server config"
            )
        if self.require_sync and self.monitor_url is not None:
            await asyncio.to_thread(_check_sync, self.monitor_url)
        api = nats.js.api
        try:
            info = await js.stream_info(self.stream)
        except errors.NotFoundError:
            if not self.create_stream:
                raise JetStreamConfigError(
                    f"JetStream stream {self.stream!r} does not exist on {where}: create it "
                    f"(subjects {self.subject!r}, file storage, a duplicate window) or pass "
                    "create_stream=True"
                ) from None
            config = api.StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                duplicate_window=self.duplicate_window_s,
                max_msg_size=nc.max_payload,
                num_replicas=1,
            )
            try:
                info = await js.add_stream(config)
            except errors.APIError as exc:
                raise JetStreamConfigError(
                    f"cannot create JetStream stream {self.stream!r} on {where}: {exc.description}"
                ) from None
            _log.info("created jetstream stream", stream=self.stream, subject=self.subject)
        config = info.config
        problems = []
        if config.storage != api.StorageType.FILE:
            problems.append("it keeps messages in memory (use file storage)")
        if not config.duplicate_window:
            problems.append("its duplicate window is 0 (de-duplication by episode id is off)")
        if not any(_subject_matches(s, self.subject) for s in config.subjects or []):
            problems.append(f"its subjects {config.subjects} do not include {self.subject!r}")
        limit = config.max_msg_size
        if limit is not None and 0 < limit < self.min_max_payload:
            problems.append(f"max_msg_size {limit} < {self.min_max_payload} bytes")
        if problems:
            raise JetStreamConfigError(
                f"JetStream stream {self.stream!r} on {where} is misconfigured: "
                + "; ".join(problems)
            )

    async def flush(self) -> None:
        """Nothing to do: ``write`` returns only once the stream acknowledged."""
        return None

    async def aclose(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()

    # -- writing --------------------------------------------------------------------------

    async def write(self, trajectory: Trajectory) -> None:
        await self._submit(
            encode_trajectory(trajectory), trajectory.episode_id, RecordType.TRAJECTORY, 1
        )

    async def write_group(self, trajectories: Sequence[Trajectory]) -> None:
        """An RL group as one message (all of it reaches the consumers, or none)."""
        if not trajectories:
            return
        first = trajectories[0]
        msg_id = f"group:{first.group_id or first.episode_id}"
        await self._submit(encode_group(trajectories), msg_id, RecordType.GROUP, len(trajectories))

    async def _submit(self, payload: bytes, msg_id: str, rtype: int, count: int) -> None:
        if not self.coalesce:
            await self._publish(payload, msg_id, str(rtype), count)
            return
        item = _Pending(payload, msg_id, rtype, count)
        self._queue.append(item)
        try:
            # One publish at a time; whoever holds the lock publishes everything queued
            # (its own item among them) as one message: group commit over the transport.
            async with self._lock:
                while not item.done:
                    batch = self._take()
                    try:
                        await self._publish_batch(batch)
                    except BaseException as exc:
                        error = (
                            exc
                            if isinstance(exc, JetStreamError)
                            else JetStreamError(f"publishing a batch was interrupted: {exc!r}")
                        )
                        for other in batch:
                            other.done, other.error = True, error
                        raise
                    for other in batch:
                        other.done = True
        finally:
            if not item.done:
                self._queue.remove(item)  # cancelled while waiting for its turn
        if item.error is not None:
            raise item.error

    def _take(self) -> list[_Pending]:
        """The oldest queued items that fit in one message (at least one)."""
        limit = (self._nc.max_payload if self._nc is not None else 1 << 20) - 64 * 1024
        batch: list[_Pending] = []
        size = 4
        while self._queue and len(batch) < self.max_batch:
            nxt = self._queue[0]
            cost = _BATCH_MEMBER.size + len(nxt.msg_id.encode()) + len(nxt.payload)
            if batch and size + cost > limit:
                break
            batch.append(self._queue.popleft())
            size += cost
        return batch

    async def _publish_batch(self, batch: list[_Pending]) -> None:
        if len(batch) == 1:
            one = batch[0]
            await self._publish(one.payload, one.msg_id, str(one.rtype), one.count)
            return
        ids = [b.msg_id for b in batch]
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]
        await self._publish(
            encode_batch([(b.rtype, b.msg_id, b.payload) for b in batch]),
            f"batch:{digest}",
            BATCH,
            sum(b.count for b in batch),
        )
        self.batches += 1

    async def _publish(self, payload: bytes, msg_id: str, kind: str, count: int) -> None:
        js, nc = self._js, self._nc
        if js is None or nc is None:
            raise JetStreamError("JetStream sink is not open")
        nats = _nats()
        if len(payload) > nc.max_payload:
            raise JetStreamError(
                f"{msg_id}: {len(payload)} bytes exceed the server's max_payload "
                f"({nc.max_payload}): raise max_payload in the NATS server config"
            )
        headers = {HDR_MSG_ID: msg_id, HDR_TYPE: kind, HDR_COUNT: str(count)}
        transient = _transient(nats)
        deadline = time.monotonic() + self.retry_timeout_s
        delay = 0.05
        while True:
            try:
                ack = await js.publish(
                    self.subject,
                    payload,
                    timeout=self.publish_timeout_s,
                    stream=self.stream,
                    headers=dict(headers),
                )
                break
            except transient as exc:
                if nc.is_closed or time.monotonic() > deadline:
                    raise JetStreamError(
                        f"publishing {msg_id} to JetStream stream {self.stream!r} got no "
                        f"acknowledgement for {self.retry_timeout_s:.0f}s: {exc!r}"
                    ) from None
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except nats.js.errors.APIError as exc:
                raise JetStreamError(
                    f"JetStream refused {msg_id} on stream {self.stream!r}: {exc.description} "
                    f"(code {exc.err_code})"
                ) from None
        if ack.duplicate:
            self.duplicates += 1
            _log.info("jetstream dropped a duplicate", msg_id=msg_id, seq=ack.seq)
        else:
            self.last_seq = ack.seq
        self.written += count


#: A batch member's header: record type (u8), id length (u16), payload length (u32).
_BATCH_MEMBER = struct.Struct("<BHI")
_COUNT = struct.Struct("<I")


class _Pending:
    __slots__ = ("count", "done", "error", "msg_id", "payload", "rtype")

    def __init__(self, payload: bytes, msg_id: str, rtype: int, count: int) -> None:
        self.payload = payload
        self.msg_id = msg_id
        self.rtype = rtype
        self.count = count
        self.done = False
        self.error: BaseException | None = None


def encode_batch(members: Sequence[tuple[int, str, bytes]]) -> bytes:
    """A batch message's payload: ``count u32``, then per member ``type u8 | id length u16
    | payload length u32 | id (UTF-8) | payload`` (a store ``TRAJECTORY`` or ``GROUP``
    payload)."""
    parts = [_COUNT.pack(len(members))]
    for rtype, msg_id, payload in members:
        raw = msg_id.encode()
        parts += [_BATCH_MEMBER.pack(rtype, len(raw), len(payload)), raw, payload]
    return b"".join(parts)


def decode_batch(data: bytes) -> list[tuple[int, str, bytes]]:
    """The ``(type, id, payload)`` members of :func:`encode_batch`'s output."""
    view = memoryview(data)
    (count,) = _COUNT.unpack_from(view, 0)
    offset = _COUNT.size
    members = []
    for _ in range(count):
        rtype, id_len, length = _BATCH_MEMBER.unpack_from(view, offset)
        offset += _BATCH_MEMBER.size
        msg_id = bytes(view[offset : offset + id_len]).decode()
        offset += id_len
        members.append((rtype, msg_id, bytes(view[offset : offset + length])))
        offset += length
    if offset != len(data):
        raise JetStreamError(f"batch message: {len(data) - offset} bytes after its members")
    return members


def _transient(nats: Any) -> tuple[type[BaseException], ...]:
    """The errors after which a request is worth sending again (the server is down,
    restarting, or its JetStream not ready yet)."""
    return (
        nats.errors.TimeoutError,
        nats.errors.NoRespondersError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.StaleConnectionError,
        nats.errors.OutboundBufferLimitError,
        nats.js.errors.NoStreamResponseError,
        nats.js.errors.ServiceUnavailableError,
        asyncio.TimeoutError,
    )


def _subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject wildcards: ``*`` one token, ``>`` the rest."""
    want = subject.split(".")
    for i, token in enumerate(pattern.split(".")):
        if token == ">":
            return len(want) > i
        if i >= len(want) or (token != "*" and token != want[i]):
            return False
    return len(pattern.split(".")) == len(want)


class JetStreamItem:
    """One message: a trajectory, a whole RL group, or (from a ``coalesce`` sink) a batch
    of those. ``trajectories``: every trajectory in it, in order; ``members``: ``(id,
    trajectories)`` per trajectory (id: the episode id) or group (``group:<group id>``).

    ``seq``: its stream sequence (replay from here); ``msg_id``: its ``Nats-Msg-Id``.
    :meth:`ack` tells the durable consumer it is consumed.
    """

    __slots__ = ("members", "msg", "msg_id", "record_type", "seq", "trajectories")

    def __init__(self, msg: Msg) -> None:
        headers = msg.headers or {}
        self.msg = msg
        self.msg_id = headers.get(HDR_MSG_ID, "")
        kind = headers.get(HDR_TYPE, str(int(RecordType.TRAJECTORY)))
        self.seq = int(msg.metadata.sequence.stream)
        raw = (
            decode_batch(msg.data) if kind == BATCH else [(int(kind), self.msg_id, bytes(msg.data))]
        )
        #: ``BATCH`` for a batch, else the store record type (2 or 3).
        self.record_type: int | str = BATCH if kind == BATCH else int(kind)
        self.members: list[tuple[str, list[Trajectory]]] = []
        for rtype, member_id, payload in raw:
            if rtype == RecordType.GROUP:
                found = [decode_trajectory(m) for m in decode_group(payload)]
            else:
                found = [decode_trajectory(payload)]
            self.members.append((member_id, found))
        self.trajectories = [t for _, ts in self.members for t in ts]

    async def ack(self, *, retry_timeout_s: float = 10.0) -> bool:
        """Acknowledge and wait until the server confirmed it (a double ack), sending it
        again while the server is unreachable, for up to ``retry_timeout_s``. ``False``:
        not confirmed (the server restarted meanwhile, or is away); the message is then
        delivered again. Delivery is at least once: a consumer that must process each
        message once keeps the ``msg_id`` s it has processed (episode ids are unique)."""
        nats = _nats()
        deadline = time.monotonic() + retry_timeout_s
        delay = 0.05
        while True:
            try:
                await self.msg.ack_sync(timeout=2.0)
                return True
            except nats.errors.MsgAlreadyAckdError:
                return True
            except _transient(nats) as exc:
                if time.monotonic() > deadline:
                    _log.warning(
                        "jetstream ack not confirmed",
                        msg_id=self.msg_id,
                        seq=self.seq,
                        error=repr(exc),
                    )
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


class JetStreamReader(AsyncResource):
    """Reads a gymux JetStream stream: a **durable** pull consumer (``durable``: its
    position survives the trainer and the server restarting; each message is redelivered
    until acknowledged, after ``ack_wait_s``), or :meth:`replay` from a stream sequence.

    ``start_seq`` applies when the durable consumer is first created (later runs resume
    where it is).
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        stream: str = DEFAULT_STREAM_NAME,
        subject: str = DEFAULT_SUBJECT,
        durable: str = "gymux-trainer",
        start_seq: int | None = None,
        ack_wait_s: float = 60.0,
        max_ack_pending: int = 4096,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.servers = servers
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self.start_seq = start_seq
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.connect_options = dict(connect_options or {})
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: Any = None

    async def open(self) -> None:
        """The :class:`~gymux.sinks.Sink` name of :meth:`aopen`."""
        await self.aopen()

    async def aopen(self) -> None:
        nats = _nats()
        nc = await _connect(self.servers, "gymux-reader", **self.connect_options)
        try:
            js = nc.jetstream()
            try:
                await js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                raise JetStreamConfigError(
                    f"JetStream stream {self.stream!r} does not exist (no sink created it yet)"
                ) from None
            except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
                raise JetStreamConfigError(
                    "JetStream is not enabled on the server: start nats-server with -js"
                ) from None
            api = nats.js.api
            config = api.ConsumerConfig(
                durable_name=self.durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_s,
                max_ack_pending=self.max_ack_pending,
                deliver_policy=(
                    api.DeliverPolicy.ALL
                    if self.start_seq is None
                    else api.DeliverPolicy.BY_START_SEQUENCE
                ),
                opt_start_seq=self.start_seq,
            )
            self._sub = await js.pull_subscribe(
                self.subject, durable=self.durable, stream=self.stream, config=config
            )
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js

    async def aclose(self) -> None:
        nc, self._nc, self._js, self._sub = self._nc, None, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()

    async def fetch(self, batch: int = 64, timeout_s: float = 1.0) -> list[JetStreamItem]:
        """Up to ``batch`` messages of the durable consumer (``[]`` if none came within
        ``timeout_s``); acknowledge each with :meth:`JetStreamItem.ack`."""
        if self._sub is None:
            raise JetStreamError("JetStream reader is not open")
        nats = _nats()
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout_s)
        except _transient(nats):
            # nothing came, or the server is away: the client reconnects meanwhile
            await asyncio.sleep(0 if self._nc is None or self._nc.is_connected else 0.1)
            return []
        return [JetStreamItem(m) for m in msgs]

    async def messages(
        self, *, batch: int = 64, idle_timeout_s: float | None = None, poll_s: float = 1.0
    ) -> AsyncIterator[JetStreamItem]:
        """The durable consumer's messages until none came for ``idle_timeout_s``
        (``None``: forever)."""
        last = time.monotonic()
        while True:
            items = await self.fetch(batch, poll_s)
            if items:
                last = time.monotonic()
                for item in items:
                    yield item
            elif idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                return

    async def replay(
        self, start_seq: int = 1, *, end_seq: int | None = None, batch: int = 256
    ) -> AsyncIterator[JetStreamItem]:
        """Every message from stream sequence ``start_seq`` to ``end_seq`` (default: the
        last one now), through an ephemeral consumer; the durable one is not moved."""
        js = self._js
        if js is None:
            raise JetStreamError("JetStream reader is not open")
        nats = _nats()
        api = nats.js.api
        if end_seq is None:
            stream_info = await js.stream_info(self.stream)
            end_seq = int(stream_info.state.last_seq)
        if end_seq < start_seq:
            return
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            inactive_threshold=60.0,
        )
        sub = await js.pull_subscribe(self.subject, stream=self.stream, config=config)
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    consumer = await sub.consumer_info()
                    if not consumer.num_pending:
                        return  # the rest up to end_seq was deleted
                    continue
                for msg in msgs:
                    item = JetStreamItem(msg)
                    if item.seq > end_seq:
                        return
                    yield item
                    if item.seq == end_seq:
                        return
        finally:
            await sub.unsubscribe()
