"""Where finished trajectories go.

A :class:`Sink` is awaited for every finished episode, so a slow sink slows the runtime
down instead of letting memory grow (backpressure). The runtime calls :meth:`Sink.flush`
periodically and at the end of each run. Until the append-only store lands,
:class:`JsonlSink` is the default: one JSON object per line, written by a worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import anyio
import msgspec

from gymux.errors import SinkError
from gymux.trajectory import Trajectory

__all__ = ["JsonlSink", "Sink", "SinkError", "read_jsonl"]


@runtime_checkable
class Sink(Protocol):
    async def open(self) -> None: ...

    async def write(self, trajectory: Trajectory) -> None: ...

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...


class JsonlSink:
    """Appends trajectories as JSON lines to ``path`` (created with its parent folders).

    Lines are buffered and written by a worker thread once ``flush_bytes`` accumulate,
    when the runtime's periodic flush fires, and on close (followed by ``fsync``).
    """

    def __init__(self, path: str | Path, *, flush_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self._flush_bytes = flush_bytes
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._file: IO[bytes] | None = None
        self._lock = anyio.Lock()
        self._encoder = msgspec.json.Encoder()
        self.written = 0
        self.last_flush = time.monotonic()

    async def open(self) -> None:
        def _open() -> IO[bytes]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self.path.open("ab")

        try:
            self._file = await anyio.to_thread.run_sync(_open)
        except OSError as exc:
            raise SinkError(f"cannot open {self.path}: {exc.strerror or exc}") from exc

    async def write(self, trajectory: Trajectory) -> None:
        if self._file is None:
            raise SinkError(f"sink {self.path} is not open")
        line = self._encoder.encode(trajectory) + b"\n"
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= self._flush_bytes:
            await self.flush()

    async def flush(self, *, sync: bool = False) -> None:
        async with self._lock:
            data, self._buffer, self._buffered = b"".join(self._buffer), [], 0
            file = self._file
            if file is None or (not data and not sync):
                return

            def _write() -> None:
                file.write(data)
                file.flush()
                if sync:
                    os.fsync(file.fileno())

            try:
                await anyio.to_thread.run_sync(_write)
            except OSError as exc:
                raise SinkError(f"writing {self.path} failed: {exc.strerror or exc}") from exc
            self.written += data.count(b"\n")
            self.last_flush = time.monotonic()

    async def aclose(self) -> None:
        if self._file is None:
            return
        try:
            await self.flush(sync=True)
        finally:
            file, self._file = self._file, None
            await anyio.to_thread.run_sync(file.close)


def read_jsonl(path: str | Path, *, strict: bool = True) -> Iterator[Trajectory]:
    """Read trajectories back from a JSONL file.

    A torn last line (the writer died mid-write) is skipped unless ``strict``; a bad line
    anywhere else always raises ``ValueError`` naming the line.
    """
    decoder = msgspec.json.Decoder(Trajectory)
    with Path(path).open("rb") as fh:
        lines = fh.read().split(b"\n")
    last = len(lines) - 1
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            torn_tail = number - 1 == last
            if torn_tail and not strict:
                return
            kind = "torn last line" if torn_tail else "bad line"
            raise ValueError(f"{path}:{number}: {kind}: {exc}") from None
