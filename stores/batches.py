"""Training batches from a live store: padded arrays, GRPO advantages, exactly once.

::

    batches = TrainingBatches(store, "grpo", rank=rank, world_size=world, max_sequences=64,
                              max_staleness=2, current_version=lambda: trainer.step,
                              follow=True)
    for batch in batches:
        loss = step(batch.to_torch())
        batches.ack(batch, extra={"step": trainer.step})   # the cursor moves, durably

**Units.** A stream's ``GROUP`` records (see :func:`gymux.stores.codec.encode_group`) are
consumed whole; a plain ``TRAJECTORY`` record is a group of one. Group record ``seq``
belongs to rank ``seq % world_size``. Trajectories without token data cannot be trained on
and are skipped (counted in :attr:`TrainingBatches.skipped_no_tokens`).

**Only durable records** are read (``committed_only``): a record a crashed writer never
made durable can be cut by recovery and its sequence number reused.

**Exactly once.** Each rank has a named :class:`~gymux.stores.cursor.ConsumerCursor`. A
batch covers the rank's records ``[start_seq, end_seq)``; :meth:`TrainingBatches.ack`
commits ``end_seq`` durably, so after a crash or a kill the next run starts after the last
acknowledged batch: acknowledged groups are never yielded again, the others are yielded
again. Batches must be acknowledged in the order they were yielded.

**Staleness.** With ``max_staleness=S`` and ``current_version`` (the trainer's weights
version, an int), a group whose oldest sample version is ``< current_version() - S`` is
skipped and counted (checked again right before its batch is yielded). A sample's version
is its ``policy_step``, else the oldest integer ``Turn.weight_version`` /
``Turn.weight_versions`` entry; a sample of unknown version is never stale.

**Sizes.** ``max_sequences`` bounds the rows of a batch; ``max_tokens`` bounds its padded
size (rows x longest row). Groups are never split; a group larger than the bounds is a
batch alone.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import msgspec

from gymux.stores.codec import decode_group, decode_trajectory
from gymux.stores.cursor import ConsumerCursor
from gymux.stores.errors import StoreError
from gymux.stores.format import RecordType
from gymux.stores.store import DEFAULT_STREAM, StorePath, as_store
from gymux.trajectory import Trajectory

__all__ = [
    "TrainingBatch",
    "TrainingBatches",
    "grpo_advantages",
    "sample_version",
]


def sample_version(trajectory: Trajectory) -> int | None:
    """The weights version a sample is as old as: ``policy_step``, else the oldest integer
    weight version among its turns; ``None`` when unknown."""
    if trajectory.policy_step is not None:
        return trajectory.policy_step
    found: list[int] = []
    for turn in trajectory.turns:
        names = [turn.weight_version] if turn.weight_version is not None else []
        names += [v for _, v in turn.weight_versions or ()]
        for name in names:
            try:
                found.append(int(name))
            except ValueError:
                continue
    return min(found) if found else None


def grpo_advantages(
    rewards: Sequence[float], *, eps: float = 1e-6, scale: bool = True
) -> list[float]:
    """GRPO's group-normalised advantages: ``(r - mean) / (std + eps)`` (population std);
    ``scale=False`` leaves out the division (Dr. GRPO)."""
    n = len(rewards)
    if n == 0:
        return []
    mean = sum(rewards) / n
    if not scale:
        return [r - mean for r in rewards]
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    return [(r - mean) / (std + eps) for r in rewards]


class TrainingBatch(msgspec.Struct, kw_only=True):
    """One batch: NumPy arrays, rows right-padded to the longest.

    ``input_ids`` int64 [B, T]; ``attention_mask`` int64 [B, T] (1 on real tokens);
    ``loss_mask`` float32 [B, T] (1 on generated tokens); ``logprobs`` float32 [B, T] (the
    generation's logprobs, 0 where unknown); ``advantages`` / ``rewards`` float32 [B];
    ``weight_versions`` int64 [B] (:func:`sample_version`, -1 unknown); ``group_index``
    int64 [B] (which of ``group_ids`` the row belongs to).
    """

    input_ids: Any
    attention_mask: Any
    loss_mask: Any
    logprobs: Any
    advantages: Any
    rewards: Any
    weight_versions: Any
    group_index: Any
    group_ids: list[str]
    episode_ids: list[str]
    #: The rank's records this batch covers: ``[start_seq, end_seq)``.
    start_seq: int
    end_seq: int
    #: Groups of that range skipped as too stale.
    skipped_stale: int = 0

    @property
    def num_sequences(self) -> int:
        return len(self.episode_ids)

    def to_torch(self) -> dict[str, Any]:
        """The arrays as torch tensors (no copy). Needs torch."""
        import torch

        names = (
            "input_ids",
            "attention_mask",
            "loss_mask",
            "logprobs",
            "advantages",
            "rewards",
            "weight_versions",
            "group_index",
        )
        return {name: torch.from_numpy(getattr(self, name)) for name in names}


class _Group:
    __slots__ = ("group_id", "seq", "trajectories", "version")

    def __init__(self, seq: int, trajectories: list[Trajectory]) -> None:
        self.seq = seq
        self.trajectories = trajectories
        first = trajectories[0]
        self.group_id = first.group_id if first.group_id is not None else first.episode_id
        versions = [sample_version(t) for t in trajectories]
        known = [v for v in versions if v is not None]
        self.version = min(known) if known else None

    def rows(self) -> int:
        return len(self.trajectories)

    def longest(self) -> int:
        return max(t.tokens.length for t in self.trajectories if t.tokens is not None)


class TrainingBatches:
    """Iterate training batches of one rank from a stream; acknowledge each after the
    trainer's step with :meth:`ack`. See the module doc."""

    def __init__(
        self,
        store: StorePath,
        consumer: str,
        *,
        stream: str = DEFAULT_STREAM,
        rank: int = 0,
        world_size: int = 1,
        max_sequences: int | None = None,
        max_tokens: int | None = None,
        max_staleness: int | None = None,
        current_version: Callable[[], int] | None = None,
        follow: bool = False,
        idle_timeout_s: float | None = None,
        poll_s: float = 0.02,
        pad_id: int = 0,
        scale_advantages: bool = True,
        eps: float = 1e-6,
        stop: threading.Event | None = None,
    ) -> None:
        if max_sequences is None and max_tokens is None:
            raise ValueError("give max_sequences and/or max_tokens")
        for name, value in (("max_sequences", max_sequences), ("max_tokens", max_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if (max_staleness is None) != (current_version is None):
            raise ValueError("max_staleness and current_version go together")
        if max_staleness is not None and max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.store = as_store(store)
        self.stream = stream
        self.rank = rank
        self.world_size = world_size
        self.cursor = ConsumerCursor.load(
            self.store, consumer, stream=stream, rank=rank, world_size=world_size
        )
        self.max_sequences = max_sequences
        self.max_tokens = max_tokens
        self.max_staleness = max_staleness
        self.current_version = current_version
        self.follow = follow
        self.idle_timeout_s = idle_timeout_s
        self.poll_s = poll_s
        self.pad_id = pad_id
        self.scale_advantages = scale_advantages
        self.eps = eps
        self.stop = stop
        #: Counters of this process (the cursor keeps the acknowledged totals).
        self.skipped_stale = 0
        self.skipped_no_tokens = 0
        self._unacked: list[TrainingBatch] = []

    # -- reading --------------------------------------------------------------------------

    def _groups(self) -> Iterator[tuple[int, _Group | None]]:
        """``(seq, group)`` of this rank's records from the cursor on; ``group`` is
        ``None`` for a record with nothing to train on."""
        reader = self.store.reader(self.stream)
        start = reader.seek(self.cursor.next_seq)
        for record in reader.records(
            start,
            committed_only=True,
            follow=self.follow,
            poll_s=self.poll_s,
            idle_timeout_s=self.idle_timeout_s,
            stop=self.stop,
        ):
            seq = record.seq
            if seq % self.world_size != self.rank:
                continue
            if record.type == RecordType.GROUP:
                members = [decode_trajectory(m) for m in decode_group(record.payload)]
            elif record.type == RecordType.TRAJECTORY:
                members = [decode_trajectory(record.payload)]
            else:
                continue
            usable = [t for t in members if t.tokens is not None and t.tokens.length > 0]
            if len(usable) < len(members):
                self.skipped_no_tokens += len(members) - len(usable)
            yield seq, _Group(seq, usable) if usable else None

    def _stale(self, group: _Group) -> bool:
        if self.max_staleness is None or self.current_version is None or group.version is None:
            return False
        return group.version < self.current_version() - self.max_staleness

    def _fits(self, batch: list[_Group], group: _Group) -> bool:
        rows = sum(g.rows() for g in batch) + group.rows()
        if self.max_sequences is not None and rows > self.max_sequences:
            return False
        if self.max_tokens is not None:
            longest = max([g.longest() for g in batch] + [group.longest()])
            if rows * longest > self.max_tokens:
                return False
        return True

    def __iter__(self) -> Iterator[TrainingBatch]:
        """Batches from the cursor's position (or after the last batch yielded and not
        acknowledged, within one iteration)."""
        if self._unacked:
            raise StoreError("acknowledge or discard the yielded batches before iterating again")
        start = self.cursor.next_seq
        pending: list[_Group] = []
        stale: list[int] = []  # seqs of groups skipped as stale, not yet in a batch
        for seq, group in self._groups():
            if group is None:
                continue
            if self._stale(group):
                stale.append(seq)
                continue
            if pending and not self._fits(pending, group):
                batch = self._emit(start, pending, stale)
                if batch is not None:
                    yield batch
                    start = batch.end_seq
                    stale = [s for s in stale if s >= start]
                pending = []
            pending.append(group)
            full = self.max_sequences is not None and (
                sum(g.rows() for g in pending) >= self.max_sequences
            )
            if full:
                batch = self._emit(start, pending, stale)
                pending = []
                if batch is not None:
                    yield batch
                    start = batch.end_seq
                    stale = [s for s in stale if s >= start]
        if pending:
            batch = self._emit(start, pending, stale)
            if batch is not None:
                yield batch

    def _emit(self, start: int, groups: list[_Group], stale: list[int]) -> TrainingBatch | None:
        """The batch of ``groups`` (those that went stale meanwhile are dropped); ``None``
        if none is left (their seqs stay in ``stale`` for the next batch)."""
        end = groups[-1].seq + 1
        fresh: list[_Group] = []
        for group in groups:
            if self._stale(group):
                stale.append(group.seq)
            else:
                fresh.append(group)
        if not fresh:
            return None
        skipped = sum(1 for s in stale if s < end)
        self.skipped_stale += skipped
        batch = self._build(fresh, start, end, skipped)
        self._unacked.append(batch)
        return batch

    def _build(self, groups: list[_Group], start: int, end: int, skipped: int) -> TrainingBatch:
        import numpy as np

        rows = [t for g in groups for t in g.trajectories]
        width = max(t.tokens.length for t in rows if t.tokens is not None)
        shape = (len(rows), width)
        ids = np.full(shape, self.pad_id, dtype=np.int64)
        attention = np.zeros(shape, dtype=np.int64)
        loss = np.zeros(shape, dtype=np.float32)
        logprobs = np.zeros(shape, dtype=np.float32)
        advantages: list[float] = []
        group_index: list[int] = []
        for gi, group in enumerate(groups):
            advantages += grpo_advantages(
                [t.reward for t in group.trajectories],
                eps=self.eps,
                scale=self.scale_advantages,
            )
            group_index += [gi] * group.rows()
        for i, t in enumerate(rows):
            tokens = t.tokens
            assert tokens is not None
            n = tokens.length
            ids[i, :n] = np.frombuffer(tokens.ids, dtype="<i4")
            attention[i, :n] = 1
            loss[i, :n] = np.frombuffer(tokens.loss_mask, dtype=np.uint8)
            if tokens.logprobs is not None:
                logprobs[i, :n] = np.frombuffer(tokens.logprobs, dtype="<f4")
        versions = [sample_version(t) for t in rows]
        return TrainingBatch(
            input_ids=ids,
            attention_mask=attention,
            loss_mask=loss,
            logprobs=logprobs,
            advantages=np.asarray(advantages, dtype=np.float32),
            rewards=np.asarray([t.reward for t in rows], dtype=np.float32),
            weight_versions=np.asarray([-1 if v is None else v for v in versions], dtype=np.int64),
            group_index=np.asarray(group_index, dtype=np.int64),
            group_ids=[g.group_id for g in groups],
            episode_ids=[t.episode_id for t in rows],
            start_seq=start,
            end_seq=end,
            skipped_stale=skipped,
        )

    # -- acknowledging --------------------------------------------------------------------

    def ack(self, batch: TrainingBatch, *, extra: Mapping[str, Any] | None = None) -> None:
        """The trainer is done with ``batch`` (the oldest one not yet acknowledged): commit
        the cursor past it, durably, with ``extra`` (e.g. the trainer's step)."""
        if not self._unacked or self._unacked[0] is not batch:
            raise StoreError("acknowledge batches in the order they were yielded")
        self.cursor.commit(
            next_seq=batch.end_seq,
            consumed=len(batch.group_ids),
            skipped_stale=batch.skipped_stale,
            extra=extra,
        )
        self._unacked.pop(0)

    def discard_unacked(self) -> int:
        """Forget the batches yielded and not acknowledged (they are yielded again by the
        next iteration); how many there were."""
        n = len(self._unacked)
        self._unacked.clear()
        return n
