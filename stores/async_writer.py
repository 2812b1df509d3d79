"""The ``await``-able front of a :class:`~gymux.stores.sync_writer.StreamWriter` (asyncio).

::

    async with AsyncStreamWriter(path) as w:
        seq = await w.append(b"payload")
        await w.flush()
"""

from __future__ import annotations

import asyncio
import os

import anyio

from gymux._lifecycle import AsyncResource
from gymux.stores.format import FRAME, RecordType
from gymux.stores.sync_writer import StreamWriter

__all__ = ["AsyncStreamWriter"]


class AsyncStreamWriter(AsyncResource):
    """``await``-able front of a :class:`StreamWriter` (asyncio backend).

    ``await append(payload)`` returns once the record is queued (``os``/``batch``) or
    durable (``always``); it never blocks the event loop, also under backpressure.
    """

    def __init__(self, path: str | os.PathLike[str], **options: object) -> None:
        self.writer = StreamWriter(path, **options)  # type: ignore[arg-type]

    async def aopen(self) -> None:
        # Shielded: a cancel arriving mid-open would leave the thread holding the stream's
        # lock with no one to release it; the open is bounded (recovery of the tail only).
        with anyio.CancelScope(shield=True):
            await asyncio.to_thread(self.writer.open)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.writer.close)

    async def append(self, payload: bytes, rtype: int = RecordType.DATA) -> int:
        w = self.writer
        if w._pending_bytes + len(payload) + FRAME.size > w.max_pending_bytes:
            seq = await asyncio.to_thread(w._enqueue, payload, rtype)
        else:
            seq = w._enqueue(payload, rtype)
        if w.durability == "always":
            await w._register_async(seq)
        return seq

    async def flush(self) -> None:
        w = self.writer
        last = w.next_seq - 1
        if last < 0:
            return
        with w._cond:
            w._want_sync = True
        await w._register_async(last)
