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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gymux.stores.codec import (
    MetaFilter,
    TrajectoryMeta,
    decode_meta,
    decode_trajectory,
    make_filter,
)
from gymux.stores.errors import StoreError
from gymux.stores.format import FORMAT_VERSION, RecordType
from gymux.stores.reader import Position, StreamReader
from gymux.stores.writer import AsyncStreamWriter, StreamWriter
from gymux.trajectory import Trajectory

__all__ = ["DEFAULT_STREAM", "Store"]

DEFAULT_STREAM = "trajectories"
MARKER = "STORE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


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
        by_keywords = make_filter(**filters)
        keep: MetaFilter | None
        if where is not None and by_keywords is not None:

            def keep(meta: TrajectoryMeta) -> bool:
                return where(meta) and by_keywords(meta)
        else:
            keep = where or by_keywords
        reader = self.reader(stream, salvage=salvage)
        for record in reader.records(
            start, committed_only=committed_only, follow=follow, idle_timeout_s=idle_timeout_s
        ):
            if record.type != RecordType.TRAJECTORY:
                continue
            if keep is not None and not keep(decode_meta(record.payload)):
                continue
            yield decode_trajectory(record.payload)
