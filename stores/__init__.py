"""The append-only trajectory store: segmented, CRC-framed, crash-safe, tailable.

See docs/store-format.md for the on-disk format. The names here are the public API:

* the store and its streams: :class:`Store`, :class:`StreamWriter`,
  :class:`AsyncStreamWriter`, :class:`StreamReader` (:class:`Record`, :class:`Position`),
  and :class:`StoreSink`, the runtime's default sink;
* trajectories: :func:`encode_trajectory` / :func:`decode_trajectory`, filters
  (:func:`make_filter`, :class:`TrajectoryMeta`) and :func:`token_arrays`;
* training: :class:`TrajectoryDataset` and :class:`TorchTrajectoryDataset` (loaded on first
  use: it imports torch, the ``torch`` extra), the exports (:func:`export_agenttraj`,
  :func:`export_chat`, :func:`export_parquet`, :func:`to_arrow_table`;
  ``gymux.stores.export.export`` dispatches on a format name) and :func:`load_hf_dataset`;
* RL: groups (:func:`encode_group` / :func:`decode_group`, one ``GROUP`` record each),
  :class:`TrainingBatches` (padded :class:`TrainingBatch` es, GRPO advantages, staleness,
  exactly once with a named :class:`ConsumerCursor`), :func:`turn_credit` and
  :func:`returns_to_go`;
* across machines: :class:`StoreShards` (one store per node read as one store, with
  :class:`ShardConsumer` / :class:`ShardCursor` for exactly-once consumers), and the NATS
  JetStream transport :class:`JetStreamSink` / :class:`JetStreamReader` (extra ``nats``);
* maintenance: :func:`store_info`, :func:`verify`, :func:`compact`;
* errors: :class:`StoreError` and its subclasses.
"""

from typing import TYPE_CHECKING, Any

from gymux.stores import errors
from gymux.stores.async_writer import AsyncStreamWriter
from gymux.stores.batches import TrainingBatch, TrainingBatches, grpo_advantages
from gymux.stores.codec import (
    MetaFilter,
    TrajectoryMeta,
    decode_group,
    decode_trajectory,
    encode_group,
    encode_trajectory,
    make_filter,
    token_arrays,
)
from gymux.stores.compaction import CompactResult, compact
from gymux.stores.credit import returns_to_go, turn_credit
from gymux.stores.cursor import ConsumerCursor
from gymux.stores.dataset import TrajectoryDataset
from gymux.stores.errors import *  # noqa: F403 - re-exported: errors.__all__
from gymux.stores.export import (
    FORMATS,
    ExportResult,
    export_agenttraj,
    export_chat,
    export_parquet,
    iter_trajectories,
    to_arrow_table,
)
from gymux.stores.format import RecordType
from gymux.stores.hf import load_hf_dataset
from gymux.stores.info import StoreInfo, store_info
from gymux.stores.jetstream import (
    JetStreamConfigError,
    JetStreamError,
    JetStreamItem,
    JetStreamReader,
    JetStreamSink,
)
from gymux.stores.reader import Position, Record, StreamReader
from gymux.stores.shards import ShardConsumer, ShardCursor, ShardItem, ShardRecord, StoreShards
from gymux.stores.sink import StoreSink
from gymux.stores.store import DEFAULT_STREAM, Store
from gymux.stores.sync_writer import StreamWriter
from gymux.stores.verification import Problem, VerifyReport, verify

if TYPE_CHECKING:
    from gymux.stores.torch_dataset import TorchTrajectoryDataset

__all__ = [
    "DEFAULT_STREAM",
    "FORMATS",
    "AsyncStreamWriter",
    "CompactResult",
    "ConsumerCursor",
    "ExportResult",
    "JetStreamConfigError",
    "JetStreamError",
    "JetStreamItem",
    "JetStreamReader",
    "JetStreamSink",
    "MetaFilter",
    "Position",
    "Problem",
    "Record",
    "RecordType",
    "ShardConsumer",
    "ShardCursor",
    "ShardItem",
    "ShardRecord",
    "Store",
    "StoreInfo",
    "StoreShards",
    "StoreSink",
    "StreamReader",
    "StreamWriter",
    "TorchTrajectoryDataset",
    "TrainingBatch",
    "TrainingBatches",
    "TrajectoryDataset",
    "TrajectoryMeta",
    "VerifyReport",
    "compact",
    "decode_group",
    "decode_trajectory",
    "encode_group",
    "encode_trajectory",
    "export_agenttraj",
    "export_chat",
    "export_parquet",
    "grpo_advantages",
    "iter_trajectories",
    "load_hf_dataset",
    "make_filter",
    "returns_to_go",
    "store_info",
    "to_arrow_table",
    "token_arrays",
    "turn_credit",
    "verify",
    *errors.__all__,
]


def __getattr__(name: str) -> Any:
    # TorchTrajectoryDataset imports torch (an optional extra): only when asked for.
    if name == "TorchTrajectoryDataset":
        from gymux.stores.torch_dataset import TorchTrajectoryDataset

        return TorchTrajectoryDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
