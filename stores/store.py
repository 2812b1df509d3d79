"""A store: a directory of named streams, plus trajectory-level helpers.

::

    store = Store("runs/x/store")
    with store.writer("trajectories") as w:
        w.append(encode_trajectory(t), RecordType.TRAJECTORY)
    for t in store.trajectories(success=True):
        ...
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gymux.stores.async_writer import AsyncStreamWriter
from gymux.stores.codec import (
    MetaFilter,
    and_filters,
    decode_group,
    decode_meta,
    decode_trajectory,
    make_filter,
)
from gymux.stores.errors import StoreError
from gymux.stores.format import FORMAT_VERSION, RecordType
from gymux.stores.reader import Position, Record, StreamReader
from gymux.stores.sync_writer import StreamWriter
from gymux.trajectory import Trajectory

__all__ = ["DEFAULT_STREAM", "Store", "StorePath", "as_store", "trajectory_records"]

DEFAULT_STREAM = "trajectories"
MARKER = "STORE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def trajectory_records(records: Iterable[Record], keep: MetaFilter | None) -> Iterator[Record]:
    """The ``TRAJECTORY`` records of ``records`` whose metadata ``keep`` keeps (all if
    ``None``); the body is never decoded here.

    A ``GROUP`` record is expanded into one ``TRAJECTORY`` record per member, in order;
    they share the group record's ``seq`` and position. ``keep`` is asked about each member.
    """
    for record in records:
        if record.type == RecordType.GROUP:
            for member in decode_group(record.payload):
                if keep is None or keep(decode_meta(member)):
                    yield record._replace(type=RecordType.TRAJECTORY, payload=member)
            continue
        if record.type != RecordType.TRAJECTORY:
            continue
        if keep is not None and not keep(decode_meta(record.payload)):
            continue
        yield record


class Store:
    """A directory of streams. ``create=False`` requires an existing store."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        marker = self.path / MARKER
        if marker.exists():
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError) as exc:
                raise StoreError(f"{marker} is unreadable: {exc}") from None
            if info.get("format") != "gymux-store":
                raise StoreError(f"{self.path} is not a gymux store")
            if int(info.get("version", 0)) > FORMAT_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer gymux (store format "
                    f"{info.get('version')}, this reader knows up to {FORMAT_VERSION})"
                )
        elif create:
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"format": "gymux-store", "version": FORMAT_VERSION}) + "\n")
            os.replace(tmp, marker)
        else:
            raise StoreError(f"no gymux store at {self.path}")

    def stream_path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"invalid stream name {name!r} (letters, digits, _ . -)")
        return self.path / name

    def streams(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_dir() and _NAME.match(p.name))

    def existing_stream(self, name: str) -> Path:
        """The directory of stream ``name``; :class:`StoreError` naming the streams there
        are if it does not exist."""
        path = self.stream_path(name)
        if not path.is_dir():
            known = ", ".join(self.streams()) or "none"
            raise StoreError(f"no stream {name!r} in {self.path} (streams: {known})")
        return path

    def stream_dirs(self, stream: str | None = None) -> list[tuple[str, Path]]:
        """``(name, directory)`` of every stream, or of ``stream`` alone (which must exist)."""
        if stream is None:
            return [(name, self.path / name) for name in self.streams()]
        return [(stream, self.existing_stream(stream))]

    def writer(self, stream: str = DEFAULT_STREAM, **options: Any) -> StreamWriter:
        """A (not yet opened) writer; use it as a context manager."""
        return StreamWriter(self.stream_path(stream), **options)

    def async_writer(self, stream: str = DEFAULT_STREAM, **options: Any) -> AsyncStreamWriter:
        return AsyncStreamWriter(self.stream_path(stream), **options)

    def reader(self, stream: str = DEFAULT_STREAM, **options: Any) -> StreamReader:
        return StreamReader(self.stream_path(stream), **options)

    def trajectories(
        self,
        stream: str = DEFAULT_STREAM,
        *,
        start: Position | int | None = None,
        committed_only: bool = False,
        follow: bool = False,
        idle_timeout_s: float | None = None,
        where: MetaFilter | None = None,
        salvage: bool = False,
        **filters: Any,
    ) -> Iterator[Trajectory]:
        """Decoded trajectories; ``filters`` are :func:`gymux.stores.codec.make_filter`
        keywords (``env``, ``success``, ``min_policy_step``, ...), checked on the record's
        metadata before the body is decoded."""
        keep = and_filters(where, make_filter(**filters))
        reader = self.reader(stream, salvage=salvage)
        records = reader.records(
            start, committed_only=committed_only, follow=follow, idle_timeout_s=idle_timeout_s
        )
        for record in trajectory_records(records, keep):
            yield decode_trajectory(record.payload)


#: A store, or the path of an existing one.
StorePath = str | os.PathLike[str] | Store


def as_store(store: StorePath) -> Store:
    """``store`` itself, or the existing store at that path (:class:`StoreError` if none)."""
    return store if isinstance(store, Store) else Store(store, create=False)
