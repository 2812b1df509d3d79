"""The on-disk format of a stream: segment files of CRC-framed records, and sparse indexes.

Everything is little-endian. See docs/store-format.md for the full description.

Segment file ``<first_seq:020d>.seg``::

    header (32 bytes): magic "GYMXSEG\\x01" | version u16 | flags u16 | first_seq u64 |
                       created_ns u64 | masked crc32c of the previous 28 bytes u32
    records, back to back

Record frame (17-byte header + payload)::

    crc u32 | length u32 | seq u64 | type u8 | payload[length]

``crc`` is the *masked* CRC32C of ``length | seq | type | payload``. Masking (rotate right
by 15 bits, add a constant, as LevelDB does) means that a run of zero bytes never looks
like a valid record. ``type`` 0 is never written.

Index file ``<first_seq:020d>.idx`` (written when a segment is sealed; always rebuildable
from the segment alone)::

    magic "GYMXIDX\\x01" | version u16 | reserved u16 | first_seq u64 | count u64 |
    end_offset u64 | next_seq u64 | interval u32 | entries u32 |
    entries x (seq u64, offset u64) | masked crc32c of everything before u32
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path

import google_crc32c

__all__ = [
    "FORMAT_VERSION",
    "FRAME",
    "SEGMENT_HEADER",
    "FrameStatus",
    "IndexData",
    "RecordType",
    "crc32c",
    "encode_frame",
    "encode_frame_header",
    "encode_index",
    "encode_segment_header",
    "find_next_frame",
    "index_name",
    "mask",
    "parse_frame",
    "parse_index",
    "parse_segment_header",
    "read_index",
    "segment_name",
    "unmask",
    "write_file_durable",
]

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"GYMXSEG\x01"
INDEX_MAGIC = b"GYMXIDX\x01"
SEGMENT_HEADER = struct.Struct("<8sHHQQI")
FRAME = struct.Struct("<IIQB")
_FRAME_BODY = struct.Struct("<IQB")
_INDEX_HEAD = struct.Struct("<8sHHQQQQII")
_INDEX_ENTRY = struct.Struct("<QQ")
_U32 = struct.Struct("<I")
MASK_DELTA = _MASK_DELTA = 0xA282EAD8
M32 = _M32 = 0xFFFFFFFF

#: Default upper bound on one record's payload.
DEFAULT_MAX_RECORD = 64 * 1024 * 1024


class RecordType(enum.IntEnum):
    #: Opaque user bytes.
    DATA = 1
    #: A trajectory (see :mod:`gymux.stores.codec`).
    TRAJECTORY = 2
    #: An RL group: several trajectories in one record, so all or none are visible
    #: (see :func:`gymux.stores.codec.encode_group`).
    GROUP = 3


def crc32c(data: bytes, crc: int = 0) -> int:
    return google_crc32c.extend(crc, data) if crc else google_crc32c.value(data)  # type: ignore[no-any-return]


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & _M32) + _MASK_DELTA) & _M32


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & _M32
    return ((rot >> 17) | (rot << 15)) & _M32


def encode_frame(seq: int, rtype: int, payload: bytes) -> bytes:
    body = _FRAME_BODY.pack(len(payload), seq, rtype)
    crc = google_crc32c.extend(google_crc32c.value(body), payload)
    return _U32.pack(mask(crc)) + body + payload


def encode_frame_header(seq: int, rtype: int, payload: bytes) -> bytes:
    """The 17-byte frame header for ``payload`` (write it followed by the payload)."""
    body = _FRAME_BODY.pack(len(payload), seq, rtype)
    crc = google_crc32c.extend(google_crc32c.value(body), payload)
    return _U32.pack(mask(crc)) + body


class FrameStatus(enum.IntEnum):
    OK = 0
    #: Exactly at the end of the data.
    END = 1
    #: The frame runs past the end of the data (a torn write, or still being written).
    TRUNCATED = 2
    #: Length field exceeds the bound (and is not a complete, checksum-valid frame).
    BAD_LENGTH = 3
    #: Checksum mismatch.
    BAD_CRC = 4
    #: Valid checksum but an impossible type.
    BAD_TYPE = 5


def parse_frame(
    buf: bytes | mmap.mmap, offset: int, end: int, max_len: int
) -> tuple[FrameStatus, int, int, bytes]:
    """Parse the frame at ``offset``: ``(status, seq, type, payload)``.

    ``payload`` is only meaningful when the status is ``OK`` (it is ``b""`` otherwise).
    ``buf`` must be ``bytes`` (google-crc32c takes no memoryviews).

    ``max_len`` bounds what a length field may claim before its bytes are there; a
    complete frame with a valid checksum is ``OK`` even above it (it was written by a
    writer with a larger ``max_record_bytes``: a durable record, never a torn tail).
    """
    if offset == end:
        return FrameStatus.END, 0, 0, b""
    if end - offset < FRAME.size:
        return FrameStatus.TRUNCATED, 0, 0, b""
    crc, length, seq, rtype = FRAME.unpack_from(buf, offset)
    start = offset + FRAME.size
    stop = start + length
    if length > max_len and stop > end:
        return FrameStatus.BAD_LENGTH, seq, rtype, b""
    if stop > end:
        return FrameStatus.TRUNCATED, seq, rtype, b""
    payload = buf[start:stop]
    actual = google_crc32c.extend(google_crc32c.value(buf[offset + 4 : start]), payload)
    if mask(actual) != crc:
        # A complete frame over the bound that fails its checksum is a bad length field.
        status = FrameStatus.BAD_LENGTH if length > max_len else FrameStatus.BAD_CRC
        return status, seq, rtype, b""
    if rtype == 0:
        return FrameStatus.BAD_TYPE, seq, rtype, b""
    return FrameStatus.OK, seq, rtype, payload


def find_next_frame(buf: bytes | mmap.mmap, offset: int, end: int, max_len: int) -> int | None:
    """The first offset after ``offset`` holding a checksum-valid frame, or ``None``."""
    pos = offset + 1
    limit = end - FRAME.size
    while pos <= limit:
        status = parse_frame(buf, pos, end, max_len)[0]
        if status is FrameStatus.OK:
            return pos
        pos += 1
    return None


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def index_name(first_seq: int) -> str:
    return f"{first_seq:020d}.idx"


def encode_segment_header(first_seq: int, created_ns: int) -> bytes:
    head = struct.pack("<8sHHQQ", SEGMENT_MAGIC, FORMAT_VERSION, 0, first_seq, created_ns)
    return head + _U32.pack(mask(google_crc32c.value(head)))


def parse_segment_header(data: bytes) -> tuple[int, int, int] | None:
    """``(version, first_seq, created_ns)``, or ``None`` if the header is missing or bad."""
    if len(data) < SEGMENT_HEADER.size:
        return None
    magic, version, _flags, first_seq, created_ns, crc = SEGMENT_HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        return None
    if mask(google_crc32c.value(bytes(data[: SEGMENT_HEADER.size - 4]))) != crc:
        return None
    return version, first_seq, created_ns


class IndexData:
    """A segment's sparse index: every ``interval`` bytes, the (seq, offset) of a record."""

    __slots__ = ("count", "end_offset", "entries", "first_seq", "interval", "next_seq")

    def __init__(
        self,
        first_seq: int,
        count: int,
        end_offset: int,
        next_seq: int,
        interval: int,
        entries: list[tuple[int, int]],
    ) -> None:
        self.first_seq = first_seq
        self.count = count
        self.end_offset = end_offset
        self.next_seq = next_seq
        self.interval = interval
        self.entries = entries

    def floor(self, seq: int) -> tuple[int, int]:
        """The last indexed (seq, offset) at or before ``seq``."""
        best = (self.first_seq, SEGMENT_HEADER.size)
        lo, hi = 0, len(self.entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entries[mid][0] <= seq:
                best = self.entries[mid]
                lo = mid + 1
            else:
                hi = mid
        return best


def encode_index(index: IndexData) -> bytes:
    head = _INDEX_HEAD.pack(
        INDEX_MAGIC,
        FORMAT_VERSION,
        0,
        index.first_seq,
        index.count,
        index.end_offset,
        index.next_seq,
        index.interval,
        len(index.entries),
    )
    body = b"".join(_INDEX_ENTRY.pack(s, o) for s, o in index.entries)
    data = head + body
    return data + _U32.pack(mask(google_crc32c.value(data)))


def parse_index(data: bytes) -> IndexData | None:
    """Decode an index file; ``None`` if it is damaged (the caller rebuilds it)."""
    if len(data) < _INDEX_HEAD.size + 4:
        return None
    (crc,) = _U32.unpack_from(data, len(data) - 4)
    if mask(google_crc32c.value(data[:-4])) != crc:
        return None
    magic, version, _r, first, count, end, next_seq, interval, n = _INDEX_HEAD.unpack_from(data)
    if magic != INDEX_MAGIC or version > FORMAT_VERSION:
        return None
    if len(data) != _INDEX_HEAD.size + n * _INDEX_ENTRY.size + 4:
        return None
    entries = [
        _INDEX_ENTRY.unpack_from(data, _INDEX_HEAD.size + i * _INDEX_ENTRY.size) for i in range(n)
    ]
    return IndexData(first, count, end, next_seq, interval, entries)


def read_index(stream_dir: Path, first_seq: int) -> IndexData | None:
    """The index of segment ``first_seq``; ``None`` if it is missing or damaged."""
    try:
        data = (stream_dir / index_name(first_seq)).read_bytes()
    except FileNotFoundError:
        return None
    return parse_index(data)


def write_file_durable(path: Path, data: bytes, fsync: Callable[[int], None] = os.fsync) -> None:
    """Write ``path`` through a synced ``PATH.tmp`` and a rename (the caller fsyncs the
    directory). ``fsync`` syncs the temporary file (the writer passes its fdatasync)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:  # a write may be short
            view = view[os.write(fd, view) :]
        fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_segments(stream_dir: Path) -> list[int]:
    """First sequence numbers of the stream's segments, in order."""
    firsts = []
    for entry in os.scandir(stream_dir):
        name = entry.name
        if name.endswith(".seg") and len(name) == 24 and name[:20].isdigit():
            firsts.append(int(name[:20]))
    return sorted(firsts)
