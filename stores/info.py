"""``store_info``: streams, segments, records, bytes, the committed position and the writer.

Sealed segments with a valid index are counted from it; the rest are scanned. Reads only.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from gymux.stores.commit import read_commit
from gymux.stores.format import (
    DEFAULT_MAX_RECORD,
    FORMAT_VERSION,
    SEGMENT_HEADER,
    FrameStatus,
    list_segments,
    parse_frame,
    read_index,
    segment_name,
)
from gymux.stores.lock import LOCK_FILE, lock_holder
from gymux.stores.scan import scan_segment
from gymux.stores.store import Store, as_store

__all__ = [
    "CommitInfo",
    "SegmentInfo",
    "StoreInfo",
    "StreamInfo",
    "store_info",
    "stream_bytes",
]


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


def stream_bytes(sdir: Path) -> int:
    """Bytes of a stream's files (all but ``LOCK``)."""
    return sum(e.stat().st_size for e in os.scandir(sdir) if e.is_file() and e.name != LOCK_FILE)


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
        index = read_index(sdir, first)
        indexed = index is not None and index.first_seq == first
        if sealed and index is not None and indexed and index.end_offset == size:
            records = index.count
            seg_first = index.entries[0][0] if records and index.entries else None
            if records and seg_first is None:
                seg_first = _first_record_seq(sdir, first, max_len)
            seg_last = index.next_seq - 1 if records else None
        else:
            scan = scan_segment(
                sdir / segment_name(first), first_seq=first, max_len=max_len, collect_all=True
            )
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
        bytes=stream_bytes(sdir),
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
    store = as_store(path)
    streams = [_stream_info(n, d, max_record_bytes) for n, d in store.stream_dirs(stream)]
    return StoreInfo(path=str(store.path), format_version=FORMAT_VERSION, streams=streams)
