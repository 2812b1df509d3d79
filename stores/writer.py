"""The stream writers and the files they keep, in one import (see the modules for each).

* :mod:`gymux.stores.sync_writer`: :class:`StreamWriter`, recovery and group commit;
* :mod:`gymux.stores.async_writer`: :class:`AsyncStreamWriter`, its asyncio front;
* :mod:`gymux.stores.lock`: the ``LOCK`` file (:class:`StreamLock`);
* :mod:`gymux.stores.commit`: the ``COMMIT`` file (durable position).
"""

from __future__ import annotations

from gymux.stores.async_writer import AsyncStreamWriter
from gymux.stores.commit import COMMIT_FILE, encode_commit, read_commit
from gymux.stores.lock import LOCK_FILE, StreamLock
from gymux.stores.sync_writer import Durability, StreamWriter

__all__ = [
    "COMMIT_FILE",
    "LOCK_FILE",
    "AsyncStreamWriter",
    "Durability",
    "StreamLock",
    "StreamWriter",
    "encode_commit",
    "read_commit",
]
