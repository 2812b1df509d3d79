"""Reading a stream: from any position, up to the durable offset, or following a live writer.

::

    reader = StreamReader(path)
    for record in reader.records():                       # everything written so far
        ...
    for record in reader.records(start=pos, follow=True): # tail: each record exactly once
        ...

A reader never modifies the stream. At the tail of the newest segment, an incomplete or
damaged frame with nothing valid after it is where the data ends (the writer may still be
writing it, or recovery will truncate it); in ``follow`` mode the reader waits there.
Damage followed by valid data raises :class:`CorruptionError` unless ``salvage=True``,
which skips it and counts the skipped bytes in :attr:`StreamReader.skipped_bytes`.
"""

from __future__ import annotations

import bisect
import mmap
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import google_crc32c
import msgspec

from gymux.stores.commit import read_commit
from gymux.stores.errors import CorruptionError, StoreError
from gymux.stores.format import (
    DEFAULT_MAX_RECORD,
    FRAME,
    SEGMENT_HEADER,
    FrameStatus,
    IndexData,
    find_next_frame,
    list_segments,
    parse_frame,
    parse_segment_header,
    read_index,
    segment_name,
)
from gymux.stores.format import (
    M32 as _M32,
)
from gymux.stores.format import (
    MASK_DELTA as _MASK_DELTA,
)
from gymux.stores.scan import DEFAULT_INDEX_INTERVAL, scan_segment

__all__ = ["Position", "Record", "StreamReader", "iter_segment_records"]


class Position(msgspec.Struct, frozen=True, gc=False):
    """Where the next record starts: segment (its first seq), byte offset, and its seq."""

    segment: int
    offset: int
    seq: int


class Record(NamedTuple):
    seq: int
    type: int
    payload: bytes
    #: Segment (first seq) holding the record, and the byte offset just past it.
    segment: int
    end_offset: int

    @property
    def next(self) -> Position:
        """Position of the record *after* this one (resume from here to continue)."""
        return Position(self.segment, self.end_offset, self.seq + 1)


def iter_segment_records(
    path: Path, first: int, max_len: int, *, salvage: bool = False
) -> Iterator[tuple[int, int, bytes]]:
    """Every valid record of one segment file: ``(seq, type, payload)``."""
    data = path.read_bytes()
    reader = _SegmentCursor(data, str(path), max_len, salvage)
    offset = SEGMENT_HEADER.size if parse_segment_header(data) else 0
    if offset == 0:
        nxt = find_next_frame(data, -1, len(data), max_len)
        if nxt is None:
            return
        offset = nxt
    expected = first
    while True:
        item = reader.next(offset, final=True, min_seq=expected)
        if item is None:
            return
        seq, rtype, payload, offset = item
        expected = seq + 1
        yield seq, rtype, payload


class _SegmentCursor:
    """Parses frames out of one segment's bytes."""

    __slots__ = (
        "base",
        "data",
        "end",
        "max_len",
        "path",
        "salvage",
        "skipped",
        "stop_reason",
        "stop_status",
    )

    def __init__(
        self,
        data: bytes | mmap.mmap,
        path: str,
        max_len: int,
        salvage: bool,
        base: int = 0,
        end: int | None = None,
    ) -> None:
        #: File offset of ``data[0]`` (for error messages).
        self.base = base
        self.data = data
        #: Where the data to parse ends (``len(data)`` by default).
        self.end = len(data) if end is None else end
        self.path = path
        self.max_len = max_len
        self.salvage = salvage
        self.skipped = 0
        self.stop_status = FrameStatus.END
        #: Why the valid data stopped before the end (``None``: it ran to the end).
        self.stop_reason: str | None = None

    def next(
        self, offset: int, *, final: bool, min_seq: int | None = None
    ) -> tuple[int, int, bytes, int] | None:
        """The record at ``offset`` as ``(seq, type, payload, next_offset)``, or ``None`` at
        the end of valid data. ``final``: the segment is complete (sealed), so damage at the
        tail is still damage, not an in-progress write. A checksum-valid frame whose seq is
        below ``min_seq`` (a replayed block) is damage too, as it is for writer recovery."""
        data = self.data
        end = self.end
        while True:
            status, seq, rtype, payload = parse_frame(data, offset, end, self.max_len)
            if status is FrameStatus.OK:
                if min_seq is None or seq >= min_seq:
                    return seq, rtype, payload, offset + FRAME.size + len(payload)
                reason = f"sequence {seq} not after {min_seq - 1}"
            else:
                self.stop_status = status
                if status is FrameStatus.END:
                    return None
                reason = status.name.lower().replace("_", " ")
            self.stop_reason = reason
            nxt = find_next_frame(data, offset, end, self.max_len)
            if nxt is None:
                if final and self.salvage:
                    self.skipped += end - offset
                return None
            if not self.salvage:
                raise CorruptionError(self.path, self.base + offset, reason, self.base + nxt)
            self.skipped += nxt - offset
            offset = nxt


class StreamReader:
    """Reads one stream directory. Safe to use while a writer appends."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD,
        salvage: bool = False,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise StoreError(f"no stream at {self.path}")
        self.max_record_bytes = max_record_bytes
        self.salvage = salvage
        self.skipped_bytes = 0
        self._indexes: dict[int, IndexData] = {}
        self._known_segments: list[int] = []

    def segments(self) -> list[int]:
        return list_segments(self.path)

    def committed(self) -> tuple[int, int, int] | None:
        """The writer's durable position ``(next_seq, segment, offset)``, if published."""
        return read_commit(self.path)

    def index(self, first: int) -> IndexData:
        """The sparse index of a segment (rebuilt from the segment when missing or bad)."""
        cached = self._indexes.get(first)
        if cached is not None:
            return cached
        index = read_index(self.path, first)
        sealed = first != self.segments()[-1]
        if index is None:
            scan = scan_segment(
                self.path / segment_name(first),
                first_seq=first,
                max_len=self.max_record_bytes,
                salvage=self.salvage,
                collect_all=False,
                interval=DEFAULT_INDEX_INTERVAL,
            )
            index = scan.index(DEFAULT_INDEX_INTERVAL)
        if sealed:
            self._indexes[first] = index
        return index

    def seek(self, seq: int) -> Position:
        """The position of the first record with sequence number ``>= seq``."""
        firsts = self.segments()
        if not firsts:
            return Position(0, SEGMENT_HEADER.size, 0)
        i = max(0, bisect.bisect_right(firsts, seq) - 1)
        first = firsts[i]
        idx_seq, offset = self.index(first).floor(seq)
        prev = Position(first, offset, idx_seq)
        for record in self.records(prev):
            if record.seq >= seq:
                return Position(prev.segment, prev.offset, record.seq)
            prev = record.next
        return prev

    def start(self) -> Position:
        firsts = self.segments()
        first = firsts[0] if firsts else 0
        return Position(first, SEGMENT_HEADER.size, first)

    def end(self) -> Position:
        """The position after the last valid record now on disk."""
        pos = self.start()
        for record in self.records(pos):
            pos = record.next
        return pos

    def records(
        self,
        start: Position | int | None = None,
        *,
        committed_only: bool = False,
        follow: bool = False,
        poll_s: float = 0.02,
        idle_timeout_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[Record]:
        """Yield records from ``start`` (a :class:`Position`, a sequence number, or the
        beginning). ``committed_only`` stops at the writer's durable offset; ``follow``
        waits for new records (until ``idle_timeout_s`` passes without one, or ``stop`` is
        set), yielding each exactly once."""
        # A sequence number not written yet seeks to the current end: records before it
        # that arrive meanwhile (follow) must not be yielded.
        min_seq = None
        if start is None:
            pos = self.start()
        elif isinstance(start, int):
            pos = self.seek(start)
            min_seq = start
        else:
            pos = start
        last_progress = time.monotonic()
        segment, offset = pos.segment, pos.offset
        #: Lowest acceptable next seq: a valid frame below it is out of sequence (damage).
        expected = pos.seq
        while True:
            progressed = False
            limit = None
            if committed_only:
                commit = self.committed()
                limit = (commit[1], commit[2]) if commit is not None else (-1, 0)
            last = None
            for record in self._read_segment(segment, offset, limit, expected):
                last = record
                if min_seq is not None and record.seq < min_seq:
                    continue
                progressed = True
                yield record
            if last is not None:
                segment, offset, expected = last.segment, last.end_offset, last.seq + 1
            if progressed:
                # before moving to the next segment: the idle time counts from the last
                # record yielded, however long the consumer took with the previous ones
                last_progress = time.monotonic()
            # at the end of `segment`'s valid data: move on if a newer segment exists
            moved = self._advance(segment, offset, limit, expected)
            if moved is not None:
                if moved[0] != segment:
                    expected = max(expected, moved[0])  # a segment starts at its name's seq
                segment, offset = moved
                continue
            if not follow:
                return
            if stop is not None and stop.is_set():
                return
            if idle_timeout_s is not None and time.monotonic() - last_progress > idle_timeout_s:
                return
            time.sleep(poll_s)

    def _advance(
        self, segment: int, offset: int, limit: tuple[int, int] | None, min_seq: int | None = None
    ) -> tuple[int, int] | None:
        if limit is not None and (segment, offset) >= limit:
            return None
        firsts = self.segments()
        later = [f for f in firsts if f > segment]
        if not later:
            return None
        # A newer segment exists, so `segment` is sealed: re-read it to its real end.
        path = self.path / segment_name(segment)
        size = path.stat().st_size if path.exists() else 0
        if size > offset:
            data = path.read_bytes()
            cursor = _SegmentCursor(data, str(path), self.max_record_bytes, self.salvage)
            item = cursor.next(offset, final=True, min_seq=min_seq)
            self.skipped_bytes += cursor.skipped
            if item is not None:
                return segment, offset  # it grew: read on in the same segment
            if cursor.stop_reason is not None and not self.salvage:
                raise CorruptionError(
                    str(path), offset, f"sealed segment ends with {cursor.stop_reason}"
                )
        nxt = later[0]
        return nxt, SEGMENT_HEADER.size

    def _read_segment(
        self,
        segment: int,
        offset: int,
        limit: tuple[int, int] | None,
        min_seq: int | None = None,
    ) -> Iterator[Record]:
        if limit is not None and segment > limit[0]:
            return
        path = self.path / segment_name(segment)
        mapped: mmap.mmap | None = None
        data: bytes | mmap.mmap
        try:
            with open(path, "rb") as fh:
                if self._sealed(segment):
                    # A sealed segment is never truncated or rewritten in place (compaction
                    # renames new files over it), so it can be mapped: no copy of the file.
                    size = os.fstat(fh.fileno()).st_size
                    if size <= offset:
                        return
                    mapped = data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                    base, rel, end = 0, offset, size
                else:
                    # The active segment may be truncated by a recovering writer: read it.
                    fh.seek(offset)
                    data = fh.read()
                    base, rel, end = offset, 0, len(data)
        except FileNotFoundError:
            return
        if limit is not None and segment == limit[0]:
            end = min(end, max(rel, limit[1] - base))
        try:
            yield from self._parse(data, base, rel, end, segment, str(path), min_seq)
        finally:
            if mapped is not None:
                mapped.close()

    def _sealed(self, segment: int) -> bool:
        firsts = self._known_segments
        if not firsts or firsts[-1] <= segment:
            firsts = self._known_segments = self.segments()
        return bool(firsts) and firsts[-1] > segment

    def _parse(
        self,
        data: bytes | mmap.mmap,
        base: int,
        rel: int,
        end: int,
        segment: int,
        path: str,
        min_seq: int | None,
    ) -> Iterator[Record]:
        """Records of ``data[rel:end]``; ``base`` is the file offset of ``data[0]``."""
        cursor = _SegmentCursor(data, path, self.max_record_bytes, self.salvage, base, end)
        # Fast path: plainly valid frames are parsed inline; the first frame that is not
        # (end of data, a torn or damaged frame, a seq going backwards) goes through the
        # cursor, which applies every rule.
        unpack = FRAME.unpack_from
        header_size = FRAME.size
        max_len = self.max_record_bytes
        crc_value = google_crc32c.value
        crc_extend = google_crc32c.extend
        new_record = tuple.__new__
        floor = -1 if min_seq is None else min_seq
        while True:
            if end - rel >= header_size:
                crc, length, seq, rtype = unpack(data, rel)
                start = rel + header_size
                stop = start + length
                if length <= max_len and stop <= end and seq >= floor and rtype:
                    payload = data[start:stop]
                    c = crc_extend(crc_value(data[rel + 4 : start]), payload)
                    if ((((c >> 15) | (c << 17)) & _M32) + _MASK_DELTA) & _M32 == crc:
                        rel = stop
                        floor = seq + 1
                        yield new_record(Record, (seq, rtype, payload, segment, base + stop))
                        continue
            item = cursor.next(rel, final=False, min_seq=None if floor < 0 else floor)
            if item is None:
                break
            seq, rtype, payload, rel = item
            floor = seq + 1
            yield Record(seq, rtype, payload, segment, base + rel)
        self.skipped_bytes += cursor.skipped
