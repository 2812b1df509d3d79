"""Looking after a store, in one import: :func:`store_info` (:mod:`gymux.stores.info`),
:func:`verify` (:mod:`gymux.stores.verification`) and :func:`compact`
(:mod:`gymux.stores.compaction`, whose crash-safe switch-over is
:mod:`gymux.stores.manifest`)."""

from __future__ import annotations

from gymux.stores.compaction import DEFAULT_TARGET_BYTES, CompactResult, DroppedRange, compact
from gymux.stores.errors import DamagedStreamError
from gymux.stores.info import CommitInfo, SegmentInfo, StoreInfo, StreamInfo, store_info
from gymux.stores.lock import lock_holder
from gymux.stores.manifest import MANIFEST, finish_interrupted_compaction
from gymux.stores.verification import Problem, StreamReport, VerifyReport, verify

__all__ = [
    "DEFAULT_TARGET_BYTES",
    "MANIFEST",
    "CommitInfo",
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
    "finish_interrupted_compaction",
    "lock_holder",
    "store_info",
    "verify",
]
