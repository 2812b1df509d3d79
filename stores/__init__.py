"""The append-only trajectory store: segmented, CRC-framed, crash-safe, tailable.

See docs/store-format.md for the on-disk format.
"""

from gymux.stores.codec import decode_trajectory, encode_trajectory, make_filter
from gymux.stores.dataset import TrajectoryDataset
from gymux.stores.errors import (
    CorruptionError,
    RecordTooLargeError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
)
from gymux.stores.format import RecordType
from gymux.stores.reader import Position, Record, StreamReader
from gymux.stores.sink import StoreSink
from gymux.stores.store import DEFAULT_STREAM, Store
from gymux.stores.writer import AsyncStreamWriter, StreamWriter

__all__ = [
    "DEFAULT_STREAM",
    "AsyncStreamWriter",
    "CorruptionError",
    "Position",
    "Record",
    "RecordTooLargeError",
    "RecordType",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "StoreSink",
    "StreamReader",
    "StreamWriter",
    "TrajectoryDataset",
    "decode_trajectory",
    "encode_trajectory",
    "make_filter",
]
