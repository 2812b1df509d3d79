"""Recovery of a stream when a writer opens it (see docs/store-format.md, "Recovery").

1. An interrupted compaction is finished first (until then some records sit in renamed
   files).
2. Sealed segments are trusted; a missing or bad index is rebuilt from its segment. Damage
   at the end of a sealed segment is corruption (valid data, the next segment, follows it).
3. The last segment is scanned frame by frame: a torn tail is truncated, a torn header
   rewritten; damage followed by valid data raises :class:`CorruptionError`, or with
   ``salvage`` the segment is rewritten with its valid records only.

:func:`recover_stream` returns the active segment, open for appending, with what the writer
needs to carry on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gymux.stores.errors import CorruptionError
from gymux.stores.format import (
    SEGMENT_HEADER,
    encode_frame,
    encode_index,
    encode_segment_header,
    fsync_dir,
    index_name,
    list_segments,
    read_index,
    segment_name,
    write_file_durable,
)
from gymux.stores.manifest import finish_interrupted_compaction
from gymux.stores.reader import iter_segment_records
from gymux.stores.scan import scan_segment

__all__ = ["Recovered", "recover_stream", "write_file_synced"]

_log = structlog.get_logger("gymux.stores")


@dataclass
class Recovered:
    """The outcome of :func:`recover_stream`."""

    #: The active (last) segment, open read-write (its file offset not set); -1 if the
    #: stream has no segment yet.
    fd: int = -1
    #: Its first sequence number, and the offset after its last valid record.
    first: int = 0
    end: int = SEGMENT_HEADER.size
    #: Its records and sparse index entries ``(seq, offset)``.
    records: int = 0
    index_entries: list[tuple[int, int]] = field(default_factory=list)
    #: The sequence number of the next record.
    next_seq: int = 0
    #: Bytes of damaged records dropped (``salvage``), and of torn tails truncated.
    salvaged_bytes: int = 0
    recovered_tail_bytes: int = 0


def write_file_synced(
    stream_dir: Path, path: Path, data: bytes, fdatasync: Callable[[int], None]
) -> None:
    """Write ``path`` through a synced temporary file, then fsync the stream directory."""
    write_file_durable(path, data, fdatasync)
    fsync_dir(stream_dir)


def _rewrite_valid(stream_dir: Path, seg_path: Path, first: int, max_len: int) -> None:
    tmp = seg_path.with_suffix(".salvage")
    with open(tmp, "wb") as out:
        out.write(encode_segment_header(first, time.time_ns()))
        for seq, rtype, payload in iter_segment_records(seg_path, first, max_len, salvage=True):
            out.write(encode_frame(seq, rtype, payload))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, seg_path)
    fsync_dir(stream_dir)


def _check_sealed(
    path: Path,
    firsts: list[int],
    out: Recovered,
    *,
    max_len: int,
    salvage: bool,
    interval: int,
    fdatasync: Callable[[int], None],
) -> int:
    """Make sure each sealed segment has an index (rebuild a missing or bad one); returns
    the sequence number after the last sealed segment (the first one's name if none)."""
    next_seq = firsts[0]
    for first in firsts[:-1]:
        index = read_index(path, first)
        if index is None:
            scan = scan_segment(
                path / segment_name(first),
                first_seq=first,
                max_len=max_len,
                salvage=salvage,
                interval=interval,
            )
            if scan.tail_bytes:
                # A sealed segment was complete and synced before the next one was
                # created: damage at its end is followed by valid data (the next
                # segment), so it is corruption, not a torn tail.
                reason = f"sealed segment ends with {scan.tail_reason}"
                if not salvage:
                    raise CorruptionError(str(scan.path), scan.valid_end, reason)
                out.salvaged_bytes += scan.tail_bytes
                _log.warning("salvaged sealed segment", segment=scan.path, reason=reason)
            out.salvaged_bytes += scan.skipped_bytes
            index = scan.index(interval)
            idx_path = path / index_name(first)
            write_file_synced(path, idx_path, encode_index(index), fdatasync)
            _log.warning("rebuilt missing segment index", segment=str(idx_path))
        next_seq = index.next_seq
    return next_seq


def recover_stream(
    path: Path,
    *,
    max_record_bytes: int,
    salvage: bool,
    index_interval: int,
    fdatasync: Callable[[int], None],
) -> Recovered:
    """Recover the stream at ``path`` (its lock held by the caller). ``fdatasync`` syncs
    the files written (the writer's, replaceable for fault injection)."""
    out = Recovered()
    if finish_interrupted_compaction(path):
        _log.warning("finished an interrupted compaction", stream=str(path))
    firsts = list_segments(path)
    if not firsts:
        return out
    next_seq = _check_sealed(
        path,
        firsts,
        out,
        max_len=max_record_bytes,
        salvage=salvage,
        interval=index_interval,
        fdatasync=fdatasync,
    )
    last = firsts[-1]
    seg_path = path / segment_name(last)
    scan = scan_segment(
        seg_path,
        first_seq=last,
        max_len=max_record_bytes,
        salvage=salvage,
        interval=index_interval,
        min_seq=max(next_seq, last),
    )
    if scan.damaged:
        # Salvage: rewrite the segment with only its valid records.
        _rewrite_valid(path, seg_path, scan.first_seq, max_record_bytes)
        out.salvaged_bytes += scan.skipped_bytes
        _log.warning(
            "salvaged segment",
            segment=str(seg_path),
            skipped_bytes=scan.skipped_bytes,
            ranges=len(scan.damaged),
        )
        scan = scan_segment(
            seg_path,
            first_seq=last,
            max_len=max_record_bytes,
            interval=index_interval,
        )
    fd = os.open(seg_path, os.O_RDWR)
    try:
        if not scan.header_ok or scan.tail_bytes:
            # A torn header is rewritten (dropping the whole file); a torn tail is cut off.
            torn: dict[str, str | None] = {}
            if scan.header_ok:
                os.ftruncate(fd, scan.valid_end)
                event = "truncated torn tail"
                torn["reason"] = scan.tail_reason
            else:
                os.ftruncate(fd, 0)
                os.pwrite(fd, encode_segment_header(last, time.time_ns()), 0)
                event = "rewrote torn segment header"
            fdatasync(fd)
            out.recovered_tail_bytes += scan.tail_bytes
            _log.warning(event, segment=str(seg_path), dropped_bytes=scan.tail_bytes, **torn)
            if not scan.header_ok:
                scan.valid_end = SEGMENT_HEADER.size
    except BaseException:
        os.close(fd)
        raise
    out.fd = fd
    out.first = last
    out.end = scan.valid_end
    out.records = scan.records
    out.index_entries = list(scan.index_entries)
    out.next_seq = max(scan.next_seq, next_seq, last)
    return out
