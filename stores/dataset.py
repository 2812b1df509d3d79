"""Trajectories for training jobs: sharded, filtered, shuffled, and exactly resumable.

::

    ds = TrajectoryDataset("runs/x/store", rank=r, world_size=w, shuffle_buffer=1024, seed=7,
                           success=True, min_policy_step=step - 4)
    for trajectory in ds:
        ...
        checkpoint["data"] = ds.state_dict()       # small, JSON-compatible, no payloads
    # later, in a fresh process:
    ds = TrajectoryDataset("runs/x/store", rank=r, world_size=w, shuffle_buffer=1024, seed=7,
                           success=True, min_policy_step=step - 4)
    ds.load_state_dict(checkpoint["data"])
    for trajectory in ds:                          # exactly what the first one had left
        ...

**Sharding.** Record ``seq`` belongs to shard ``seq % (world_size * num_workers)``; this
dataset reads shard ``rank * num_workers + worker_id``. So ``world_size`` ranks with
``num_workers`` loader workers each see a disjoint cover of the stream. Sharding is by
sequence number, before filters, so it never decodes anything; with filters, the shards
cover exactly the records the filters keep.

**Filters** are :func:`gymux.stores.codec.make_filter` keywords (``env``, ``success``,
``min_policy_step``, ``finish_reasons``, ``policy``, ``split``) and/or a ``where``
predicate; they look at the record's small metadata part only. A record's body is decoded
only when it is yielded (and never when ``decode=False``, which yields ``(seq, payload)``).

**Shuffle.** ``shuffle_buffer=B`` (``> 1``) keeps a buffer of ``B`` records; each new record
replaces a uniformly chosen buffered one, which is yielded; at the end the buffer is drained
in random order. The random source is SplitMix64 keyed by ``(seed, epoch, shard)`` and
indexed by a draw counter, so its whole state is one integer. :meth:`set_epoch` changes the
key for the next pass. With ``follow=True`` the buffer holds back up to ``B`` records until
newer ones arrive or the stream stays idle for ``idle_timeout_s``.

**Resume.** :meth:`state_dict` is the state of the latest iterator (or of the loaded state
not yet iterated): the reader position after the last record read, the sequence numbers in
the shuffle buffer (their payloads are re-read from the stream on resume), the draw counter,
whether the reader had reached the end of the stream, and how many items were yielded. It
follows torchdata's ``Stateful`` protocol (``state_dict`` / ``load_state_dict``; a pass's
state is set up eagerly in ``__iter__``, so it is right even before the first ``next``):
:class:`gymux.stores.torch_dataset.TorchTrajectoryDataset` works with
``StatefulDataLoader``. Resume is exact if the stream's records up to the saved position are
unchanged and the dataset has the same options. Records appended after the saved position
are read by the resumed pass too (so saving the state at the end of a pass and resuming it
later reads only what was appended in between).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from gymux.stores.codec import (
    MetaFilter,
    and_filters,
    decode_group,
    decode_meta,
    decode_trajectory,
    make_filter,
)
from gymux.stores.errors import StoreError
from gymux.stores.format import RecordType
from gymux.stores.reader import Position, StreamReader
from gymux.stores.store import DEFAULT_STREAM, Store, as_store
from gymux.trajectory import FinishReason

__all__ = ["STATE_VERSION", "TrajectoryDataset"]

#: Version of the :meth:`TrajectoryDataset.state_dict` layout.
STATE_VERSION = 1
_STATE_FORMAT = "gymux.TrajectoryDataset"

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    """SplitMix64's finaliser."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class _Rng:
    """Counter-based SplitMix64: draw ``i`` is ``mix(key + i * golden)``; the state is ``draws``."""

    __slots__ = ("draws", "key")

    def __init__(self, seed: int, epoch: int, shard: int, draws: int = 0) -> None:
        key = _mix64(seed & _M64)
        key = _mix64((key + (epoch & _M64) * _GOLDEN) & _M64)
        self.key = _mix64((key + (shard & _M64) * _GOLDEN) & _M64)
        self.draws = draws

    def below(self, n: int) -> int:
        """A uniform integer in ``[0, n)`` (multiply-shift; bias < n / 2**64)."""
        self.draws += 1
        return (_mix64((self.key + self.draws * _GOLDEN) & _M64) * n) >> 64


class _Cursor:
    """The mutable state of one pass. Updated *before* each yield, so that between two
    ``next`` calls it describes exactly what has been consumed."""

    __slots__ = ("buffer", "epoch", "exhausted", "groups", "partial", "position", "rng", "yielded")

    def __init__(self, epoch: int, rng: _Rng) -> None:
        self.epoch = epoch
        self.rng = rng
        #: The position after the last record read; ``None``: the stream's start.
        self.position: Position | None = None
        #: ``(seq, payload)``; payload ``None`` until re-read after a resume.
        self.buffer: list[tuple[int, bytes | None]] = []
        self.exhausted = False
        self.yielded = 0
        #: ``(seq, members yielded)`` of a ``GROUP`` record being yielded member by member.
        self.partial: tuple[int, int] | None = None
        #: The seqs of buffered ``GROUP`` records (rebuilt when the buffer is re-read).
        self.groups: set[int] = set()


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"state_dict: {name} must be an integer, got {value!r}")
    return value


class TrajectoryDataset:
    """An iterable over one stream's trajectory records for one shard. See the module doc.

    ``store``: a :class:`~gymux.stores.store.Store` or the path of one. Yields
    :class:`~gymux.trajectory.Trajectory` objects, or ``(seq, payload)`` with
    ``decode=False``. Records of other types than ``TRAJECTORY`` are skipped.
    ``committed_only``: stop at the writer's durable offset. ``follow``: tail the stream,
    until ``idle_timeout_s`` passes without a new record (``None``: forever). ``where``: an
    extra predicate on :class:`~gymux.stores.codec.TrajectoryMeta`, and-ed with the filter
    keywords (it must pickle if DataLoader workers are spawned rather than forked).
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        stream: str = DEFAULT_STREAM,
        *,
        rank: int = 0,
        world_size: int = 1,
        worker_id: int = 0,
        num_workers: int = 1,
        shuffle_buffer: int = 0,
        seed: int = 0,
        epoch: int = 0,
        decode: bool = True,
        committed_only: bool = False,
        follow: bool = False,
        idle_timeout_s: float | None = None,
        poll_s: float = 0.02,
        salvage: bool = False,
        where: MetaFilter | None = None,
        env: str | Sequence[str] | None = None,
        success: bool | None = None,
        min_policy_step: int | None = None,
        finish_reasons: Sequence[str | FinishReason] | None = None,
        policy: str | None = None,
        split: str | None = None,
    ) -> None:
        self.store = as_store(store)
        self.stream = stream
        self.stream_path = self.store.stream_path(stream)
        self.rank = rank
        self.world_size = world_size
        self.worker_id = worker_id
        self.num_workers = num_workers
        self._check_shard()
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = epoch
        self.decode = decode
        self.committed_only = committed_only
        self.follow = follow
        self.idle_timeout_s = idle_timeout_s
        self.poll_s = poll_s
        self.salvage = salvage
        self.where = where
        # Kept as plain values (the predicate is built per pass) so the dataset pickles into
        # DataLoader worker processes under any start method.
        self.filters: dict[str, Any] = {
            "env": env,
            "success": success,
            "min_policy_step": min_policy_step,
            "finish_reasons": finish_reasons,
            "policy": policy,
            "split": split,
        }
        make_filter(**self.filters)  # validate now (e.g. an unknown finish reason)
        self._cursor: _Cursor | None = None
        self._pending: dict[str, Any] | None = None

    # -- configuration --------------------------------------------------------------------

    @property
    def num_shards(self) -> int:
        return self.world_size * self.num_workers

    @property
    def shard(self) -> int:
        """This dataset's shard: records with ``seq % num_shards == shard``."""
        return self.rank * self.num_workers + self.worker_id

    def _check_shard(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size; got {self.rank}, {self.world_size}")
        if self.num_workers < 1 or not 0 <= self.worker_id < self.num_workers:
            raise ValueError(
                f"need 0 <= worker_id < num_workers; got {self.worker_id}, {self.num_workers}"
            )

    def set_epoch(self, epoch: int) -> None:
        """Re-key the shuffle for the next fresh pass (not the current or a loaded one)."""
        self.epoch = epoch

    def _predicate(self) -> MetaFilter | None:
        return and_filters(make_filter(**self.filters), self.where)

    def __repr__(self) -> str:
        return (
            f"TrajectoryDataset({str(self.store.path)!r}, {self.stream!r}, shard={self.shard}/"
            f"{self.num_shards}, shuffle_buffer={self.shuffle_buffer}, seed={self.seed}, "
            f"epoch={self.epoch})"
        )

    # -- iteration ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        """A new pass: resumes a loaded state if there is one, else starts at the beginning.
        The pass's state is set up here, not at the first ``next``, so :meth:`state_dict`
        right after ``iter()`` already describes it."""
        self._check_shard()
        if self._pending is not None:
            cursor = self._cursor_from_state(self._pending)
            self._pending = None
        else:
            cursor = _Cursor(self.epoch, _Rng(self.seed, self.epoch, self.shard))
        self._cursor = cursor
        return self._generate(cursor)

    def _generate(self, cur: _Cursor) -> Iterator[Any]:
        reader = StreamReader(self.stream_path, salvage=self.salvage)
        keep = self._predicate()
        size = self.shuffle_buffer if self.shuffle_buffer > 1 else 0
        buffer = cur.buffer
        if any(payload is None for _, payload in buffer):
            self._reread_buffer(reader, cur)
        num_shards, shard = self.num_shards, self.shard
        if cur.partial is not None:
            seq, done = cur.partial
            cur.groups.add(seq)
            yield from self._outputs(cur, seq, self._reread_one(reader, seq), keep, done)
        cur.exhausted = False
        for record in reader.records(
            cur.position,
            committed_only=self.committed_only,
            follow=self.follow,
            poll_s=self.poll_s,
            idle_timeout_s=self.idle_timeout_s,
        ):
            cur.position = record.next
            seq = record.seq
            if seq % num_shards != shard:
                continue
            payload = record.payload
            if record.type == RecordType.GROUP:
                members = decode_group(payload)
                if keep is not None and not any(keep(decode_meta(m)) for m in members):
                    continue
                cur.groups.add(seq)
            elif record.type != RecordType.TRAJECTORY or (
                keep is not None and not keep(decode_meta(payload))
            ):
                continue
            if not size:
                yield from self._outputs(cur, seq, payload, keep)
            elif len(buffer) < size:
                buffer.append((seq, payload))
            else:
                j = cur.rng.below(size)
                out_seq, out_payload = buffer[j]
                buffer[j] = (seq, payload)
                yield from self._outputs(cur, out_seq, out_payload, keep)
        cur.exhausted = True
        while buffer:
            j = cur.rng.below(len(buffer))
            out_seq, out_payload = buffer[j]
            last = buffer.pop()
            if j < len(buffer):
                buffer[j] = last
            yield from self._outputs(cur, out_seq, out_payload, keep)

    def _outputs(
        self,
        cur: _Cursor,
        seq: int,
        payload: bytes | None,
        keep: MetaFilter | None,
        skip: int = 0,
    ) -> Iterator[Any]:
        """Yield one record's items: the trajectory, or a group's kept members in order
        (``cur.partial`` tracks how far, so a state saved between two resumes exactly)."""
        assert payload is not None
        if seq not in cur.groups:
            cur.yielded += 1
            yield self._output(seq, payload)
            return
        members = [m for m in decode_group(payload) if keep is None or keep(decode_meta(m))]
        for k in range(skip, len(members)):
            cur.partial = (seq, k + 1) if k + 1 < len(members) else None
            cur.yielded += 1
            yield self._output(seq, members[k])
        cur.partial = None
        cur.groups.discard(seq)

    def _output(self, seq: int, payload: bytes) -> Any:
        if self.decode:
            return decode_trajectory(payload)
        return seq, payload

    def _reread_one(self, reader: StreamReader, seq: int) -> bytes:
        for record in reader.records(reader.seek(seq)):
            if record.seq == seq:
                return record.payload
            break
        raise StoreError(f"cannot resume: group record {seq} is no longer in {self.stream_path}")

    def _reread_buffer(self, reader: StreamReader, cur: _Cursor) -> None:
        """Fetch the payloads of a resumed shuffle buffer: one pass from the oldest one."""
        want = {seq for seq, payload in cur.buffer if payload is None}
        found: dict[int, bytes] = {}
        stop = cur.position.seq if cur.position is not None else None
        for record in reader.records(reader.seek(min(want))):
            if stop is not None and record.seq >= stop:
                break
            if record.seq in want:
                found[record.seq] = record.payload
                if record.type == RecordType.GROUP:
                    cur.groups.add(record.seq)
                if len(found) == len(want):
                    break
        missing = sorted(want - found.keys())
        if missing:
            raise StoreError(
                f"cannot resume: {len(missing)} buffered record(s) (first seq {missing[0]}) "
                f"are no longer in {self.stream_path}"
            )
        cur.buffer[:] = [
            (seq, payload if payload is not None else found[seq]) for seq, payload in cur.buffer
        ]

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The resumable state (JSON-compatible, without payloads): of the loaded state if one
        is waiting for ``iter()``, else of the latest pass, else of a pass not yet begun."""
        if self._pending is not None:
            return copy.deepcopy(self._pending)
        cur = self._cursor
        if cur is None:
            cur = _Cursor(self.epoch, _Rng(self.seed, self.epoch, self.shard))
        pos = cur.position
        return {
            "format": _STATE_FORMAT,
            "version": STATE_VERSION,
            "rank": self.rank,
            "world_size": self.world_size,
            "worker_id": self.worker_id,
            "num_workers": self.num_workers,
            "seed": self.seed,
            "shuffle_buffer": self.shuffle_buffer,
            "epoch": cur.epoch,
            "position": (
                None
                if pos is None
                else {"segment": pos.segment, "offset": pos.offset, "seq": pos.seq}
            ),
            "buffer": [seq for seq, _ in cur.buffer],
            "rng_draws": cur.rng.draws,
            "exhausted": cur.exhausted,
            "yielded": cur.yielded,
            "partial": None if cur.partial is None else list(cur.partial),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Make the next ``iter()`` resume from ``state`` (from :meth:`state_dict` of a
        dataset with the same store, stream and options)."""
        saved: dict[str, Any] = copy.deepcopy(dict(state))
        if saved.get("format") != _STATE_FORMAT:
            raise ValueError("state_dict: not a TrajectoryDataset state")
        if saved.get("version") != STATE_VERSION:
            raise ValueError(
                f"state_dict: version {saved.get('version')!r}, this gymux reads {STATE_VERSION}"
            )
        self._cursor_from_state(saved)  # validates
        self._pending = saved
        self.epoch = _check_int("epoch", saved["epoch"])

    def _cursor_from_state(self, state: Mapping[str, Any]) -> _Cursor:
        for key in ("rank", "world_size", "worker_id", "num_workers"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"state_dict is for rank {state.get('rank')}/{state.get('world_size')}, "
                    f"worker {state.get('worker_id')}/{state.get('num_workers')}; this dataset "
                    f"is rank {self.rank}/{self.world_size}, worker "
                    f"{self.worker_id}/{self.num_workers} (resume needs the same sharding)"
                )
        for key in ("seed", "shuffle_buffer"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"state_dict has {key}={state.get(key)!r}, this dataset "
                    f"{key}={getattr(self, key)!r} (resume needs the same value)"
                )
        epoch = _check_int("epoch", state.get("epoch"))
        cur = _Cursor(
            epoch,
            _Rng(self.seed, epoch, self.shard, _check_int("rng_draws", state.get("rng_draws"))),
        )
        pos = state.get("position")
        if pos is not None:
            if not isinstance(pos, Mapping):
                raise ValueError(f"state_dict: bad position {pos!r}")
            cur.position = Position(
                _check_int("position.segment", pos.get("segment")),
                _check_int("position.offset", pos.get("offset")),
                _check_int("position.seq", pos.get("seq")),
            )
        seqs = state.get("buffer")
        if not isinstance(seqs, list):
            raise ValueError(f"state_dict: bad buffer {seqs!r}")
        if len(seqs) > max(self.shuffle_buffer, 0) or (seqs and self.shuffle_buffer <= 1):
            raise ValueError(f"state_dict: {len(seqs)} buffered records exceed shuffle_buffer")
        for seq in seqs:
            _check_int("buffer seq", seq)
            if seq % self.num_shards != self.shard or (
                cur.position is not None and seq >= cur.position.seq
            ):
                raise ValueError(f"state_dict: buffered seq {seq} is not a record of this shard")
        if seqs and cur.position is None:
            raise ValueError("state_dict: buffered records without a reader position")
        cur.buffer = [(seq, None) for seq in seqs]
        exhausted = state.get("exhausted")
        if not isinstance(exhausted, bool):
            raise ValueError(f"state_dict: bad exhausted flag {exhausted!r}")
        cur.exhausted = exhausted
        cur.yielded = _check_int("yielded", state.get("yielded"))
        partial = state.get("partial")
        if partial is not None:
            if not isinstance(partial, list | tuple) or len(partial) != 2:
                raise ValueError(f"state_dict: bad partial group {partial!r}")
            cur.partial = (
                _check_int("partial seq", partial[0]),
                _check_int("partial members", partial[1]),
            )
        return cur
