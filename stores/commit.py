"""The ``COMMIT`` file: the stream's durable position, published after every fdatasync.

``COMMIT`` holds two 36-byte slots, each ``magic "GYMXCMT1" | next_seq u64 | segment u64 |
offset u64 | masked crc32c u32``, written alternately with one ``pwrite``, so that a torn
write of one leaves the other readable; the valid slot furthest ahead wins. (Format 1 files
written before the second slot existed hold one slot.) It is advisory: recovery never
trusts it; readers with ``committed_only=True`` stop there.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import google_crc32c

from gymux.stores.format import mask

__all__ = ["COMMIT_FILE", "COMMIT_SLOT", "CommitFile", "encode_commit", "read_commit"]

COMMIT_FILE = "COMMIT"
_COMMIT = struct.Struct("<8sQQQ")
_COMMIT_MAGIC = b"GYMXCMT1"
_U32 = struct.Struct("<I")
#: Bytes of one slot.
COMMIT_SLOT = _COMMIT.size + 4


def _parse_commit_slot(data: bytes, offset: int) -> tuple[int, int, int] | None:
    if len(data) < offset + COMMIT_SLOT:
        return None
    (crc,) = _U32.unpack_from(data, offset + _COMMIT.size)
    if mask(google_crc32c.value(data[offset : offset + _COMMIT.size])) != crc:
        return None
    magic, next_seq, segment, pos = _COMMIT.unpack_from(data, offset)
    if magic != _COMMIT_MAGIC:
        return None
    return next_seq, segment, pos


def read_commit(stream_dir: Path) -> tuple[int, int, int] | None:
    """The durable position ``(next_seq, segment_first_seq, offset)``, or ``None``."""
    try:
        data = (stream_dir / COMMIT_FILE).read_bytes()
    except FileNotFoundError:
        return None
    slots = [
        slot
        for slot in (_parse_commit_slot(data, 0), _parse_commit_slot(data, COMMIT_SLOT))
        if slot is not None
    ]
    return max(slots) if slots else None


def encode_commit(next_seq: int, segment: int, offset: int) -> bytes:
    """One COMMIT slot (36 bytes)."""
    body = _COMMIT.pack(_COMMIT_MAGIC, next_seq, segment, offset)
    return body + _U32.pack(mask(google_crc32c.value(body)))


class CommitFile:
    """The writer's handle on ``COMMIT``: opened (and emptied) on the first write, then
    each write goes to the other slot."""

    def __init__(self, stream_dir: Path) -> None:
        self.path = stream_dir / COMMIT_FILE
        self._fd = -1
        self._writes = 0

    def write(self, next_seq: int, segment: int, offset: int) -> None:
        data = encode_commit(next_seq, segment, offset)
        if self._fd < 0:
            # A fresh file with one slot; later writes alternate between the two slots.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(self._fd, 0)
            self._writes = 0
        os.pwrite(self._fd, data, (self._writes % 2) * COMMIT_SLOT)
        self._writes += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
