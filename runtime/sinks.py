"""Where finished trajectories go.

A :class:`Sink` is awaited for every finished episode, so a slow sink slows the runtime
down instead of letting memory grow (backpressure). The runtime calls :meth:`Sink.flush`
periodically and at the end of each run. Until the append-only store lands,
:class:`JsonlSink` is the default: one JSON object per line, written by a worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import anyio
import msgspec
import structlog

from gymux.errors import SinkError
from gymux.trajectory import Trajectory

_log = structlog.get_logger("gymux.sinks")

__all__ = [
    "FLUSH_INTERVAL_S",
    "JsonlSink",
    "Sink",
    "SinkError",
    "SinkFlusher",
    "read_jsonl",
    "write_group",
]


@runtime_checkable
class Sink(Protocol):
    """Where finished trajectories go.

    ``write_group`` writes the trajectories of one RL group (e.g. the samples of one task
    for GRPO) all or nothing: a reader of the sink's output sees every one of them or none,
    even when the writer dies half-way.
    """

    async def open(self) -> None: ...

    async def write(self, trajectory: Trajectory) -> None: ...

    async def write_group(self, trajectories: Sequence[Trajectory]) -> None: ...

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

    async def write_group(self, trajectories: Sequence[Trajectory]) -> None:
        """Write a group's lines in one ``write`` call (never split between two flushes).

        A crash can still tear that write; :func:`read_jsonl` then drops the whole torn
        group (its lines carry ``group_id``/``group_size``) with ``strict=False``.
        """
        if self._file is None:
            raise SinkError(f"sink {self.path} is not open")
        if not trajectories:
            return
        data = b"".join(self._encoder.encode(t) + b"\n" for t in trajectories)
        self._buffer.append(data)
        self._buffered += len(data)
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


async def write_group(sink: Sink, trajectories: Sequence[Trajectory]) -> None:
    """``sink.write_group(trajectories)``, or one ``write`` each for a sink written before
    groups existed (such a sink cannot promise all or nothing)."""
    method = getattr(sink, "write_group", None)
    if method is not None:
        await method(trajectories)
        return
    for trajectory in trajectories:
        await sink.write(trajectory)


def read_jsonl(path: str | Path, *, strict: bool = True) -> Iterator[Trajectory]:
    """Read trajectories back from a JSONL file.

    A torn last line (the writer died mid-write) is skipped unless ``strict``; a bad line
    anywhere else always raises ``ValueError`` naming the line. With ``strict=False`` a
    group cut short at the end of the file (fewer lines of its ``group_id`` than its
    ``group_size`` at the tail) is dropped whole.
    """
    decoder = msgspec.json.Decoder(Trajectory)
    with Path(path).open("rb") as fh:
        lines = fh.read().split(b"\n")
    last = len(lines) - 1
    pending: list[Trajectory] = []  # the lines of a group not yet complete
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            trajectory = decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            torn_tail = number - 1 == last
            if torn_tail and not strict:
                return
            kind = "torn last line" if torn_tail else "bad line"
            raise ValueError(f"{path}:{number}: {kind}: {exc}") from None
        if pending and trajectory.group_id != pending[0].group_id:
            # Not one write: the group was written line by line; hand it on as it is.
            yield from pending
            pending = []
        if trajectory.group_id is None or trajectory.group_size <= 1:
            yield trajectory
            continue
        pending.append(trajectory)
        if len(pending) >= trajectory.group_size:
            yield from pending
            pending = []
    if pending:
        if strict:
            raise ValueError(
                f"{path}: torn group {pending[0].group_id!r}: {len(pending)} of "
                f"{pending[0].group_size} trajectories at the end of the file"
            )
        return


#: How often :class:`SinkFlusher` flushes the sinks while runs go on (seconds).
FLUSH_INTERVAL_S = 1.0


class SinkFlusher:
    """Flushes a list of sinks every :data:`FLUSH_INTERVAL_S` until told to stop, and once
    more at the end; a sink whose flush fails is logged once (a failed sink fails every
    later flush the same way, and the runs writing to it end with that error)."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks
        self._warned: set[int] = set()

    async def flush(self) -> None:
        for sink in self.sinks:
            try:
                await sink.flush()
            except Exception as exc:
                already = exc is getattr(sink, "failed", None)  # raised to a run already
                if id(sink) not in self._warned and not already:
                    self._warned.add(id(sink))
                    _log.warning("sink flush failed", sink=repr(sink), error=repr(exc))

    async def run_until(self, stop: anyio.Event) -> None:
        """Flush every interval until ``stop`` is set, then once more."""
        while not stop.is_set():
            with anyio.move_on_after(FLUSH_INTERVAL_S):
                await stop.wait()
            await self.flush()
