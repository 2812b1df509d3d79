"""The runtime's default sink: trajectories appended to a store stream."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.to_thread
import structlog

from gymux._lifecycle import AsyncResource
from gymux.errors import SinkError
from gymux.stores.async_writer import AsyncStreamWriter
from gymux.stores.codec import encode_group, encode_trajectory
from gymux.stores.errors import StoreError
from gymux.stores.format import RecordType
from gymux.stores.store import DEFAULT_STREAM, Store
from gymux.stores.sync_writer import StreamWriter
from gymux.trajectory import Trajectory

__all__ = ["StoreSink"]

_log = structlog.get_logger("gymux.stores")


class StoreSink(AsyncResource):
    """Writes each finished trajectory as one ``TRAJECTORY`` record.

    ``write`` returns once the record is fsynced (``always``, the default: group commit
    keeps it fast with many episodes in flight) or only queued (``batch``/``os``); the
    runtime reports an episode finished after ``write`` returns, so with ``always`` every
    episode reported finished survives a crash. The writer thread's bounded queue is the
    backpressure. ``flush`` waits for durability. The runtime calls ``open``/``aclose``
    (the :class:`~gymux.sinks.Sink` protocol); ``async with StoreSink(...)`` does the same.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        stream: str = DEFAULT_STREAM,
        durability: str = "always",
        **writer_options: Any,
    ) -> None:
        self.path = path
        self.stream = stream
        self._options = dict(writer_options, durability=durability)
        self._writer: AsyncStreamWriter | None = None
        self.written = 0
        #: The error ``write`` or ``flush`` raised; ``aclose`` does not raise it again.
        self.failed: SinkError | None = None
        #: Bytes of a torn tail cut from the stream after the writer failed (0: none).
        self.cut_bytes = 0

    async def aopen(self) -> None:
        try:
            store = Store(self.path)
            self._writer = store.async_writer(self.stream, **self._options)
            await self._writer.aopen()
        except (StoreError, OSError) as exc:
            self._writer = None
            raise SinkError(f"cannot open store {self.path}: {exc}") from exc

    async def open(self) -> None:
        """The :class:`~gymux.sinks.Sink` name of :meth:`aopen`."""
        await self.aopen()

    async def write(self, trajectory: Trajectory) -> None:
        if self._writer is None:
            raise SinkError(f"store sink {self.path} is not open")
        if self.failed is not None:
            raise self.failed
        try:
            await self._writer.append(encode_trajectory(trajectory), RecordType.TRAJECTORY)
        except StoreError as exc:
            self.failed = SinkError(f"writing to store {self.path} failed: {exc}")
            raise self.failed from exc
        self.written += 1

    async def write_group(self, trajectories: Sequence[Trajectory]) -> None:
        """Write an RL group as one ``GROUP`` record: readers see all of it or none of it,
        also after a crash mid-write (recovery drops the torn record). Durability as for
        :meth:`write`."""
        if self._writer is None:
            raise SinkError(f"store sink {self.path} is not open")
        if self.failed is not None:
            raise self.failed
        if not trajectories:
            return
        try:
            await self._writer.append(encode_group(trajectories), RecordType.GROUP)
        except StoreError as exc:
            self.failed = SinkError(f"writing to store {self.path} failed: {exc}")
            raise self.failed from exc
        self.written += len(trajectories)

    async def flush(self) -> None:
        if self._writer is not None:
            if self.failed is not None:
                raise self.failed
            try:
                await self._writer.flush()
            except StoreError as exc:
                self.failed = SinkError(f"flushing store {self.path} failed: {exc}")
                raise self.failed from exc

    async def aclose(self) -> None:
        """Close the writer. After a write failure (a full disk) the stream is recovered at
        once, so no torn tail is left behind (:attr:`cut_bytes` says what was cut); the
        failure, already raised by ``write``/``flush``, is not raised again."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            await writer.aclose()
        except StoreError as exc:
            if self.failed is None:
                self.failed = SinkError(f"closing store {self.path} failed: {exc}")
                raise self.failed from exc
        finally:
            if writer.writer._failed is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._cut_torn_tail)

    def _cut_torn_tail(self) -> None:
        """Open and close the stream once: recovery truncates a torn tail."""
        try:
            with StreamWriter(Store(self.path).stream_path(self.stream)) as w:
                self.cut_bytes = w.recovered_tail_bytes
        except (StoreError, OSError) as exc:
            _log.warning("cannot recover the store after its writer failed", error=repr(exc))
            return
        if self.cut_bytes:
            _log.info("cut the torn tail the failed writer left", bytes=self.cut_bytes)
