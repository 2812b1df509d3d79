"""Errors raised by the store (defined in the one error tree, :mod:`gymux.errors`)."""

from __future__ import annotations

from gymux.errors import (
    CorruptionError,
    DamagedStreamError,
    RecordTooLargeError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
)

__all__ = [
    "CorruptionError",
    "DamagedStreamError",
    "RecordTooLargeError",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
]
