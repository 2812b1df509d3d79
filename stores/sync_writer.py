"""The synchronous writer of a stream: it takes the lock, recovers the stream (see
:mod:`gymux.stores.recovery`), then group-commits appends in a writer thread and rolls
segments.

::

    with StreamWriter(path, durability="batch") as w:
        seq = w.append(b"payload")          # returns once queued (os/batch) or durable (always)
        w.flush()                           # everything appended so far is on disk

(:class:`~gymux.stores.async_writer.AsyncStreamWriter` is its ``await``-able front.)

Durability modes:

* ``os``: records are handed to the OS; nothing is fsynced until close.
* ``batch`` (default): fdatasync at most every ``sync_interval_s`` or ``sync_bytes``.
* ``always``: ``append`` returns after the fdatasync of the group its record was written in.

Backpressure: at most ``max_pending_bytes`` may wait for the writer thread; ``append``
blocks (or awaits) beyond that, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import google_crc32c
import structlog

from gymux.stores.commit import CommitFile
from gymux.stores.errors import (
    RecordTooLargeError,
    StoreClosedError,
)
from gymux.stores.format import (
    DEFAULT_MAX_RECORD,
    FRAME,
    IndexData,
    RecordType,
    encode_index,
    encode_segment_header,
    fsync_dir,
    index_name,
    segment_name,
)
from gymux.stores.lock import StreamLock
from gymux.stores.recovery import recover_stream, write_file_synced
from gymux.stores.scan import DEFAULT_INDEX_INTERVAL

__all__ = ["Durability", "StreamWriter"]

_log = structlog.get_logger("gymux.stores")

Durability = Literal["os", "batch", "always"]
_FRAME_SIZE = FRAME.size
_pack_body = struct.Struct("<IQB").pack
_pack_u32 = struct.Struct("<I").pack
_crc_value = google_crc32c.value
_crc_extend = google_crc32c.extend
_M32 = 0xFFFFFFFF
_MASK = 0xA282EAD8
#: Writer-thread polling while appends flow (os/batch modes), and how long it goes on.
_POLL_S = 0.001
_POLL_IDLE_S = 0.05
#: Buffers per writev call (Linux IOV_MAX is 1024).
_IOV_MAX = 1024


class StreamWriter:
    """Appends records to one stream. Only one writer per stream may be open."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "batch",
        segment_bytes: int = 64 * 1024 * 1024,
        segment_age_s: float | None = None,
        sync_interval_s: float = 0.01,
        sync_bytes: int = 4 * 1024 * 1024,
        max_pending_bytes: int = 32 * 1024 * 1024,
        max_record_bytes: int = DEFAULT_MAX_RECORD,
        index_interval: int = DEFAULT_INDEX_INTERVAL,
        salvage: bool = False,
    ) -> None:
        if durability not in ("os", "batch", "always"):
            raise ValueError(f"durability must be os, batch or always; got {durability!r}")
        self.path = Path(path)
        self.durability: Durability = durability
        self.segment_bytes = segment_bytes
        self.segment_age_s = segment_age_s
        self.sync_interval_s = sync_interval_s
        self.sync_bytes = sync_bytes
        self.max_pending_bytes = max(max_pending_bytes, max_record_bytes + 64)
        self.max_record_bytes = max_record_bytes
        self.index_interval = index_interval
        self.salvage = salvage
        #: Replaceable for fault-injection tests.
        self._fdatasync: Callable[[int], None] = os.fdatasync
        self._cond = threading.Condition()
        #: Guards the queue (`_pending`, `_pending_bytes`, `_next_seq`, `_writer_idle`).
        self._qlock = threading.Lock()
        #: True while the writer thread sleeps until notified (see _loop_forever).
        self._writer_idle = False
        self._last_batch = 0.0
        self._pending: list[tuple[int, bytes, bytes]] = []
        self._pending_bytes = 0
        self._next_seq = 0
        self._written_seq = -1
        self._durable_seq = -1
        self._failed: BaseException | None = None
        self._closing = False
        self._want_sync = False
        self._thread: threading.Thread | None = None
        self._lock: StreamLock | None = None
        self._fd = -1
        self._commit = CommitFile(self.path)
        self._seg_first = 0
        self._seg_size = 0
        self._seg_records = 0
        self._seg_created = 0.0
        self._seg_index: list[tuple[int, int]] = []
        self._seg_last_indexed = -index_interval
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self._async_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.recovered_tail_bytes = 0
        self.salvaged_bytes = 0
        self.segments_rolled = 0
        self.syncs = 0

    # -- life cycle ---------------------------------------------------------------------

    def open(self) -> Self:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = StreamLock(self.path)
        try:
            self._recover()
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._release_files()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"gymux-writer:{self.path.name}", daemon=True
        )
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def durable_seq(self) -> int:
        """Highest sequence number known durable (-1 if none)."""
        return self._durable_seq

    def close(self) -> None:
        """Write and fsync everything pending, then release the lock."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread.join()
        self._thread = None
        try:
            if self._fd >= 0:
                try:
                    if self._failed is None:
                        self._sync()
                finally:
                    os.close(self._fd)
                    self._fd = -1
        finally:
            self._release_files()
        if self._failed is not None and not isinstance(self._failed, StoreClosedError):
            raise StoreClosedError(f"writer of {self.path} failed: {self._failed}")

    def _release_files(self) -> None:
        self._commit.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- recovery -----------------------------------------------------------------------

    def _recover(self) -> None:
        rec = recover_stream(
            self.path,
            max_record_bytes=self.max_record_bytes,
            salvage=self.salvage,
            index_interval=self.index_interval,
            fdatasync=self._fdatasync,
        )
        self.salvaged_bytes += rec.salvaged_bytes
        self.recovered_tail_bytes += rec.recovered_tail_bytes
        if rec.fd < 0:  # a new stream
            self._create_segment(0)
            return
        self._fd = rec.fd
        os.lseek(rec.fd, rec.end, os.SEEK_SET)
        self._seg_first = rec.first
        self._seg_size = rec.end
        self._seg_records = rec.records
        self._seg_index = rec.index_entries
        self._seg_last_indexed = self._seg_index[-1][1] if self._seg_index else -self.index_interval
        self._seg_created = time.monotonic()
        self._next_seq = rec.next_seq
        self._written_seq = self._durable_seq = self._next_seq - 1
        self._write_commit()

    def _write_file_atomic(self, path: Path, data: bytes) -> None:
        write_file_synced(self.path, path, data, self._fdatasync)

    def _create_segment(self, first: int) -> None:
        seg_path = self.path / segment_name(first)
        fd = os.open(seg_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        header = encode_segment_header(first, time.time_ns())
        os.write(fd, header)
        self._fdatasync(fd)
        fsync_dir(self.path)
        self._fd = fd
        self._seg_first = first
        self._seg_size = len(header)
        self._seg_records = 0
        self._seg_index = []
        self._seg_last_indexed = -self.index_interval
        self._seg_created = time.monotonic()
        with self._qlock:
            self._next_seq = max(self._next_seq, first)

    def _write_commit(self, next_seq: int | None = None) -> None:
        if next_seq is None:
            next_seq = self._durable_seq + 1
        self._commit.write(next_seq, self._seg_first, self._seg_size)

    # -- appending ------------------------------------------------------------------------

    def _enqueue(self, payload: bytes, rtype: int) -> int:
        """Frame the payload, give it a sequence number and queue it. Blocks on backpressure."""
        size = len(payload)
        if size > self.max_record_bytes:
            raise RecordTooLargeError(
                f"record of {size:,} bytes exceeds max_record_bytes "
                f"({self.max_record_bytes:,}) of {self.path}"
            )
        # the queue holds frames: count the frame header too, or the bound is overshot
        need = size + _FRAME_SIZE
        while True:
            if self._failed is not None:
                raise StoreClosedError(f"writer of {self.path} failed: {self._failed}")
            if self._closing or self._thread is None:
                raise StoreClosedError(f"writer of {self.path} is closed")
            with self._qlock:  # the fast path: a C-level lock, no condition variable
                if self._pending_bytes + need <= self.max_pending_bytes:
                    seq = self._next_seq
                    self._next_seq = seq + 1
                    # The frame header (see gymux.stores.format.encode_frame_header), inlined:
                    # this is the hottest line of the writer. The payload is queued as it is.
                    body = _pack_body(size, seq, rtype)
                    c = _crc_extend(_crc_value(body), payload)
                    header = _pack_u32(((((c >> 15) | (c << 17)) & _M32) + _MASK) & _M32) + body
                    self._pending.append((seq, header, payload))
                    self._pending_bytes += need
                    wake = self._writer_idle
                    break
            with self._cond:  # backpressure: wait for the writer thread to drain
                self._cond.wait_for(
                    lambda: (
                        self._pending_bytes + need <= self.max_pending_bytes
                        or self._failed is not None
                        or self._closing
                    ),
                    timeout=0.1,
                )
        if wake:
            with self._cond:
                self._cond.notify_all()
        return seq

    def append(self, payload: bytes, rtype: int = RecordType.DATA) -> int:
        """Append one record; returns its sequence number (after its fsync in ``always``)."""
        seq = self._enqueue(payload, rtype)
        if self.durability == "always":
            self.wait_durable(seq)
        return seq

    def wait_durable(self, seq: int, timeout: float | None = None) -> None:
        """Block until ``seq`` is durable (fsynced)."""
        with self._cond:
            if seq > self._durable_seq and self._thread is not None and not self._want_sync:
                self._want_sync = True  # someone is waiting: sync now, not at the interval
                self._cond.notify_all()
            ok = self._cond.wait_for(
                lambda: self._durable_seq >= seq or self._failed is not None, timeout
            )
            if self._failed is not None and self._durable_seq < seq:
                raise StoreClosedError(f"writer of {self.path} failed: {self._failed}")
            if not ok:
                raise TimeoutError(f"seq {seq} not durable after {timeout}s")

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything appended so far is durable."""
        with self._cond:
            last = self._next_seq - 1
            self._want_sync = True
        if last >= 0:
            self.wait_durable(last, timeout)

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop_forever()
        except BaseException as exc:
            _log.info("store writer failed", stream=str(self.path), error=repr(exc))
            self._failed = exc
            with self._qlock:
                self._pending.clear()
                self._pending_bytes = 0
            with self._cond:
                self._cond.notify_all()
            self._wake_async(failed=exc)

    def _sync_due(self, now: float) -> bool:
        if self._written_seq <= self._durable_seq:
            return False
        if self.durability == "always" or self._want_sync:
            return True
        if self.durability == "batch":
            return (
                now - self._last_sync >= self.sync_interval_s or self._unsynced >= self.sync_bytes
            )
        return False

    def _loop_forever(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    # While appends keep coming (os/batch), poll every _POLL_S instead of
                    # being woken by each append: a notify per append costs the producer
                    # more than the write. After _POLL_IDLE_S without appends, sleep until
                    # woken. Producers read the flag under the same lock after queueing, so
                    # one of us always sees the other: no lost wake-up.
                    polling = self.durability != "always" and now - self._last_batch < _POLL_IDLE_S
                    with self._qlock:
                        has_work = bool(self._pending)
                        self._writer_idle = not has_work and not polling
                    if has_work or self._closing or self._sync_due(now):
                        self._writer_idle = False
                        break
                    timeout = _POLL_S if polling else None
                    if self.durability == "batch" and self._written_seq > self._durable_seq:
                        left = max(0.0, self.sync_interval_s - (now - self._last_sync))
                        timeout = left if timeout is None else min(timeout, left)
                    if self.segment_age_s is not None and self._seg_records:
                        age_left = self.segment_age_s - (now - self._seg_created)
                        if age_left <= 0:
                            break
                        timeout = age_left if timeout is None else min(timeout, age_left)
                    self._cond.wait(timeout)
                closing = self._closing
            with self._qlock:
                self._writer_idle = False
                batch = self._pending
                self._pending = []
            if batch:
                self._last_batch = time.monotonic()
                written = self._write_batch(batch)
                with self._qlock:
                    self._pending_bytes -= written
                with self._cond:
                    self._cond.notify_all()
            elif self._should_roll_by_age():
                self._roll(self._written_seq + 1)
            now = time.monotonic()
            with self._cond:
                due = self._sync_due(now)
            if due:
                self._sync()
            elif batch and self.durability == "os":
                # publish COMMIT before waking anyone (as _sync does)
                self._write_commit(self._written_seq + 1)
                with self._cond:
                    self._durable_seq = self._written_seq
                    self._cond.notify_all()
                self._wake_async()
            if closing:
                with self._qlock:
                    if not self._pending:
                        return

    def _write_batch(self, batch: list[tuple[int, bytes, bytes]]) -> int:
        """Write a batch (rolling segments where needed); returns the bytes written."""
        total = 0
        start = 0
        while start < len(batch):
            # The longest run that fits the active segment (at least one record).
            room = self.segment_bytes - self._seg_size
            end = start
            run_bytes = 0
            while end < len(batch):
                size = FRAME.size + len(batch[end][2])
                if run_bytes + size > room and (end > start or self._seg_records):
                    break
                run_bytes += size
                end += 1
            if end == start or self._should_roll_by_age():
                self._roll(batch[start][0])
                continue
            self._write_run(batch, start, end)
            total += run_bytes
            start = end
        return total

    def _should_roll_by_age(self) -> bool:
        return (
            self.segment_age_s is not None
            and self._seg_records > 0
            and time.monotonic() - self._seg_created >= self.segment_age_s
        )

    def _write_run(self, batch: list[tuple[int, bytes, bytes]], start: int, end: int) -> None:
        """Write ``batch[start:end]`` to the active segment with vectored writes."""
        offset = self._seg_size
        last_indexed = self._seg_last_indexed
        interval = self.index_interval
        index = self._seg_index
        buffers: list[bytes] = []
        for i in range(start, end):
            seq, header, payload = batch[i]
            if offset - last_indexed >= interval:
                index.append((seq, offset))
                last_indexed = offset
            buffers.append(header)
            buffers.append(payload)
            offset += FRAME.size + len(payload)
        self._seg_last_indexed = last_indexed
        for j in range(0, len(buffers), _IOV_MAX):
            self._writev_all(buffers[j : j + _IOV_MAX])
        written = offset - self._seg_size
        self._seg_size = offset
        self._seg_records += end - start
        self._unsynced += written
        with self._cond:
            self._written_seq = batch[end - 1][0]

    def _writev_all(self, buffers: list[bytes]) -> None:
        want = sum(len(b) for b in buffers)
        done = os.writev(self._fd, buffers)
        if done < want:  # a short write (rare on regular files): finish byte by byte
            rest = memoryview(b"".join(buffers))[done:]
            while rest:
                n = os.write(self._fd, rest)
                rest = rest[n:]

    def _sync(self) -> None:
        with self._cond:
            target = self._written_seq
            self._want_sync = False
        try:
            self._fdatasync(self._fd)
        except OSError as exc:
            # Never retried: after a failed fsync the page cache state is unknowable.
            raise StoreClosedError(
                f"fdatasync failed on segment {segment_name(self._seg_first)}: {exc}"
            ) from exc
        self.syncs += 1
        self._unsynced = 0
        self._last_sync = time.monotonic()
        # Publish the durable position before waking waiters, so that once `append`
        # (always) or `flush` returns, COMMIT and committed_only readers cover the record.
        # Only this thread (or close, after joining it) writes, so `_seg_size` is exactly
        # the end of record `target`.
        self._write_commit(target + 1)
        with self._cond:
            self._durable_seq = max(self._durable_seq, target)
            self._cond.notify_all()
        self._wake_async()

    def _roll(self, next_first: int) -> None:
        """Seal the active segment (sync, index) and start the next one at ``next_first``."""
        self._sync()
        index = IndexData(
            self._seg_first,
            self._seg_records,
            self._seg_size,
            next_first,
            self.index_interval,
            list(self._seg_index),
        )
        self._write_file_atomic(self.path / index_name(self._seg_first), encode_index(index))
        os.close(self._fd)
        self._fd = -1
        self.segments_rolled += 1
        self._create_segment(next_first)
        self._write_commit()

    # -- async support ------------------------------------------------------------------

    def _register_async(self, seq: int) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        self._loop = loop
        fut: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._failed is not None:
                fut.set_exception(StoreClosedError(f"writer of {self.path} failed: {self._failed}"))
            elif self._durable_seq >= seq:
                fut.set_result(None)
            else:
                self._async_waiters.append((seq, fut))
                self._want_sync = True
                self._cond.notify_all()
        return fut

    def _wake_async(self, failed: BaseException | None = None) -> None:
        loop = self._loop
        if loop is None or not self._async_waiters:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(self._resolve_async, failed)

    def _resolve_async(self, failed: BaseException | None) -> None:
        durable = self._durable_seq
        waiters = self._async_waiters
        while waiters and (failed is not None or waiters[0][0] <= durable):
            seq, fut = waiters.popleft()
            if fut.done():
                continue
            if failed is not None and seq > durable:
                fut.set_exception(StoreClosedError(f"writer of {self.path} failed: {failed}"))
            else:
                fut.set_result(None)
