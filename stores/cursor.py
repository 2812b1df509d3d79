"""Named consumer cursors: how far a trainer has consumed a stream, kept beside the store.

A cursor is one small JSON file, ``<store>/.cursors/<stream>/<name>.r<rank>of<world>.json``,
replaced atomically (write a temporary file, fsync it, ``rename`` over the old one, fsync
the folder) each time it is committed. It holds the sequence number of the first record
this consumer has not yet acknowledged (``next_seq``), counters, and a small user
``extra`` mapping committed together with it (e.g. the trainer's step). Files starting
with ``.`` are not streams, so the store's tools ignore the folder.

::

    cursor = ConsumerCursor.load(store, "grpo", rank=0, world_size=2)
    ...
    cursor.commit(next_seq=batch.end_seq, consumed=n, skipped_stale=k)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from gymux.stores.errors import StoreError
from gymux.stores.format import fsync_dir, write_file_durable
from gymux.stores.store import DEFAULT_STREAM, StorePath, as_store

__all__ = ["CURSOR_DIR", "ConsumerCursor", "CursorState"]

#: The folder (inside the store) holding every stream's cursors.
CURSOR_DIR = ".cursors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_FORMAT = "gymux-cursor"


class CursorState(msgspec.Struct, kw_only=True):
    """What a cursor file holds (version 1)."""

    format: str = _FORMAT
    version: int = 1
    stream: str
    name: str
    rank: int
    world_size: int
    #: Every record of this shard with a smaller seq is consumed (or was skipped).
    next_seq: int = 0
    #: Groups acknowledged, and groups skipped as too stale, over the cursor's life.
    consumed_groups: int = 0
    skipped_stale: int = 0
    #: How many times it was committed.
    commits: int = 0
    #: The consumer's own small values, committed atomically with the position.
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


_decoder = msgspec.json.Decoder(CursorState)
_encoder = msgspec.json.Encoder()

_S = TypeVar("_S")


def read_cursor_state(
    path: Path,
    decoder: msgspec.json.Decoder[_S],
    *,
    fmt: str,
    what: str,
    identity: tuple[str, str, int, int],
    fresh: Callable[[], _S],
) -> _S:
    """A committed cursor file's state (``fresh()`` when there is none), checked: its
    format, version 1, and ``identity`` = (stream, name, rank, world size). Shared by the
    stream cursor here and the shard cursor (:mod:`gymux.stores.shards`)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return fresh()
    except OSError as exc:
        raise StoreError(f"cannot read cursor {path}: {exc.strerror or exc}") from None
    try:
        state: Any = decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StoreError(f"cursor {path} is unreadable: {exc}") from None
    if state.format != fmt or state.version != 1:
        raise StoreError(f"{path} is not a version 1 {what}")
    if (state.stream, state.name, state.rank, state.world_size) != identity:
        raise StoreError(f"cursor {path} names another consumer")
    result: _S = state
    return result


class ConsumerCursor:
    """One consumer's durable position in one stream, for one rank of ``world_size``.

    Nothing is shared between ranks: each owns its file. :meth:`commit` is durable when it
    returns (the old state or the new one survives a crash, never a mix).
    """

    def __init__(self, path: Path, state: CursorState) -> None:
        self.path = path
        self.state = state

    @classmethod
    def file_path(
        cls, store: StorePath, name: str, *, stream: str, rank: int, world_size: int
    ) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"invalid cursor name {name!r} (letters, digits, _ . -)")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size; got {rank}, {world_size}")
        st = as_store(store)
        st.stream_path(stream)  # validates the stream name
        return st.path / CURSOR_DIR / stream / f"{name}.r{rank}of{world_size}.json"

    @classmethod
    def load(
        cls,
        store: StorePath,
        name: str,
        *,
        stream: str = DEFAULT_STREAM,
        rank: int = 0,
        world_size: int = 1,
    ) -> ConsumerCursor:
        """The committed cursor, or a new one at the stream's start (not yet written)."""
        path = cls.file_path(store, name, stream=stream, rank=rank, world_size=world_size)
        state = read_cursor_state(
            path,
            _decoder,
            fmt=_FORMAT,
            what="gymux cursor",
            identity=(stream, name, rank, world_size),
            fresh=lambda: CursorState(stream=stream, name=name, rank=rank, world_size=world_size),
        )
        return cls(path, state)

    @property
    def next_seq(self) -> int:
        return self.state.next_seq

    def commit(
        self,
        *,
        next_seq: int,
        consumed: int = 0,
        skipped_stale: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Move the cursor to ``next_seq`` (never back), add to the counters, replace
        ``extra`` if given, and make it durable."""
        if next_seq < self.state.next_seq:
            raise StoreError(
                f"cursor {self.path}: cannot move back from {self.state.next_seq} to {next_seq}"
            )
        new = msgspec.structs.replace(
            self.state,
            next_seq=next_seq,
            consumed_groups=self.state.consumed_groups + consumed,
            skipped_stale=self.state.skipped_stale + skipped_stale,
            commits=self.state.commits + 1,
            extra=dict(extra) if extra is not None else self.state.extra,
        )
        self._write(_encoder.encode(new) + b"\n")
        self.state = new

    def _write(self, data: bytes) -> None:
        folder = self.path.parent
        try:
            created = not folder.is_dir()
            folder.mkdir(parents=True, exist_ok=True)
            if created:
                fsync_dir(folder.parent)
                fsync_dir(folder.parent.parent)
            write_file_durable(self.path, data)
            fsync_dir(folder)
        except OSError as exc:
            raise StoreError(f"cannot commit cursor {self.path}: {exc.strerror or exc}") from None
