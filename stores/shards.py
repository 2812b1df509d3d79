"""Store shards as one store: each node writes its own store, a trainer reads them all.

::

    shards = StoreShards({"node0": "/mnt/n0/store", "node1": "/mnt/n1/store"})
    for item in shards.trajectories(success=True):          # one ordered view
        ...
    consumer = shards.consumer("grpo", rank=r, world_size=w, follow=True)
    for item in consumer:                                     # exactly once, across restarts
        train(item.trajectories)
        consumer.ack(item, extra={"step": step})

**Shard ids.** A mapping names each shard; a sequence names them ``shard0``, ``shard1``,
... in the order given. Ids are what cursors remember, so give the same ids every time (the
paths may differ between machines).

**Ordering.** Every shard's records come in their sequence order. Across shards the order is
by the key ``(seq, shard id)``: reading a snapshot (``follow=False``) yields exactly that
total order, deterministically; a follower yields, on each poll, what arrived since the
previous poll in key order (a shard that lags is not waited for).

**Sharding by rank.** Record ``seq`` of the shard at index ``i`` (ids sorted) belongs to
rank ``(seq + i) % world_size``: every rank gets its share of every shard, whatever their
rates; with one shard it is the single store's rule (``seq % world_size``). A ``GROUP``
record is one unit, so a group is never split between ranks.

**Consumer cursors.** A :class:`ShardCursor` is one JSON file holding the next sequence
number of every shard, replaced atomically (temporary file, fsync, rename, fsync the
folder), so a commit covering several shards is all or nothing. By default it lives in the
first shard's store, ``.cursors/<stream>/<name>.r<rank>of<world>.shards.json``.
"""

from __future__ import annotations

import heapq
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from gymux.stores.codec import MetaFilter, and_filters, decode_trajectory, make_filter
from gymux.stores.cursor import CURSOR_DIR, read_cursor_state
from gymux.stores.errors import StoreError
from gymux.stores.format import RecordType, fsync_dir, write_file_durable
from gymux.stores.reader import Position, Record, StreamReader
from gymux.stores.store import DEFAULT_STREAM, Store, StorePath, as_store, trajectory_records
from gymux.trajectory import Trajectory

__all__ = ["ShardConsumer", "ShardCursor", "ShardItem", "ShardRecord", "StoreShards"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_FORMAT = "gymux-shard-cursor"


class ShardRecord(NamedTuple):
    """A record of one shard. ``position`` is every shard's next sequence number after it
    (resume from here to continue)."""

    shard: str
    record: Record
    position: dict[str, int]

    @property
    def seq(self) -> int:
        return self.record.seq


class ShardItem(NamedTuple):
    """What a :class:`ShardConsumer` yields: one record's trajectories (a ``GROUP`` record's
    members, or one trajectory), and the position to acknowledge."""

    shard: str
    seq: int
    trajectories: list[Trajectory]
    position: dict[str, int]


def rank_of(seq: int, index: int, world_size: int) -> int:
    """The rank that record ``seq`` of the shard at ``index`` belongs to."""
    return (seq + index) % world_size


class StoreShards:
    """A set of stores (one per node) read as one. See the module doc."""

    def __init__(
        self,
        shards: Mapping[str, StorePath] | Sequence[StorePath],
        *,
        stream: str = DEFAULT_STREAM,
    ) -> None:
        named: dict[str, StorePath] = (
            dict(shards)
            if isinstance(shards, Mapping)
            else {f"shard{i}": s for i, s in enumerate(shards)}
        )
        if not named:
            raise StoreError("no store shards given")
        for shard_id in named:
            if not _NAME.match(shard_id):
                raise ValueError(f"invalid shard id {shard_id!r} (letters, digits, _ . -)")
        #: Shard ids, sorted: a shard's index in this list is its place in the order key.
        self.ids: list[str] = sorted(named)
        self.stores: dict[str, Store] = {i: as_store(named[i]) for i in self.ids}
        self.stream = stream
        for store in self.stores.values():
            store.stream_path(stream)  # validates the name

    def index(self, shard: str) -> int:
        return self.ids.index(shard)

    def _reader(self, shard: str) -> StreamReader | None:
        path = self.stores[shard].stream_path(self.stream)
        return StreamReader(path) if path.is_dir() else None  # a shard not written yet

    def records(
        self,
        start: Mapping[str, int] | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        committed_only: bool = False,
        follow: bool = False,
        poll_s: float = 0.05,
        idle_timeout_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[ShardRecord]:
        """Records of rank ``rank`` of ``world_size`` from ``start`` (each shard's next
        sequence number; missing shards start at 0), in the order of the module doc.
        ``follow`` polls every ``poll_s`` until ``idle_timeout_s`` passes without a record
        (``None``: forever) or ``stop`` is set."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size; got {rank}, {world_size}")
        nexts = {i: 0 for i in self.ids}
        if start is not None:
            unknown = set(start) - set(self.ids)
            if unknown:
                raise StoreError(f"unknown shard ids {sorted(unknown)} (shards: {self.ids})")
            nexts.update(start)
        readers: dict[str, StreamReader | None] = {i: self._reader(i) for i in self.ids}
        positions: dict[str, Position | None] = {i: None for i in self.ids}
        last_progress = time.monotonic()
        while True:
            progressed = False
            streams = []
            for index, shard in enumerate(self.ids):
                if readers[shard] is None:
                    readers[shard] = self._reader(shard)
                reader = readers[shard]
                if reader is None:
                    continue
                pos = positions[shard]
                if pos is None:
                    pos = reader.seek(nexts[shard])
                streams.append(self._shard_iter(index, shard, reader, pos, committed_only))
            for index, shard, record in heapq.merge(*streams, key=lambda t: (t[2].seq, t[0])):
                positions[shard] = record.next
                nexts[shard] = record.seq + 1
                progressed = True
                if rank_of(record.seq, index, world_size) != rank:
                    continue
                yield ShardRecord(shard, record, dict(nexts))
            if progressed:
                last_progress = time.monotonic()
            if not follow or (stop is not None and stop.is_set()):
                return
            if idle_timeout_s is not None and time.monotonic() - last_progress > idle_timeout_s:
                return
            if not progressed:
                time.sleep(poll_s)

    @staticmethod
    def _shard_iter(
        index: int, shard: str, reader: StreamReader, start: Position, committed_only: bool
    ) -> Iterator[tuple[int, str, Record]]:
        for record in reader.records(start, committed_only=committed_only):
            yield index, shard, record

    def trajectories(
        self,
        start: Mapping[str, int] | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        committed_only: bool = False,
        follow: bool = False,
        idle_timeout_s: float | None = None,
        where: MetaFilter | None = None,
        **filters: Any,
    ) -> Iterator[Trajectory]:
        """Decoded trajectories of every shard (groups expanded), filtered on metadata
        first (:func:`gymux.stores.codec.make_filter` keywords)."""
        keep = and_filters(where, make_filter(**filters))
        for item in self.records(
            start,
            rank=rank,
            world_size=world_size,
            committed_only=committed_only,
            follow=follow,
            idle_timeout_s=idle_timeout_s,
        ):
            for record in trajectory_records([item.record], keep):
                yield decode_trajectory(record.payload)

    def cursor(
        self, name: str, *, rank: int = 0, world_size: int = 1, path: str | Path | None = None
    ) -> ShardCursor:
        """Consumer ``name``'s committed cursor (a new one at the start if none)."""
        if path is None:
            if not _NAME.match(name):
                raise ValueError(f"invalid cursor name {name!r} (letters, digits, _ . -)")
            folder = self.stores[self.ids[0]].path / CURSOR_DIR / self.stream
            path = folder / f"{name}.r{rank}of{world_size}.shards.json"
        return ShardCursor.load(
            Path(path), self.stream, name, rank=rank, world_size=world_size, shards=self.ids
        )

    def consumer(
        self,
        name: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        follow: bool = False,
        idle_timeout_s: float | None = None,
        stop: threading.Event | None = None,
        cursor_path: str | Path | None = None,
    ) -> ShardConsumer:
        return ShardConsumer(
            self,
            self.cursor(name, rank=rank, world_size=world_size, path=cursor_path),
            follow=follow,
            idle_timeout_s=idle_timeout_s,
            stop=stop,
        )


class ShardCursorState(msgspec.Struct, kw_only=True):
    """What a shard cursor file holds (version 1)."""

    format: str = _FORMAT
    version: int = 1
    stream: str
    name: str
    rank: int
    world_size: int
    #: Every record of this rank in shard ``id`` with a smaller seq is consumed.
    next_seq: dict[str, int] = msgspec.field(default_factory=dict)
    consumed: int = 0
    commits: int = 0
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


_decoder = msgspec.json.Decoder(ShardCursorState)
_encoder = msgspec.json.Encoder()


class ShardCursor:
    """One consumer's durable position over a set of shards: one file, committed whole."""

    def __init__(self, path: Path, state: ShardCursorState) -> None:
        self.path = path
        self.state = state

    @classmethod
    def load(
        cls,
        path: Path,
        stream: str,
        name: str,
        *,
        rank: int,
        world_size: int,
        shards: Sequence[str],
    ) -> ShardCursor:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size; got {rank}, {world_size}")
        state = read_cursor_state(
            path,
            _decoder,
            fmt=_FORMAT,
            what="gymux shard cursor",
            identity=(stream, name, rank, world_size),
            fresh=lambda: ShardCursorState(
                stream=stream,
                name=name,
                rank=rank,
                world_size=world_size,
                next_seq={s: 0 for s in shards},
            ),
        )
        missing = set(state.next_seq) - set(shards)
        if missing:
            raise StoreError(f"cursor {path} covers shards {sorted(missing)} not given")
        for shard in shards:
            state.next_seq.setdefault(shard, 0)  # a shard added later starts at 0
        return cls(path, state)

    @property
    def next_seq(self) -> dict[str, int]:
        return dict(self.state.next_seq)

    def commit(
        self,
        position: Mapping[str, int],
        *,
        consumed: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Move to ``position`` (no shard moves back), durably."""
        merged = dict(self.state.next_seq)
        for shard, seq in position.items():
            if seq < merged.get(shard, 0):
                raise StoreError(
                    f"cursor {self.path}: shard {shard} cannot move back from "
                    f"{merged[shard]} to {seq}"
                )
            merged[shard] = seq
        new = msgspec.structs.replace(
            self.state,
            next_seq=merged,
            consumed=self.state.consumed + consumed,
            commits=self.state.commits + 1,
            extra=dict(extra) if extra is not None else self.state.extra,
        )
        self._write(_encoder.encode(new) + b"\n")
        self.state = new

    def _write(self, data: bytes) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_file_durable(self.path, data)
            fsync_dir(folder)
        except OSError as exc:
            raise StoreError(f"cannot commit cursor {self.path}: {exc.strerror or exc}") from None


class ShardConsumer:
    """A rank's records over every shard, from its cursor on; :meth:`ack` makes an item
    (and every item yielded before it) consumed, durably. Only durable records are read
    (a record a crashed writer never made durable can be cut and its seq reused)."""

    def __init__(
        self,
        shards: StoreShards,
        cursor: ShardCursor,
        *,
        follow: bool = False,
        idle_timeout_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.shards = shards
        self.cursor = cursor
        self.follow = follow
        self.idle_timeout_s = idle_timeout_s
        self.stop = stop
        self._yielded: list[ShardItem] = []

    def __iter__(self) -> Iterator[ShardItem]:
        state = self.cursor.state
        self._yielded.clear()
        for item in self.shards.records(
            self.cursor.next_seq,
            rank=state.rank,
            world_size=state.world_size,
            committed_only=True,
            follow=self.follow,
            idle_timeout_s=self.idle_timeout_s,
            stop=self.stop,
        ):
            record = item.record
            if record.type not in (RecordType.TRAJECTORY, RecordType.GROUP):
                continue
            members = [decode_trajectory(r.payload) for r in trajectory_records([record], None)]
            out = ShardItem(item.shard, record.seq, members, item.position)
            self._yielded.append(out)
            yield out

    def ack(self, item: ShardItem, *, extra: Mapping[str, Any] | None = None) -> None:
        """Everything yielded up to ``item`` is consumed: commit its position."""
        done = next((i + 1 for i, y in enumerate(self._yielded) if y is item), 0)
        self.cursor.commit(item.position, consumed=done, extra=extra)
        del self._yielded[:done]
