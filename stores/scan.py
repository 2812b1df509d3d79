"""Scanning a segment file: validating every frame, finding torn tails and damaged ranges.

Used by writer recovery, ``gymux store verify`` and index rebuilding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Required, TypedDict, Unpack

import msgspec

from gymux.stores.errors import CorruptionError
from gymux.stores.format import (
    FRAME,
    SEGMENT_HEADER,
    FrameStatus,
    IndexData,
    find_next_frame,
    parse_frame,
    parse_segment_header,
    segment_name,
)

__all__ = ["DamagedRange", "SegmentScan", "scan_buffer", "scan_segment", "scan_stream"]

DEFAULT_INDEX_INTERVAL = 64 * 1024


class DamagedRange(msgspec.Struct, frozen=True):
    """Bytes ``[start, end)`` of a segment that hold no valid record."""

    start: int
    end: int
    reason: str


class SegmentScan(msgspec.Struct, kw_only=True):
    path: str
    first_seq: int
    header_ok: bool
    size: int
    records: int = 0
    #: Sequence number after the last valid record.
    next_seq: int = 0
    last_seq: int | None = None
    #: Offset just past the last valid record.
    valid_end: int = SEGMENT_HEADER.size
    #: Bytes after ``valid_end`` holding no valid record (a torn or garbage tail).
    tail_bytes: int = 0
    tail_reason: str | None = None
    #: Damage followed by valid data (only collected in salvage mode; otherwise raised).
    damaged: list[DamagedRange] = msgspec.field(default_factory=list)
    skipped_bytes: int = 0
    index_entries: list[tuple[int, int]] = msgspec.field(default_factory=list)

    def index(self, interval: int) -> IndexData:
        return IndexData(
            self.first_seq,
            self.records,
            self.valid_end,
            self.next_seq,
            interval,
            self.index_entries,
        )


def _reason(status: FrameStatus, seq_problem: str | None = None) -> str:
    if seq_problem:
        return seq_problem
    return {
        FrameStatus.TRUNCATED: "truncated record",
        FrameStatus.BAD_LENGTH: "length out of bounds",
        FrameStatus.BAD_CRC: "checksum mismatch",
        FrameStatus.BAD_TYPE: "invalid record type",
    }.get(status, status.name.lower())


def scan_buffer(
    data: bytes,
    *,
    path: str,
    first_seq: int,
    max_len: int,
    salvage: bool = False,
    collect_all: bool = False,
    interval: int = DEFAULT_INDEX_INTERVAL,
    min_seq: int | None = None,
) -> SegmentScan:
    """Validate every frame of a segment's bytes.

    Damage followed by a valid frame raises :class:`CorruptionError` unless ``salvage``
    or ``collect_all`` (verify) is set, in which case it is recorded and skipped. Damage
    with nothing valid after it is a tail: reported in ``tail_bytes``, never raised.
    """
    size = len(data)
    header = parse_segment_header(data)
    scan = SegmentScan(
        path=path, first_seq=first_seq, header_ok=header is not None, size=size, next_seq=first_seq
    )
    if header is None:
        # A missing/partial header: everything is "tail" (the writer rewrites it) unless
        # valid records follow, which is corruption.
        nxt = find_next_frame(data, -1, size, max_len) if size > SEGMENT_HEADER.size else None
        if nxt is None:
            scan.valid_end = 0
            scan.tail_bytes = size
            scan.tail_reason = "bad segment header" if size else "empty segment file"
            return scan
        if not (salvage or collect_all):
            raise CorruptionError(path, 0, "bad segment header", nxt)
        scan.damaged.append(DamagedRange(0, nxt, "bad segment header"))
        scan.skipped_bytes += nxt
        offset = nxt
    else:
        if header[1] != first_seq:
            problem = f"header says first_seq {header[1]}, file name says {first_seq}"
            if not (salvage or collect_all):
                raise CorruptionError(path, 0, problem)
            scan.damaged.append(DamagedRange(0, SEGMENT_HEADER.size, problem))
        offset = SEGMENT_HEADER.size
    expected_min = first_seq if min_seq is None else min_seq
    last_index_at = -interval
    while True:
        status, seq, _rtype, payload = parse_frame(data, offset, size, max_len)
        seq_problem = None
        if status is FrameStatus.OK and seq < expected_min:
            seq_problem = f"sequence {seq} not after {expected_min - 1}"
        if status is FrameStatus.OK and seq_problem is None:
            if offset - last_index_at >= interval:
                scan.index_entries.append((seq, offset))
                last_index_at = offset
            scan.records += 1
            scan.last_seq = seq
            expected_min = seq + 1
            scan.next_seq = seq + 1
            offset += FRAME.size + len(payload)
            scan.valid_end = offset
            continue
        if status is FrameStatus.END:
            break
        nxt = find_next_frame(data, offset, size, max_len)
        reason = _reason(status, seq_problem)
        if nxt is None:
            scan.tail_bytes = size - offset
            scan.tail_reason = reason
            break
        if not (salvage or collect_all):
            raise CorruptionError(path, offset, reason, nxt)
        scan.damaged.append(DamagedRange(offset, nxt, reason))
        scan.skipped_bytes += nxt - offset
        offset = nxt
    return scan


class ScanOptions(TypedDict, total=False):
    """The keyword arguments of :func:`scan_buffer` after ``path`` (see there)."""

    first_seq: Required[int]
    max_len: Required[int]
    salvage: bool
    collect_all: bool
    interval: int
    min_seq: int | None


def scan_segment(path: Path, **options: Unpack[ScanOptions]) -> SegmentScan:
    """:func:`scan_buffer` of the segment file at ``path``."""
    return scan_buffer(path.read_bytes(), path=str(path), **options)


def scan_stream(
    stream_dir: Path, firsts: Iterable[int], *, max_len: int
) -> Iterator[tuple[int, bytes, SegmentScan]]:
    """``(first_seq, data, scan)`` of each segment in ``firsts``, in order, collecting every
    damaged range; a segment's records must come after the previous segment's (a valid
    frame with a lower sequence number is damage)."""
    prev_next: int | None = None
    for first in firsts:
        path = stream_dir / segment_name(first)
        data = path.read_bytes()
        scan = scan_buffer(
            data,
            path=str(path),
            first_seq=first,
            max_len=max_len,
            collect_all=True,
            min_seq=max(first, prev_next) if prev_next is not None else None,
        )
        if scan.records:
            prev_next = scan.next_seq
        yield first, data, scan
