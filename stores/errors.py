"""Errors raised by the store."""

from __future__ import annotations

__all__ = [
    "CorruptionError",
    "RecordTooLargeError",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
]


class StoreError(Exception):
    """Base class of store errors."""


class StoreLockedError(StoreError):
    """Another writer holds the stream's lock."""


class RecordTooLargeError(StoreError, ValueError):
    """A payload exceeds the stream's ``max_record_bytes``."""


class StoreClosedError(StoreError):
    """The writer is closed, or failed (an fsync error is fatal and never retried)."""


class CorruptionError(StoreError):
    """A damaged record followed by valid data: never skipped silently.

    ``segment`` is the segment file, ``offset`` the byte position of the damage and
    ``resume_offset`` the position of the next valid record (``None`` if unknown).
    """

    def __init__(
        self, segment: str, offset: int, reason: str, resume_offset: int | None = None
    ) -> None:
        where = f"{segment} at byte {offset}"
        tail = f"; valid data resumes at byte {resume_offset}" if resume_offset is not None else ""
        super().__init__(f"corrupt record in {where}: {reason}{tail}")
        self.segment = segment
        self.offset = offset
        self.reason = reason
        self.resume_offset = resume_offset
