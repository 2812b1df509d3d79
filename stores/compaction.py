"""``compact``: rewrite a stream's sealed segments into fewer, larger ones.

``compact`` rewrites a stream's *sealed* segments (all but the newest, active one, which is
kept as is) into fewer segments of up to ``target_bytes``, copying every valid frame
byte for byte (sequence numbers, types and payloads unchanged) and writing a fresh index
for each new segment. It holds the stream's LOCK for the whole operation, so it refuses
to start while a writer has the stream open (and a writer cannot open it meanwhile).
Damage in a sealed segment makes it refuse, unless ``salvage=True``, which drops exactly
the damaged byte ranges (and torn tails of sealed segments) and reports them.

Crash safety: the switch-over goes through a ``COMPACTING`` manifest (see
:mod:`gymux.stores.manifest`); if the process dies part way, the next ``compact`` (or
``gymux store compact``, or the next writer) finishes it before doing anything else, and
``verify`` reports it until then. A merged segment keeps the name (first sequence number)
of the first segment of its group.

Run compaction while no reader is iterating the stream: a reader's saved
:class:`~gymux.stores.reader.Position` in a rewritten segment no longer points at a record
boundary (resume by sequence number instead), and a :class:`StreamReader` caches indexes,
so open a new one afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from gymux.stores.commit import read_commit
from gymux.stores.errors import DamagedStreamError
from gymux.stores.format import (
    DEFAULT_MAX_RECORD,
    FRAME,
    SEGMENT_HEADER,
    IndexData,
    encode_index,
    encode_segment_header,
    fsync_dir,
    index_name,
    list_segments,
    read_index,
    segment_name,
    write_file_durable,
)
from gymux.stores.info import stream_bytes
from gymux.stores.lock import StreamLock
from gymux.stores.manifest import (
    MANIFEST,
    Manifest,
    apply_manifest,
    finish_interrupted_compaction,
    tmp_path,
)
from gymux.stores.scan import (
    DEFAULT_INDEX_INTERVAL,
    DamagedRange,
    SegmentScan,
    scan_segment,
    scan_stream,
)
from gymux.stores.store import DEFAULT_STREAM, Store, as_store
from gymux.stores.verification import check_index

__all__ = ["DEFAULT_TARGET_BYTES", "CompactResult", "DroppedRange", "compact"]

#: Default size of a compacted segment (the writer's default roll size).
DEFAULT_TARGET_BYTES = 64 * 1024 * 1024


class DroppedRange(msgspec.Struct, kw_only=True):
    segment: str
    start: int
    end: int
    reason: str


class CompactResult(msgspec.Struct, kw_only=True):
    stream: str
    segments_before: int
    segments_after: int
    #: Valid records in the stream after compaction.
    records: int
    bytes_before: int
    bytes_after: int
    #: New (merged or salvaged) segments written.
    segments_written: int
    #: Indexes of untouched sealed segments that were missing or bad and were rewritten.
    indexes_rebuilt: int
    dropped_bytes: int
    dropped: list[DroppedRange]
    #: An interrupted earlier compaction was completed first.
    resumed: bool


class _Sealed:
    __slots__ = ("damage", "first", "kept", "rewrite", "scan")

    def __init__(self, first: int, scan: SegmentScan) -> None:
        self.first = first
        self.scan = scan
        self.damage = [_dropped(first, d) for d in scan.damaged]
        if scan.tail_bytes:
            self.damage.append(
                DroppedRange(
                    segment=segment_name(first),
                    start=scan.valid_end,
                    end=scan.size,
                    reason=f"{scan.tail_reason or 'no valid record'} (tail of a sealed segment)",
                )
            )
        base = SEGMENT_HEADER.size if scan.header_ok else 0
        skipped = sum(d.end - d.start for d in scan.damaged if d.start >= base)
        #: Bytes of valid frames.
        self.kept = scan.valid_end - base - skipped
        #: Rewrite even alone: damaged, or no valid header (an empty file).
        self.rewrite = bool(self.damage) or not scan.header_ok


def _dropped(first: int, d: DamagedRange) -> DroppedRange:
    return DroppedRange(segment=segment_name(first), start=d.start, end=d.end, reason=d.reason)


def _valid_frames(data: bytes, scan: SegmentScan) -> Iterator[tuple[int, int, int]]:
    """``(seq, start, end)`` of every valid frame of a scanned segment, in order."""
    offset = SEGMENT_HEADER.size if scan.header_ok else 0
    ranges = sorted(scan.damaged, key=lambda d: d.start)
    i = 0
    while offset < scan.valid_end:
        while i < len(ranges) and ranges[i].end <= offset:
            i += 1
        if i < len(ranges) and ranges[i].start <= offset:
            offset = ranges[i].end
            i += 1
            continue
        _crc, length, seq, _type = FRAME.unpack_from(data, offset)
        end = offset + FRAME.size + length
        yield seq, offset, end
        offset = end


def _write_group(
    sdir: Path,
    group: list[_Sealed],
    commit: tuple[int, int, int] | None,
    interval: int,
) -> tuple[int, tuple[int, int, int] | None]:
    """Write a group's valid frames into ``<target>.seg.compact`` and its index into
    ``<target>.idx.compact`` (both fsynced). Returns the record count and, if the COMMIT
    position lies in the group, where it moves to."""
    target = group[0].first
    entries: list[tuple[int, int]] = []
    count = 0
    offset = SEGMENT_HEADER.size
    last_indexed = -interval
    last_seq: int | None = None
    members = {s.first for s in group}
    moved: int | None = None
    with open(tmp_path(sdir / segment_name(target)), "wb") as out:
        out.write(encode_segment_header(target, time.time_ns()))
        for seg in group:
            data = (sdir / segment_name(seg.first)).read_bytes()
            view = memoryview(data)
            for seq, start, end in _valid_frames(data, seg.scan):
                if commit is not None and moved is None and (seg.first, start) >= commit[1:]:
                    moved = offset
                if offset - last_indexed >= interval:
                    entries.append((seq, offset))
                    last_indexed = offset
                out.write(view[start:end])
                offset += end - start
                count += 1
                last_seq = seq
            view.release()
        out.flush()
        os.fsync(out.fileno())
    next_seq = last_seq + 1 if last_seq is not None else target
    index = IndexData(target, count, offset, next_seq, interval, entries)
    fd = os.open(tmp_path(sdir / index_name(target)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, encode_index(index))
        os.fsync(fd)
    finally:
        os.close(fd)
    new_commit = None
    if commit is not None and commit[1] in members:
        new_commit = (commit[0], target, offset if moved is None else moved)
    return count, new_commit


def _index_ok(sdir: Path, seg: _Sealed, max_len: int) -> bool:
    index = read_index(sdir, seg.first)
    if index is None:
        return False
    data = (sdir / segment_name(seg.first)).read_bytes()
    return check_index(index, seg.scan, data, max_len) is None


def compact(
    path: str | os.PathLike[str] | Store,
    stream: str = DEFAULT_STREAM,
    *,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    salvage: bool = False,
    max_record_bytes: int = DEFAULT_MAX_RECORD,
    index_interval: int = DEFAULT_INDEX_INTERVAL,
) -> CompactResult:
    """Merge ``stream``'s sealed segments into segments of up to ``target_bytes``.

    Raises :class:`~gymux.stores.errors.StoreLockedError` if a writer has the stream open
    and :class:`~gymux.stores.errors.DamagedStreamError` if a sealed segment is damaged and
    ``salvage`` is false. See the module docstring for the guarantees."""
    if target_bytes <= SEGMENT_HEADER.size:
        raise ValueError(f"target_bytes must be more than {SEGMENT_HEADER.size}")
    store = as_store(path)
    name, sdir = stream, store.existing_stream(stream)
    lock = StreamLock(sdir, role="gymux store compact", action="compact")
    try:
        resumed = finish_interrupted_compaction(sdir)
        firsts = list_segments(sdir)
        bytes_before = stream_bytes(sdir)
        sealed = [
            _Sealed(first, scan)
            for first, _data, scan in scan_stream(sdir, firsts[:-1], max_len=max_record_bytes)
        ]
        dropped = [d for s in sealed for d in s.damage]
        if dropped and not salvage:
            total = sum(d.end - d.start for d in dropped)
            first_bad = dropped[0]
            raise DamagedStreamError(
                f"stream {name!r} has {len(dropped)} damaged range(s), {total} bytes, in sealed "
                f"segments (first: {first_bad.segment} bytes {first_bad.start}-{first_bad.end}, "
                f"{first_bad.reason}); see 'gymux store verify', or compact with --salvage "
                "to drop them"
            )
        # Greedy grouping of neighbours up to the target size.
        groups: list[list[_Sealed]] = []
        size = SEGMENT_HEADER.size
        for seg in sealed:
            if groups and size + seg.kept <= target_bytes:
                groups[-1].append(seg)
                size += seg.kept
            else:
                groups.append([seg])
                size = SEGMENT_HEADER.size + seg.kept
        rewrite = [g for g in groups if len(g) > 1 or g[0].rewrite]
        commit = read_commit(sdir)
        new_commit = None
        for group in rewrite:
            _count, moved = _write_group(sdir, group, commit, index_interval)
            new_commit = moved or new_commit
        if rewrite:
            fsync_dir(sdir)  # the new files' entries are durable before the manifest is
            manifest = Manifest(groups=[[s.first for s in g] for g in rewrite], commit=new_commit)
            write_file_durable(sdir / MANIFEST, msgspec.json.encode(manifest))
            fsync_dir(sdir)
            apply_manifest(sdir, manifest)
        rebuilt = 0
        rewritten = {g[0].first for g in rewrite}
        for group in groups:
            seg = group[0]
            if seg.first in rewritten:
                continue
            if not _index_ok(sdir, seg, max_record_bytes):
                index = seg.scan.index(index_interval)
                write_file_durable(sdir / index_name(seg.first), encode_index(index))
                rebuilt += 1
        if rebuilt:
            fsync_dir(sdir)
        after = list_segments(sdir)
        records = sum(s.scan.records for s in sealed)
        if firsts:
            active = sdir / segment_name(firsts[-1])
            records += scan_segment(
                active, first_seq=firsts[-1], max_len=max_record_bytes, collect_all=True
            ).records
        return CompactResult(
            stream=name,
            segments_before=len(firsts),
            segments_after=len(after),
            records=records,
            bytes_before=bytes_before,
            bytes_after=stream_bytes(sdir),
            segments_written=len(rewrite),
            indexes_rebuilt=rebuilt,
            dropped_bytes=sum(d.end - d.start for d in dropped),
            dropped=dropped,
            resumed=resumed,
        )
    finally:
        lock.release()
