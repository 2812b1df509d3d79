"""Looking after a store: :func:`store_info`, :func:`verify` and :func:`compact`.

``verify`` reads every segment of every stream and reports *every* problem it finds, each
with its segment file and byte range: damaged records (checksum, length, type, sequence),
torn or garbage tails, bad segment headers, missing or inconsistent indexes, a COMMIT
position past the valid data, and an interrupted compaction. It never modifies anything.

``compact`` rewrites a stream's *sealed* segments (all but the newest, active one, which is
kept as is) into fewer segments of up to ``target_bytes``, copying every valid frame
byte for byte (sequence numbers, types and payloads unchanged) and writing a fresh index
for each new segment. It holds the stream's LOCK for the whole operation, so it refuses
to start while a writer has the stream open (and a writer cannot open it meanwhile).
Damage in a sealed segment makes it refuse, unless ``salvage=True``, which drops exactly
the damaged byte ranges (and torn tails of sealed segments) and reports them.

Crash safety: new segments and indexes are written to ``*.compact`` files and fsynced, then
a ``COMPACTING`` manifest naming the groups is written and fsynced; only then are the old
segments hidden (renamed to ``*.seg.compacted``), the new ones renamed into place, the
directory fsynced, and the old files deleted. Every step after the manifest is idempotent:
if the process dies part way, the next ``compact`` (or ``gymux store compact``) finishes it
before doing anything else, and ``verify`` reports it until then. A merged segment keeps
the name (first sequence number) of the first segment of its group.

Run compaction while no reader is iterating the stream: a reader's saved
:class:`~gymux.stores.reader.Position` in a rewritten segment no longer points at a record
boundary (resume by sequence number instead), and a :class:`StreamReader` caches indexes,
so open a new one afterwards.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from gymux.stores.errors import StoreError
from gymux.stores.format import (
    DEFAULT_MAX_RECORD,
    FORMAT_VERSION,
    FRAME,
    SEGMENT_HEADER,
    FrameStatus,
    IndexData,
    encode_index,
    encode_segment_header,
    fsync_dir,
    index_name,
    list_segments,
    parse_frame,
    parse_index,
    segment_name,
)
from gymux.stores.scan import (
    DEFAULT_INDEX_INTERVAL,
    DamagedRange,
    SegmentScan,
    scan_buffer,
    scan_segment,
)
from gymux.stores.store import DEFAULT_STREAM, Store
from gymux.stores.writer import COMMIT_FILE, LOCK_FILE, StreamLock, encode_commit, read_commit

__all__ = [
    "DEFAULT_TARGET_BYTES",
    "CompactResult",
    "DamagedStreamError",
    "DroppedRange",
    "Problem",
    "SegmentInfo",
    "StoreInfo",
    "StreamInfo",
    "StreamReport",
    "VerifyReport",
    "compact",
    "lock_holder",
    "store_info",
    "verify",
]

#: Default size of a compacted segment (the writer's default roll size).
DEFAULT_TARGET_BYTES = 64 * 1024 * 1024
MANIFEST = "COMPACTING"
_TMP_SUFFIX = ".compact"
_HIDDEN_SUFFIX = ".compacted"


class DamagedStreamError(StoreError):
    """Sealed segments hold damaged ranges and salvage was not asked for."""


# -- lock -------------------------------------------------------------------------------


def lock_holder(stream_dir: str | os.PathLike[str]) -> str | None:
    """Who holds the stream's writer lock (the LOCK file's text), or ``None`` if nobody.

    Probes with a non-blocking shared ``flock`` that is released at once."""
    path = Path(stream_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 512, 0).decode(errors="replace").strip()
            return text or "holder unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# -- helpers ----------------------------------------------------------------------------


def _open(path: str | os.PathLike[str] | Store) -> Store:
    return path if isinstance(path, Store) else Store(path, create=False)


def _stream_dirs(store: Store, stream: str | None) -> list[tuple[str, Path]]:
    if stream is None:
        return [(name, store.path / name) for name in store.streams()]
    sdir = store.stream_path(stream)
    if not sdir.is_dir():
        known = ", ".join(store.streams()) or "none"
        raise StoreError(f"no stream {stream!r} in {store.path} (streams: {known})")
    return [(stream, sdir)]


def _scan(sdir: Path, first: int, max_len: int, min_seq: int | None = None) -> SegmentScan:
    return scan_segment(
        sdir / segment_name(first),
        first_seq=first,
        max_len=max_len,
        collect_all=True,
        min_seq=min_seq,
    )


def _read_index(sdir: Path, first: int) -> IndexData | None:
    try:
        return parse_index((sdir / index_name(first)).read_bytes())
    except FileNotFoundError:
        return None


def _dir_bytes(sdir: Path) -> int:
    return sum(e.stat().st_size for e in os.scandir(sdir) if e.is_file() and e.name != LOCK_FILE)


def _write_durable(path: Path, data: bytes) -> None:
    """Write ``path`` through a fsynced temporary file and a rename (caller fsyncs the dir)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- info -------------------------------------------------------------------------------


class SegmentInfo(msgspec.Struct, kw_only=True):
    name: str
    first_seq: int
    bytes: int
    records: int
    last_seq: int | None
    sealed: bool
    #: The segment has a valid index file.
    indexed: bool


class CommitInfo(msgspec.Struct, kw_only=True):
    next_seq: int
    segment: int
    offset: int


class StreamInfo(msgspec.Struct, kw_only=True):
    name: str
    path: str
    segments: int
    records: int
    #: Bytes of the stream's files (segments, indexes, COMMIT).
    bytes: int
    first_seq: int | None
    last_seq: int | None
    committed: CommitInfo | None
    #: The LOCK holder's description while a writer has the stream open.
    writer: str | None
    #: Bytes after the last complete record of the active segment (torn, or being written).
    tail_bytes: int
    segment_list: list[SegmentInfo]


class StoreInfo(msgspec.Struct, kw_only=True):
    path: str
    format_version: int
    streams: list[StreamInfo]

    @property
    def records(self) -> int:
        return sum(s.records for s in self.streams)


def _first_record_seq(sdir: Path, first: int, max_len: int) -> int | None:
    data = (sdir / segment_name(first)).read_bytes()
    status, seq, _t, _p = parse_frame(data, SEGMENT_HEADER.size, len(data), max_len)
    return seq if status is FrameStatus.OK else None


def _stream_info(name: str, sdir: Path, max_len: int) -> StreamInfo:
    firsts = list_segments(sdir)
    segments: list[SegmentInfo] = []
    first_seq: int | None = None
    last_seq: int | None = None
    tail = 0
    for i, first in enumerate(firsts):
        sealed = i < len(firsts) - 1
        size = (sdir / segment_name(first)).stat().st_size
        index = _read_index(sdir, first)
        indexed = index is not None and index.first_seq == first
        if sealed and index is not None and indexed and index.end_offset == size:
            records = index.count
            seg_first = index.entries[0][0] if records and index.entries else None
            if records and seg_first is None:
                seg_first = _first_record_seq(sdir, first, max_len)
            seg_last = index.next_seq - 1 if records else None
        else:
            scan = _scan(sdir, first, max_len)
            records = scan.records
            seg_last = scan.last_seq
            seg_first = scan.index_entries[0][0] if scan.index_entries else None
            if not sealed:
                tail = scan.tail_bytes
        if first_seq is None and seg_first is not None:
            first_seq = seg_first
        if seg_last is not None:
            last_seq = seg_last
        segments.append(
            SegmentInfo(
                name=segment_name(first),
                first_seq=first,
                bytes=size,
                records=records,
                last_seq=seg_last,
                sealed=sealed,
                indexed=indexed,
            )
        )
    commit = read_commit(sdir)
    return StreamInfo(
        name=name,
        path=str(sdir),
        segments=len(firsts),
        records=sum(s.records for s in segments),
        bytes=_dir_bytes(sdir),
        first_seq=first_seq,
        last_seq=last_seq,
        committed=CommitInfo(next_seq=commit[0], segment=commit[1], offset=commit[2])
        if commit
        else None,
        writer=lock_holder(sdir),
        tail_bytes=tail,
        segment_list=segments,
    )


def store_info(
    path: str | os.PathLike[str] | Store,
    stream: str | None = None,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD,
) -> StoreInfo:
    """Streams, segments, records, bytes, first/last sequence numbers, the committed
    position and the writer (LOCK holder), for every stream or just ``stream``.

    Sealed segments with a valid index are counted from it; the rest are scanned."""
    store = _open(path)
    streams = [_stream_info(n, d, max_record_bytes) for n, d in _stream_dirs(store, stream)]
    return StoreInfo(path=str(store.path), format_version=FORMAT_VERSION, streams=streams)


# -- verify -----------------------------------------------------------------------------


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


def _check_index(index: IndexData, scan: SegmentScan, data: bytes, max_len: int) -> str | None:
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
        if entry.endswith((_TMP_SUFFIX, _HIDDEN_SUFFIX, ".tmp", ".salvage")):
            notes.append(f"stray temporary file {entry}")
    firsts = list_segments(sdir)
    records = 0
    prev_next: int | None = None
    ends: dict[int, int] = {}
    for i, first in enumerate(firsts):
        sealed = i < len(firsts) - 1
        seg = segment_name(first)
        path = sdir / seg
        data = path.read_bytes()
        min_seq = max(first, prev_next) if prev_next is not None else None
        scan = scan_buffer(
            data,
            path=str(path),
            first_seq=first,
            max_len=max_len,
            collect_all=True,
            min_seq=min_seq,
        )
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
                    mismatch = _check_index(index, scan, data, max_len)
                    if mismatch:
                        problem(index_name(first), "bad-index", None, None, mismatch)
            if not scan.header_ok and scan.size == 0:
                problem(seg, "torn-tail", 0, 0, "empty sealed segment file (no header)")
        if scan.records:
            prev_next = scan.next_seq
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
    store = _open(path)
    reports = [_verify_stream(n, d, max_record_bytes) for n, d in _stream_dirs(store, stream)]
    clean = not any(r.problems for r in reports)
    return VerifyReport(path=str(store.path), clean=clean, streams=reports)


# -- compact ----------------------------------------------------------------------------


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


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + _TMP_SUFFIX)


def _hidden(path: Path) -> Path:
    return path.with_name(path.name + _HIDDEN_SUFFIX)


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
    with open(_tmp(sdir / segment_name(target)), "wb") as out:
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
    fd = os.open(_tmp(sdir / index_name(target)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, encode_index(index))
        os.fsync(fd)
    finally:
        os.close(fd)
    new_commit = None
    if commit is not None and commit[1] in members:
        new_commit = (commit[0], target, offset if moved is None else moved)
    return count, new_commit


class _Manifest(msgspec.Struct):
    """``COMPACTING``: the groups being merged (first segment = target) and the new COMMIT."""

    groups: list[list[int]]
    commit: tuple[int, int, int] | None = None
    version: int = 1


def _apply_manifest(sdir: Path, manifest: _Manifest) -> None:
    """Carry out (or finish) a compaction described by its manifest. Idempotent."""
    groups = manifest.groups
    for group in groups:
        target = group[0]
        seg, idx = sdir / segment_name(target), sdir / index_name(target)
        if _tmp(seg).exists():
            for src in group[1:]:
                if (sdir / segment_name(src)).exists():
                    os.replace(sdir / segment_name(src), _hidden(sdir / segment_name(src)))
            idx.unlink(missing_ok=True)  # a missing index is rebuilt; a stale one misleads
            os.replace(_tmp(seg), seg)
        if _tmp(idx).exists():
            os.replace(_tmp(idx), idx)
    fsync_dir(sdir)
    for group in groups:
        for src in group[1:]:
            path = sdir / segment_name(src)
            path.unlink(missing_ok=True)
            _hidden(path).unlink(missing_ok=True)
            (sdir / index_name(src)).unlink(missing_ok=True)
    if manifest.commit is not None:
        next_seq, segment, offset = manifest.commit
        _write_durable(sdir / COMMIT_FILE, encode_commit(next_seq, segment, offset))
    fsync_dir(sdir)
    (sdir / MANIFEST).unlink()
    fsync_dir(sdir)


def finish_interrupted_compaction(sdir: Path) -> bool:
    """Finish an interrupted compaction; remove temporary files of one that never
    reached its manifest. True if there was one to finish."""
    resumed = False
    manifest_path = sdir / MANIFEST
    if manifest_path.exists():
        try:
            manifest = msgspec.json.decode(manifest_path.read_bytes(), type=_Manifest)
        except msgspec.DecodeError:
            # The manifest is written and fsynced before any rename: a torn one means
            # nothing was renamed yet, so the temporary files are simply discarded.
            manifest_path.unlink()
        else:
            _apply_manifest(sdir, manifest)
            resumed = True
    stray = False
    for entry in os.listdir(sdir):
        if entry.endswith((_TMP_SUFFIX, ".idx.tmp", "COMMIT.tmp", MANIFEST + ".tmp")):
            (sdir / entry).unlink(missing_ok=True)
            stray = True
    if stray:
        fsync_dir(sdir)
    return resumed


def _index_ok(sdir: Path, seg: _Sealed, max_len: int) -> bool:
    index = _read_index(sdir, seg.first)
    if index is None:
        return False
    data = (sdir / segment_name(seg.first)).read_bytes()
    return _check_index(index, seg.scan, data, max_len) is None


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
    and :class:`DamagedStreamError` if a sealed segment is damaged and ``salvage`` is
    false. See the module docstring for the guarantees."""
    if target_bytes <= SEGMENT_HEADER.size:
        raise ValueError(f"target_bytes must be more than {SEGMENT_HEADER.size}")
    store = _open(path)
    [(name, sdir)] = _stream_dirs(store, stream)
    lock = StreamLock(sdir, role="gymux store compact", action="compact")
    try:
        resumed = finish_interrupted_compaction(sdir)
        firsts = list_segments(sdir)
        bytes_before = _dir_bytes(sdir)
        sealed: list[_Sealed] = []
        prev_next: int | None = None
        for first in firsts[:-1]:
            min_seq = max(first, prev_next) if prev_next is not None else None
            seg = _Sealed(first, _scan(sdir, first, max_record_bytes, min_seq))
            if seg.scan.records:
                prev_next = seg.scan.next_seq
            sealed.append(seg)
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
            manifest = _Manifest(groups=[[s.first for s in g] for g in rewrite], commit=new_commit)
            _write_durable(sdir / MANIFEST, msgspec.json.encode(manifest))
            fsync_dir(sdir)
            _apply_manifest(sdir, manifest)
        rebuilt = 0
        rewritten = {g[0].first for g in rewrite}
        for group in groups:
            seg = group[0]
            if seg.first in rewritten:
                continue
            if not _index_ok(sdir, seg, max_record_bytes):
                index = seg.scan.index(index_interval)
                _write_durable(sdir / index_name(seg.first), encode_index(index))
                rebuilt += 1
        if rebuilt:
            fsync_dir(sdir)
        after = list_segments(sdir)
        records = sum(s.scan.records for s in sealed)
        if firsts:
            records += _scan(sdir, firsts[-1], max_record_bytes).records
        return CompactResult(
            stream=name,
            segments_before=len(firsts),
            segments_after=len(after),
            records=records,
            bytes_before=bytes_before,
            bytes_after=_dir_bytes(sdir),
            segments_written=len(rewrite),
            indexes_rebuilt=rebuilt,
            dropped_bytes=sum(d.end - d.start for d in dropped),
            dropped=dropped,
            resumed=resumed,
        )
    finally:
        lock.release()
