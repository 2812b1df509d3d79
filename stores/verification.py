"""``verify``: every problem of a store's streams, each with its segment file and byte range.

It reads every segment of every stream and reports damaged records (checksum, length,
type, sequence), torn or garbage tails, bad segment headers, missing or inconsistent
indexes, a COMMIT position past the valid data, and an interrupted compaction. It never
modifies anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from gymux.stores.commit import COMMIT_FILE, read_commit
from gymux.stores.format import (
    DEFAULT_MAX_RECORD,
    FrameStatus,
    IndexData,
    index_name,
    list_segments,
    parse_frame,
    parse_index,
    segment_name,
)
from gymux.stores.lock import lock_holder
from gymux.stores.manifest import HIDDEN_SUFFIX, MANIFEST, TMP_SUFFIX
from gymux.stores.scan import SegmentScan, scan_stream
from gymux.stores.store import Store, as_store

__all__ = ["Problem", "StreamReport", "VerifyReport", "check_index", "verify"]


class Problem(msgspec.Struct, kw_only=True):
    """One finding of :func:`verify`: ``[start, end)`` of ``segment`` (a file name)."""

    stream: str
    segment: str
    #: ``damaged`` (bad data followed by valid records), ``torn-tail``, ``missing-index``,
    #: ``bad-index``, ``bad-commit``, ``commit-past-end``, ``interrupted-compaction``.
    kind: str
    start: int | None
    end: int | None
    reason: str

    @property
    def bytes(self) -> int:
        return (self.end - self.start) if self.start is not None and self.end is not None else 0

    @property
    def where(self) -> str:
        """``stream/segment bytes S-E (N bytes)``."""
        where = f"{self.stream}/{self.segment}"
        if self.start is not None and self.end is not None:
            where += f" bytes {self.start}-{self.end} ({self.end - self.start} bytes)"
        return where

    def describe(self) -> str:
        return f"{self.kind}: {self.where}: {self.reason}"


class StreamReport(msgspec.Struct, kw_only=True):
    name: str
    segments: int
    records: int
    writer: str | None
    problems: list[Problem]
    #: Things worth knowing that are not damage (an in-progress tail, stray temp files).
    notes: list[str]


class VerifyReport(msgspec.Struct, kw_only=True):
    path: str
    clean: bool
    streams: list[StreamReport]

    @property
    def problems(self) -> list[Problem]:
        return [p for s in self.streams for p in s.problems]


def check_index(index: IndexData, scan: SegmentScan, data: bytes, max_len: int) -> str | None:
    """What is wrong with ``index`` as the index of the scanned segment ``data`` (``None``:
    nothing)."""
    if index.first_seq != scan.first_seq:
        return f"index first_seq {index.first_seq} != segment's {scan.first_seq}"
    if index.count != scan.records:
        return f"index counts {index.count} records, the segment holds {scan.records}"
    if index.end_offset != scan.valid_end:
        return f"index ends at byte {index.end_offset}, the data at {scan.valid_end}"
    if scan.last_seq is not None and index.next_seq <= scan.last_seq:
        return f"index next_seq {index.next_seq} is not after the last record {scan.last_seq}"
    prev = -1
    for seq, offset in index.entries:
        if offset <= prev:
            return f"index entries out of order at offset {offset}"
        prev = offset
        status, got, _t, _p = parse_frame(data, offset, len(data), max_len)
        if status is not FrameStatus.OK or got != seq:
            return f"index entry (seq {seq}, offset {offset}) does not point at that record"
    return None


def _verify_stream(name: str, sdir: Path, max_len: int) -> StreamReport:
    problems: list[Problem] = []
    notes: list[str] = []
    holder = lock_holder(sdir)

    def problem(segment: str, kind: str, start: int | None, end: int | None, why: str) -> None:
        problems.append(
            Problem(stream=name, segment=segment, kind=kind, start=start, end=end, reason=why)
        )

    if (sdir / MANIFEST).exists():
        problem(
            MANIFEST,
            "interrupted-compaction",
            None,
            None,
            "a compaction did not finish; run 'gymux store compact' to complete it",
        )
    for entry in sorted(os.listdir(sdir)):
        if entry.endswith((TMP_SUFFIX, HIDDEN_SUFFIX, ".tmp", ".salvage")):
            notes.append(f"stray temporary file {entry}")
    firsts = list_segments(sdir)
    records = 0
    ends: dict[int, int] = {}
    for i, (first, data, scan) in enumerate(scan_stream(sdir, firsts, max_len=max_len)):
        sealed = i < len(firsts) - 1
        seg = segment_name(first)
        records += scan.records
        ends[first] = scan.valid_end
        for d in scan.damaged:
            problem(seg, "damaged", d.start, d.end, d.reason)
        if scan.tail_bytes:
            start, end = scan.valid_end, scan.size
            why = scan.tail_reason or "no valid record"
            if sealed:
                problem(seg, "torn-tail", start, end, f"{why} at the end of a sealed segment")
            elif holder is not None:
                notes.append(
                    f"{seg}: {scan.tail_bytes} bytes after the last complete record "
                    f"(a writer is active: a record being written)"
                )
            else:
                problem(seg, "torn-tail", start, end, f"{why} (a writer's recovery truncates it)")
        if sealed:
            idx = sdir / index_name(first)
            if not idx.exists():
                problem(
                    index_name(first), "missing-index", None, None, "sealed segment has no index"
                )
            else:
                index = parse_index(idx.read_bytes())
                if index is None:
                    problem(index_name(first), "bad-index", None, None, "checksum or layout is bad")
                elif not scan.damaged and not scan.tail_bytes:
                    mismatch = check_index(index, scan, data, max_len)
                    if mismatch:
                        problem(index_name(first), "bad-index", None, None, mismatch)
            if not scan.header_ok and scan.size == 0:
                problem(seg, "torn-tail", 0, 0, "empty sealed segment file (no header)")
    if holder is None and (sdir / COMMIT_FILE).exists():
        commit = read_commit(sdir)
        if commit is None:
            problem(COMMIT_FILE, "bad-commit", None, None, "unreadable; committed_only reads stop")
        else:
            _next, seg_first, offset = commit
            if seg_first not in ends:
                problem(
                    COMMIT_FILE,
                    "commit-past-end",
                    None,
                    None,
                    f"committed position names segment {segment_name(seg_first)}, "
                    "which does not exist",
                )
            elif offset > ends[seg_first]:
                problem(
                    segment_name(seg_first),
                    "commit-past-end",
                    ends[seg_first],
                    offset,
                    f"committed position is byte {offset}, but valid data ends at byte "
                    f"{ends[seg_first]}: durable records are missing",
                )
    return StreamReport(
        name=name,
        segments=len(firsts),
        records=records,
        writer=holder,
        problems=problems,
        notes=notes,
    )


def verify(
    path: str | os.PathLike[str] | Store,
    stream: str | None = None,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD,
) -> VerifyReport:
    """Check every segment, index and COMMIT file of ``stream`` (every stream if ``None``).

    Reads only. ``clean`` is true when nothing was found; each :class:`Problem` names its
    segment and byte range. A tail still being written by a live writer is a note."""
    store = as_store(path)
    reports = [_verify_stream(n, d, max_record_bytes) for n, d in store.stream_dirs(stream)]
    clean = not any(r.problems for r in reports)
    return VerifyReport(path=str(store.path), clean=clean, streams=reports)
