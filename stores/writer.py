"""The single writer of a stream: lock, recovery, group commit in a writer thread, rolling.

::

    with StreamWriter(path, durability="batch") as w:
        seq = w.append(b"payload")          # returns once queued (os/batch) or durable (always)
        w.flush()                           # everything appended so far is on disk
    # async:
    async with AsyncStreamWriter(path) as w:
        seq = await w.append(b"payload")

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
import fcntl
import os
import socket
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

from gymux.stores.errors import (
    CorruptionError,
    RecordTooLargeError,
    StoreClosedError,
    StoreLockedError,
)
from gymux.stores.format import (
    DEFAULT_MAX_RECORD,
    FRAME,
    SEGMENT_HEADER,
    IndexData,
    RecordType,
    encode_frame,
    encode_index,
    encode_segment_header,
    fsync_dir,
    index_name,
    list_segments,
    mask,
    parse_index,
    segment_name,
)
from gymux.stores.scan import DEFAULT_INDEX_INTERVAL, scan_segment

__all__ = [
    "COMMIT_FILE",
    "LOCK_FILE",
    "AsyncStreamWriter",
    "Durability",
    "StreamLock",
    "StreamWriter",
    "encode_commit",
    "read_commit",
]

_log = structlog.get_logger("gymux.stores")

Durability = Literal["os", "batch", "always"]
LOCK_FILE = "LOCK"
COMMIT_FILE = "COMMIT"
_COMMIT = struct.Struct("<8sQQQ")
_COMMIT_MAGIC = b"GYMXCMT1"
_U32 = struct.Struct("<I")
_COMMIT_SLOT = _COMMIT.size + 4
_FRAME_SIZE = FRAME.size
_pack_body = struct.Struct("<IQB").pack
_pack_u32 = _U32.pack
_crc_value = google_crc32c.value
_crc_extend = google_crc32c.extend
_M32 = 0xFFFFFFFF
_MASK = 0xA282EAD8
#: Writer-thread polling while appends flow (os/batch modes), and how long it goes on.
_POLL_S = 0.001
_POLL_IDLE_S = 0.05
#: Buffers per writev call (Linux IOV_MAX is 1024).
_IOV_MAX = 1024


def _parse_commit_slot(data: bytes, offset: int) -> tuple[int, int, int] | None:
    import google_crc32c

    if len(data) < offset + _COMMIT_SLOT:
        return None
    (crc,) = _U32.unpack_from(data, offset + _COMMIT.size)
    if mask(google_crc32c.value(data[offset : offset + _COMMIT.size])) != crc:
        return None
    magic, next_seq, segment, pos = _COMMIT.unpack_from(data, offset)
    if magic != _COMMIT_MAGIC:
        return None
    return next_seq, segment, pos


def read_commit(stream_dir: Path) -> tuple[int, int, int] | None:
    """The durable position ``(next_seq, segment_first_seq, offset)``, or ``None``.

    COMMIT holds two 36-byte slots written alternately, so that a torn write of one
    leaves the other readable; the valid slot furthest ahead wins. (Format 1 files written
    before the second slot existed hold one slot.)
    """
    try:
        data = (stream_dir / COMMIT_FILE).read_bytes()
    except FileNotFoundError:
        return None
    slots = [
        slot
        for slot in (_parse_commit_slot(data, 0), _parse_commit_slot(data, _COMMIT_SLOT))
        if slot is not None
    ]
    return max(slots) if slots else None


def encode_commit(next_seq: int, segment: int, offset: int) -> bytes:
    """One COMMIT slot (36 bytes)."""
    import google_crc32c

    body = _COMMIT.pack(_COMMIT_MAGIC, next_seq, segment, offset)
    return body + _U32.pack(mask(google_crc32c.value(body)))


class StreamLock:
    """An exclusive, non-blocking flock on a stream's ``LOCK`` file; the file names the
    holder. Writers take it, and so does maintenance (``role`` says who holds it)."""

    def __init__(self, stream_dir: Path, role: str = "", action: str | None = None) -> None:
        self.path = stream_dir / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 512, 0).decode(errors="replace").strip()
            holder = holder or "holder unknown"
            os.close(self._fd)
            message = (
                f"cannot {action} {stream_dir}: a writer has it open ({holder}); "
                "close the writer first"
                if action
                else f"stream {stream_dir} already has a writer ({holder})"
            )
            raise StoreLockedError(message) from None
        prefix = f"{role} " if role else ""
        info = (
            f"{prefix}pid={os.getpid()} host={socket.gethostname()} "
            f"since={time.strftime('%FT%T')}\n"
        )
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, info.encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


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
        self._commit_fd = -1
        self._commit_writes = 0
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
        if self._commit_fd >= 0:
            os.close(self._commit_fd)
            self._commit_fd = -1
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- recovery -----------------------------------------------------------------------

    def _recover(self) -> None:
        # Finish a compaction that crashed midway (and drop stray temporary files) before
        # looking at the segments: until then some records sit in renamed files.
        from gymux.stores.maintenance import finish_interrupted_compaction

        if finish_interrupted_compaction(self.path):
            _log.warning("finished an interrupted compaction", stream=str(self.path))
        firsts = list_segments(self.path)
        if not firsts:
            self._create_segment(0)
            return
        # Sealed segments: make sure each has an index (rebuild a missing or bad one).
        next_seq = firsts[0]
        for first in firsts[:-1]:
            idx_path = self.path / index_name(first)
            index = parse_index(idx_path.read_bytes()) if idx_path.exists() else None
            if index is None:
                scan = scan_segment(
                    self.path / segment_name(first),
                    first_seq=first,
                    max_len=self.max_record_bytes,
                    salvage=self.salvage,
                    interval=self.index_interval,
                )
                if scan.tail_bytes:
                    # A sealed segment was complete and synced before the next one was
                    # created: damage at its end is followed by valid data (the next
                    # segment), so it is corruption, not a torn tail.
                    reason = f"sealed segment ends with {scan.tail_reason}"
                    if not self.salvage:
                        raise CorruptionError(str(scan.path), scan.valid_end, reason)
                    self.salvaged_bytes += scan.tail_bytes
                    _log.warning("salvaged sealed segment", segment=scan.path, reason=reason)
                self.salvaged_bytes += scan.skipped_bytes
                index = scan.index(self.index_interval)
                self._write_file_atomic(idx_path, encode_index(index))
                _log.warning("rebuilt missing segment index", segment=str(idx_path))
            next_seq = index.next_seq
        last = firsts[-1]
        seg_path = self.path / segment_name(last)
        scan = scan_segment(
            seg_path,
            first_seq=last,
            max_len=self.max_record_bytes,
            salvage=self.salvage,
            interval=self.index_interval,
            min_seq=max(next_seq, last),
        )
        if scan.damaged:
            # Salvage: rewrite the segment with only its valid records.
            self._rewrite_valid(seg_path, scan.first_seq)
            self.salvaged_bytes += scan.skipped_bytes
            _log.warning(
                "salvaged segment",
                segment=str(seg_path),
                skipped_bytes=scan.skipped_bytes,
                ranges=len(scan.damaged),
            )
            scan = scan_segment(
                seg_path,
                first_seq=last,
                max_len=self.max_record_bytes,
                interval=self.index_interval,
            )
        fd = os.open(seg_path, os.O_RDWR)
        try:
            if not scan.header_ok:
                os.ftruncate(fd, 0)
                os.pwrite(fd, encode_segment_header(last, time.time_ns()), 0)
                self._fdatasync(fd)
                self.recovered_tail_bytes += scan.tail_bytes
                _log.warning(
                    "rewrote torn segment header",
                    segment=str(seg_path),
                    dropped_bytes=scan.tail_bytes,
                )
                scan.valid_end = SEGMENT_HEADER.size
            elif scan.tail_bytes:
                os.ftruncate(fd, scan.valid_end)
                self._fdatasync(fd)
                self.recovered_tail_bytes += scan.tail_bytes
                _log.warning(
                    "truncated torn tail",
                    segment=str(seg_path),
                    dropped_bytes=scan.tail_bytes,
                    reason=scan.tail_reason,
                )
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        os.lseek(fd, scan.valid_end, os.SEEK_SET)
        self._seg_first = last
        self._seg_size = scan.valid_end
        self._seg_records = scan.records
        self._seg_index = list(scan.index_entries)
        self._seg_last_indexed = self._seg_index[-1][1] if self._seg_index else -self.index_interval
        self._seg_created = time.monotonic()
        self._next_seq = max(scan.next_seq, next_seq, last)
        self._written_seq = self._durable_seq = self._next_seq - 1
        self._write_commit()

    def _rewrite_valid(self, seg_path: Path, first: int) -> None:
        from gymux.stores.reader import iter_segment_records

        tmp = seg_path.with_suffix(".salvage")
        with open(tmp, "wb") as out:
            out.write(encode_segment_header(first, time.time_ns()))
            for seq, rtype, payload in iter_segment_records(
                seg_path, first, self.max_record_bytes, salvage=True
            ):
                out.write(encode_frame(seq, rtype, payload))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, seg_path)
        fsync_dir(self.path)

    def _write_file_atomic(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            self._fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(self.path)

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
        data = encode_commit(next_seq, self._seg_first, self._seg_size)
        if self._commit_fd < 0:
            # A fresh file with one slot; later writes alternate between the two slots.
            self._commit_fd = os.open(self.path / COMMIT_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(self._commit_fd, 0)
            self._commit_writes = 0
        os.pwrite(self._commit_fd, data, (self._commit_writes % 2) * _COMMIT_SLOT)
        self._commit_writes += 1

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
            _log.error("store writer failed", stream=str(self.path), error=repr(exc))
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


class AsyncStreamWriter:
    """``await``-able front of a :class:`StreamWriter` (asyncio backend).

    ``await append(payload)`` returns once the record is queued (``os``/``batch``) or
    durable (``always``); it never blocks the event loop, also under backpressure.
    """

    def __init__(self, path: str | os.PathLike[str], **options: object) -> None:
        self.writer = StreamWriter(path, **options)  # type: ignore[arg-type]

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.writer.open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

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
