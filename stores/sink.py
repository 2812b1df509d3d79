"""The runtime's default sink: trajectories appended to a store stream."""

from __future__ import annotations

import os
from typing import Any

from gymux._lifecycle import AsyncResource
from gymux.errors import SinkError
from gymux.stores.async_writer import AsyncStreamWriter
from gymux.stores.codec import encode_trajectory
from gymux.stores.errors import StoreError
from gymux.stores.format import RecordType
from gymux.stores.store import DEFAULT_STREAM, Store
from gymux.trajectory import Trajectory

__all__ = ["StoreSink"]


class StoreSink(AsyncResource):
    """Writes each finished trajectory as one ``TRAJECTORY`` record.

    ``write`` returns once the record is queued (``batch``/``os``) or fsynced (``always``);
    the writer thread's bounded queue is the backpressure. ``flush`` waits for
    durability. The runtime calls ``open``/``aclose`` (the :class:`~gymux.sinks.Sink`
    protocol); ``async with StoreSink(...)`` does the same.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        stream: str = DEFAULT_STREAM,
        durability: str = "batch",
        **writer_options: Any,
    ) -> None:
        self.path = path
        self.stream = stream
        self._options = dict(writer_options, durability=durability)
        self._writer: AsyncStreamWriter | None = None
        self.written = 0

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
        try:
            await self._writer.append(encode_trajectory(trajectory), RecordType.TRAJECTORY)
        except StoreError as exc:
            raise SinkError(f"writing to store {self.path} failed: {exc}") from exc
        self.written += 1

    async def flush(self) -> None:
        if self._writer is not None:
            try:
                await self._writer.flush()
            except StoreError as exc:
                raise SinkError(f"flushing store {self.path} failed: {exc}") from exc

    async def aclose(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                await writer.aclose()
            except StoreError as exc:
                raise SinkError(f"closing store {self.path} failed: {exc}") from exc
