"""Exporting a stream's trajectories for training: AgentTraj JSONL, chat JSONL, Parquet/Arrow.

::

    export_agenttraj("runs/x/store", "train.jsonl", success=True)
    export_chat("runs/x/store", "chat.jsonl", env="maze")
    export_parquet("runs/x/store", "train.parquet", min_policy_step=10)
    table = to_arrow_table("runs/x/store")

Every exporter streams: JSONL is written one trajectory at a time (constant memory), Parquet
one row group per batch of ``batch_rows`` trajectories. Filters are the keywords of
:func:`gymux.stores.codec.make_filter` (``env``, ``success``, ``min_policy_step``,
``finish_reasons``, ``policy``, ``split``) and are checked on each record's metadata before
its body is decoded. ``committed_only`` stops at the writer's durable offset; ``salvage``
skips damaged records instead of raising :class:`~gymux.stores.errors.CorruptionError`.
Files are written to ``FILE.tmp`` and renamed into place when complete.

**AgentTraj** (AgentGym's ``AgentTraj`` / ``AgentTraj-L`` layout), one object per line::

    {"conversations": [{"from": "human"|"gpt", "value": str, "loss": bool|null}, ...],
     "item_id": "<env>_<task_id>", "reward": float, "success": bool}

``user`` messages (the instruction and every observation) become ``human`` turns with
``loss: false`` (``null`` with ``null_human_loss=True``, as AgentGym's published files
have); ``assistant`` messages become ``gpt`` turns whose ``loss`` is the message's flag:
``true`` on model outputs, ``false`` on the scripted "OK" after the instruction. AgentTraj
has no system role, so a ``system`` message is a ``human`` turn's text: it is joined (with
a blank line) to the adjacent user message, normally the instruction that follows it.
Consecutive turns of the same side are joined the same way, so ``human`` and ``gpt``
strictly alternate; joined ``gpt`` turns keep ``loss: true`` only if all parts had it.

**Chat**: ``{"messages": [{"role", "content"}], "env", "task_id", "reward", "success",
"finish_reason", "episode_id"}`` (roles as stored: ``system``, ``user``, ``assistant``).

**Parquet/Arrow** (needs ``pip install gymux[arrow]``): one row per trajectory; see
:func:`arrow_schema` for the columns. Token data are list columns built from the packed
little-endian bytes with ``numpy.frombuffer`` (no per-token Python work): ``token_ids``
``list<int32>``, ``logprobs`` ``list<float32>``, ``loss_mask`` ``list<uint8>``; null
where the trajectory has no token data (``logprobs`` also where the policy gave none).
RL columns (schema 4): ``group_id``, ``group_size``, ``terminal``, ``truncated``,
``turn_rewards``, ``turn_credit`` (:func:`gymux.stores.credit.turn_credit`, summing to
``reward``), ``return_to_go`` (discounted by ``gamma``, default 1) and ``turn_spans``
(``[start, end)`` token offsets, null for a turn without one).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from gymux.stores.agenttraj import agenttraj_line, is_imported
from gymux.stores.codec import decode_trajectory, make_filter
from gymux.stores.credit import returns_to_go, turn_credit
from gymux.stores.errors import StoreError
from gymux.stores.reader import StreamReader
from gymux.stores.store import DEFAULT_STREAM, StorePath, as_store, trajectory_records
from gymux.trajectory import Trajectory

__all__ = [
    "FORMATS",
    "ExportResult",
    "agenttraj_record",
    "arrow_schema",
    "chat_record",
    "export",
    "export_agenttraj",
    "export_chat",
    "export_parquet",
    "iter_arrow_batches",
    "iter_trajectories",
    "to_arrow_table",
]

#: Names accepted by :func:`export` (and ``gymux store export --format``).
FORMATS = ("agenttraj", "chat", "parquet")

#: Rows per Parquet row group / Arrow record batch.
DEFAULT_BATCH_ROWS = 1024
#: A batch is also closed once it holds this many tokens (keeps list offsets in int32).
_MAX_BATCH_TOKENS = 1 << 28

_json = msgspec.json.Encoder()


class ExportResult(msgspec.Struct, kw_only=True):
    """What an export wrote."""

    format: str
    path: str
    trajectories: int
    bytes: int
    #: Bytes of damaged records skipped (``salvage=True`` only).
    skipped_bytes: int = 0


# -- reading ----------------------------------------------------------------------------


class _Source:
    """Decoded, filtered trajectories of one stream, with their sequence numbers."""

    def __init__(
        self,
        store: StorePath,
        stream: str,
        *,
        committed_only: bool,
        salvage: bool,
        filters: dict[str, Any],
    ) -> None:
        st = as_store(store)
        self.reader = StreamReader(st.existing_stream(stream), salvage=salvage)
        self.keep = make_filter(**filters)
        self.committed_only = committed_only

    def __iter__(self) -> Iterator[tuple[int, Trajectory]]:
        records = self.reader.records(committed_only=self.committed_only)
        for record in trajectory_records(records, self.keep):
            yield record.seq, decode_trajectory(record.payload)


def iter_trajectories(
    store: StorePath,
    stream: str = DEFAULT_STREAM,
    *,
    committed_only: bool = False,
    salvage: bool = False,
    **filters: Any,
) -> Iterator[tuple[int, Trajectory]]:
    """``(seq, trajectory)`` for every trajectory of ``stream`` that passes ``filters``."""
    yield from _Source(
        store, stream, committed_only=committed_only, salvage=salvage, filters=filters
    )


# -- record layouts ---------------------------------------------------------------------


def agenttraj_record(
    trajectory: Trajectory, *, null_human_loss: bool = False
) -> dict[str, Any] | msgspec.Raw:
    """One trajectory in AgentGym's AgentTraj layout (see the module docstring).

    A trajectory imported from an AgentTraj file (:mod:`gymux.stores.agenttraj`) gives its
    source record back exactly, as ``msgspec.Raw`` JSON (``null_human_loss`` does not
    apply: the source's own ``loss`` values are kept); ``msgspec.json.decode`` reads it.
    """
    if is_imported(trajectory):
        return msgspec.Raw(agenttraj_line(trajectory))
    conversations: list[dict[str, Any]] = []
    for message in trajectory.messages:
        side = "gpt" if message.role == "assistant" else "human"
        loss = bool(message.loss) if side == "gpt" else False
        if conversations and conversations[-1]["from"] == side:
            last = conversations[-1]
            last["value"] = f"{last['value']}\n\n{message.content}"
            last["loss"] = last["loss"] and loss
        else:
            conversations.append({"from": side, "value": message.content, "loss": loss})
    if null_human_loss:
        for turn in conversations:
            if turn["from"] == "human":
                turn["loss"] = None
    return {
        "conversations": conversations,
        "item_id": f"{trajectory.env_id}_{trajectory.task_id}",
        "reward": float(trajectory.reward),
        "success": bool(trajectory.success),
    }


def chat_record(trajectory: Trajectory) -> dict[str, Any]:
    """One trajectory as chat messages plus its metadata."""
    return {
        "messages": [{"role": m.role, "content": m.content} for m in trajectory.messages],
        "env": trajectory.env_id,
        "task_id": trajectory.task_id,
        "reward": float(trajectory.reward),
        "success": bool(trajectory.success),
        "finish_reason": str(trajectory.finish_reason),
        "episode_id": trajectory.episode_id,
    }


# -- JSONL ------------------------------------------------------------------------------


class _Output:
    """``FILE.tmp`` renamed to ``FILE`` on success, removed on failure; or a given stream."""

    def __init__(self, out: str | os.PathLike[str] | IO[bytes]) -> None:
        self.stream: IO[bytes] | None = None
        self.path: Path | None = None
        self.tmp: Path | None = None
        if isinstance(out, str | os.PathLike):
            self.path = Path(out)
            self.tmp = self.path.with_name(self.path.name + ".tmp")
        else:
            self.stream = out

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "<stream>"

    def open(self) -> IO[bytes]:
        if self.stream is not None:
            return self.stream
        assert self.tmp is not None
        self.stream = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()/abort()
        return self.stream

    def finish(self) -> None:
        if self.path is None or self.tmp is None or self.stream is None:
            if self.stream is not None:
                self.stream.flush()
            return
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.path is not None and self.tmp is not None:
            if self.stream is not None:
                self.stream.close()
            self.tmp.unlink(missing_ok=True)


def _export_jsonl(
    fmt: str,
    store: StorePath,
    out: str | os.PathLike[str] | IO[bytes],
    *,
    stream: str,
    committed_only: bool,
    salvage: bool,
    filters: dict[str, Any],
    null_human_loss: bool = False,
) -> ExportResult:
    source = _Source(store, stream, committed_only=committed_only, salvage=salvage, filters=filters)
    output = _Output(out)
    fh = output.open()
    count = written = 0
    try:
        for _seq, trajectory in source:
            if fmt == "agenttraj":
                obj = agenttraj_record(trajectory, null_human_loss=null_human_loss)
            else:
                obj = chat_record(trajectory)
            line = _json.encode(obj) + b"\n"
            fh.write(line)
            written += len(line)
            count += 1
        output.finish()
    except BaseException:
        output.abort()
        raise
    return ExportResult(
        format=fmt,
        path=output.name,
        trajectories=count,
        bytes=written,
        skipped_bytes=source.reader.skipped_bytes,
    )


def export_agenttraj(
    store: StorePath,
    out: str | os.PathLike[str] | IO[bytes],
    *,
    stream: str = DEFAULT_STREAM,
    committed_only: bool = False,
    salvage: bool = False,
    null_human_loss: bool = False,
    **filters: Any,
) -> ExportResult:
    """Write AgentTraj JSONL (one trajectory per line) to a path or a binary stream."""
    return _export_jsonl(
        "agenttraj",
        store,
        out,
        stream=stream,
        committed_only=committed_only,
        salvage=salvage,
        filters=filters,
        null_human_loss=null_human_loss,
    )


def export_chat(
    store: StorePath,
    out: str | os.PathLike[str] | IO[bytes],
    *,
    stream: str = DEFAULT_STREAM,
    committed_only: bool = False,
    salvage: bool = False,
    **filters: Any,
) -> ExportResult:
    """Write chat-format JSONL (one trajectory per line) to a path or a binary stream."""
    return _export_jsonl(
        "chat",
        store,
        out,
        stream=stream,
        committed_only=committed_only,
        salvage=salvage,
        filters=filters,
    )


# -- Arrow / Parquet --------------------------------------------------------------------


def _import_pyarrow() -> Any:
    try:
        import numpy  # noqa: F401
        import pyarrow
    except ImportError as exc:
        raise StoreError(
            f"Parquet/Arrow export needs pyarrow and numpy ({exc.name} is missing): "
            "pip install gymux[arrow]"
        ) from None
    return pyarrow


def arrow_schema() -> Any:
    """The Arrow schema of exported trajectories (one row per trajectory)."""
    pa = _import_pyarrow()
    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("loss", pa.bool_())])
    return pa.schema(
        [
            ("seq", pa.int64()),
            ("schema_version", pa.int32()),
            ("run_id", pa.string()),
            ("episode_id", pa.string()),
            ("env_id", pa.string()),
            ("env_version", pa.string()),
            ("task_id", pa.int64()),
            ("split", pa.string()),
            ("sample", pa.int64()),
            ("policy", pa.string()),
            ("policy_version", pa.string()),
            ("policy_step", pa.int64()),
            ("reward", pa.float64()),
            ("success", pa.bool_()),
            ("finish_reason", pa.string()),
            ("error", pa.string()),
            ("attempts", pa.int32()),
            ("invalid_actions", pa.int32()),
            ("num_turns", pa.int32()),
            ("started_at", pa.float64()),
            ("wall_s", pa.float64()),
            ("messages", pa.list_(message)),
            ("group_id", pa.string()),
            ("group_size", pa.int32()),
            ("terminal", pa.bool_()),
            ("truncated", pa.bool_()),
            ("turn_rewards", pa.list_(pa.float64())),
            ("turn_credit", pa.list_(pa.float64())),
            ("return_to_go", pa.list_(pa.float64())),
            ("turn_spans", pa.list_(pa.list_(pa.int64(), 2))),
            ("num_tokens", pa.int64()),
            ("tokenizer", pa.string()),
            ("token_ids", pa.list_(pa.int32())),
            ("logprobs", pa.list_(pa.float32())),
            ("loss_mask", pa.list_(pa.uint8())),
        ]
    )


def _list_column(pa: Any, parts: list[bytes | None], dtype: str, arrow_type: Any) -> Any:
    """A ``list<arrow_type>`` array from packed little-endian buffers (``None``: null row)."""
    import numpy as np

    width = np.dtype(dtype).itemsize
    lengths = np.fromiter(
        (0 if p is None else len(p) // width for p in parts), dtype=np.int64, count=len(parts)
    )
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    joined = b"".join(
        p if len(p) % width == 0 else p[: len(p) - len(p) % width] for p in parts if p is not None
    )
    values = np.frombuffer(joined, dtype=dtype).astype(dtype[1:], copy=False)
    nulls = np.fromiter((p is None for p in parts), dtype=bool, count=len(parts))
    return pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.array(values, type=arrow_type),
        mask=pa.array(nulls) if nulls.any() else None,
    )


def _record_batch(
    pa: Any, schema: Any, rows: list[tuple[int, Trajectory]], gamma: float = 1.0
) -> Any:
    def col(fn: Any) -> list[Any]:
        return [fn(t) for _, t in rows]

    tokens = [t.tokens for _, t in rows]
    columns: dict[str, Any] = {
        "seq": [seq for seq, _ in rows],
        "schema_version": col(lambda t: t.schema_version),
        "run_id": col(lambda t: t.run_id),
        "episode_id": col(lambda t: t.episode_id),
        "env_id": col(lambda t: t.env_id),
        "env_version": col(lambda t: t.env_version),
        "task_id": col(lambda t: t.task_id),
        "split": col(lambda t: t.split),
        "sample": col(lambda t: t.sample),
        "policy": col(lambda t: t.policy),
        "policy_version": col(lambda t: t.policy_version),
        "policy_step": col(lambda t: t.policy_step),
        "reward": col(lambda t: float(t.reward)),
        "success": col(lambda t: t.success),
        "finish_reason": col(lambda t: str(t.finish_reason)),
        "error": col(lambda t: t.error),
        "attempts": col(lambda t: t.attempts),
        "invalid_actions": col(lambda t: t.invalid_actions),
        "num_turns": col(lambda t: len(t.turns)),
        "started_at": col(lambda t: t.started_at),
        "wall_s": col(lambda t: t.wall_s),
        "messages": col(
            lambda t: [{"role": m.role, "content": m.content, "loss": m.loss} for m in t.messages]
        ),
        "group_id": col(lambda t: t.group_id),
        "group_size": col(lambda t: t.group_size),
        "terminal": col(lambda t: t.terminal),
        "truncated": col(lambda t: t.truncated),
        "turn_rewards": col(lambda t: [float(turn.reward) for turn in t.turns]),
        "turn_credit": col(turn_credit),
        "return_to_go": col(lambda t: returns_to_go(t, gamma)),
        "turn_spans": col(
            lambda t: [list(turn.span) if turn.span is not None else None for turn in t.turns]
        ),
        "num_tokens": [tk.length if tk is not None else 0 for tk in tokens],
        "tokenizer": [tk.tokenizer if tk is not None else None for tk in tokens],
    }
    arrays = []
    for field in schema:
        if field.name in columns:
            arrays.append(pa.array(columns[field.name], type=field.type))
    arrays.append(_list_column(pa, [tk.ids if tk else None for tk in tokens], "<i4", pa.int32()))
    arrays.append(
        _list_column(pa, [tk.logprobs if tk else None for tk in tokens], "<f4", pa.float32())
    )
    arrays.append(
        _list_column(pa, [tk.loss_mask if tk else None for tk in tokens], "|u1", pa.uint8())
    )
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def iter_arrow_batches(
    store: StorePath,
    stream: str = DEFAULT_STREAM,
    *,
    committed_only: bool = False,
    salvage: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    gamma: float = 1.0,
    **filters: Any,
) -> Iterator[Any]:
    """``pyarrow.RecordBatch`` es of at most ``batch_rows`` trajectories (see
    :func:`arrow_schema`); ``gamma`` discounts the ``return_to_go`` column."""
    source = _Source(store, stream, committed_only=committed_only, salvage=salvage, filters=filters)
    yield from _batches(source, batch_rows, gamma)


def _batches(source: _Source, batch_rows: int, gamma: float = 1.0) -> Iterator[Any]:
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    pa = _import_pyarrow()
    schema = arrow_schema()
    rows: list[tuple[int, Trajectory]] = []
    tokens = 0
    for seq, trajectory in source:
        rows.append((seq, trajectory))
        tokens += trajectory.tokens.length if trajectory.tokens is not None else 0
        if len(rows) >= batch_rows or tokens >= _MAX_BATCH_TOKENS:
            yield _record_batch(pa, schema, rows, gamma)
            rows, tokens = [], 0
    if rows:
        yield _record_batch(pa, schema, rows, gamma)


def to_arrow_table(
    store: StorePath,
    stream: str = DEFAULT_STREAM,
    *,
    committed_only: bool = False,
    salvage: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    gamma: float = 1.0,
    **filters: Any,
) -> Any:
    """The stream's (filtered) trajectories as one in-memory ``pyarrow.Table``."""
    pa = _import_pyarrow()
    batches = list(
        iter_arrow_batches(
            store,
            stream,
            committed_only=committed_only,
            salvage=salvage,
            batch_rows=batch_rows,
            gamma=gamma,
            **filters,
        )
    )
    return pa.Table.from_batches(batches, schema=arrow_schema())


def export_parquet(
    store: StorePath,
    out: str | os.PathLike[str],
    *,
    stream: str = DEFAULT_STREAM,
    committed_only: bool = False,
    salvage: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    compression: str = "zstd",
    gamma: float = 1.0,
    **filters: Any,
) -> ExportResult:
    """Write a Parquet file, one row group per ``batch_rows`` trajectories (``gamma``
    discounts the ``return_to_go`` column)."""
    _import_pyarrow()
    import pyarrow.parquet as pq

    schema = arrow_schema()
    source = _Source(store, stream, committed_only=committed_only, salvage=salvage, filters=filters)
    path = Path(out)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    batches = _batches(source, batch_rows, gamma)
    try:
        with pq.ParquetWriter(tmp, schema, compression=compression) as writer:
            for batch in batches:
                writer.write_batch(batch, row_group_size=batch.num_rows)
                count += batch.num_rows
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult(
        format="parquet",
        path=str(path),
        trajectories=count,
        bytes=path.stat().st_size,
        skipped_bytes=source.reader.skipped_bytes,
    )


def export(
    store: StorePath,
    out: str | os.PathLike[str] | IO[bytes],
    fmt: str,
    **options: Any,
) -> ExportResult:
    """Dispatch on ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "agenttraj":
        return export_agenttraj(store, out, **options)
    if fmt == "chat":
        return export_chat(store, out, **options)
    if fmt == "parquet":
        if not isinstance(out, str | os.PathLike):
            raise ValueError("Parquet export needs a file path, not a stream")
        return export_parquet(store, out, **options)
    raise ValueError(f"unknown export format {fmt!r} (choose from: {', '.join(FORMATS)})")
