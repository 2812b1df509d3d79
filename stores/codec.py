"""How a trajectory is laid out in a store record, and filters that skip the body.

A ``TRAJECTORY`` record's payload is::

    meta_length u32 | meta (msgpack TrajectoryMeta) | body (msgpack Trajectory)

The small ``meta`` part carries what filters need (env, success, reward, policy and its
step, ...), so a reader can skip records without decoding the body.

A ``GROUP`` record holds the trajectories of one RL group (all or none are ever visible,
since a record is written and recovered whole)::

    count u32 | count x (length u32 | TRAJECTORY payload)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from gymux.trajectory import (
    FinishReason,
    TokenData,
    Trajectory,
    pack_float32,
    pack_int32,
    pack_uint8,
)

__all__ = [
    "MetaFilter",
    "TrajectoryMeta",
    "and_filters",
    "decode_group",
    "decode_meta",
    "decode_trajectory",
    "encode_group",
    "encode_trajectory",
    "make_filter",
    "pack_float32",
    "pack_int32",
    "pack_uint8",
    "token_arrays",
]

_U32 = struct.Struct("<I")


class TrajectoryMeta(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What filters look at, decoded without the trajectory body."""

    schema_version: int
    run_id: str
    episode_id: str
    env_id: str
    task_id: int
    split: str
    sample: int
    policy: str
    policy_version: str
    policy_step: int | None
    reward: float
    success: bool
    finish_reason: str
    num_turns: int
    num_tokens: int
    #: Schema 4 (absent from older records: the defaults).
    group_id: str | None = None
    group_size: int = 1
    weight_version: str | None = None


_meta_encoder = msgspec.msgpack.Encoder()
_body_encoder = msgspec.msgpack.Encoder()
_meta_decoder = msgspec.msgpack.Decoder(TrajectoryMeta)
_body_decoder = msgspec.msgpack.Decoder(Trajectory)


def encode_trajectory(trajectory: Trajectory) -> bytes:
    meta = TrajectoryMeta(
        schema_version=trajectory.schema_version,
        run_id=trajectory.run_id,
        episode_id=trajectory.episode_id,
        env_id=trajectory.env_id,
        task_id=trajectory.task_id,
        split=trajectory.split,
        sample=trajectory.sample,
        policy=trajectory.policy,
        policy_version=trajectory.policy_version,
        policy_step=trajectory.policy_step,
        reward=trajectory.reward,
        success=trajectory.success,
        finish_reason=trajectory.finish_reason.value,
        num_turns=len(trajectory.turns),
        num_tokens=trajectory.tokens.length if trajectory.tokens else 0,
        group_id=trajectory.group_id,
        group_size=trajectory.group_size,
        weight_version=_last_weight_version(trajectory),
    )
    meta_bytes = _meta_encoder.encode(meta)
    return _U32.pack(len(meta_bytes)) + meta_bytes + _body_encoder.encode(trajectory)


def _last_weight_version(trajectory: Trajectory) -> str | None:
    for turn in reversed(trajectory.turns):
        if turn.weight_version is not None:
            return turn.weight_version
    return None


def encode_group(trajectories: Sequence[Trajectory]) -> bytes:
    """The payload of a ``GROUP`` record holding ``trajectories`` (at least one)."""
    if not trajectories:
        raise ValueError("a group holds at least one trajectory")
    parts = [_U32.pack(len(trajectories))]
    for trajectory in trajectories:
        member = encode_trajectory(trajectory)
        parts.append(_U32.pack(len(member)))
        parts.append(member)
    return b"".join(parts)


def decode_group(payload: bytes) -> list[bytes]:
    """The ``TRAJECTORY`` payloads held by a ``GROUP`` record's payload, in order."""
    view = memoryview(payload)
    (count,) = _U32.unpack_from(view, 0)
    offset = 4
    members: list[bytes] = []
    for _ in range(count):
        (n,) = _U32.unpack_from(view, offset)
        offset += 4
        if offset + n > len(view):
            raise ValueError("group record is shorter than its member lengths say")
        members.append(bytes(view[offset : offset + n]))
        offset += n
    if offset != len(view):
        raise ValueError("group record has bytes after its last member")
    return members


def decode_meta(payload: bytes) -> TrajectoryMeta:
    (n,) = _U32.unpack_from(payload, 0)
    meta: TrajectoryMeta = _meta_decoder.decode(payload[4 : 4 + n])
    return meta


def decode_trajectory(payload: bytes) -> Trajectory:
    (n,) = _U32.unpack_from(payload, 0)
    trajectory: Trajectory = _body_decoder.decode(memoryview(payload)[4 + n :])
    return trajectory


MetaFilter = Callable[[TrajectoryMeta], bool]


def make_filter(
    *,
    env: str | Sequence[str] | None = None,
    success: bool | None = None,
    min_policy_step: int | None = None,
    finish_reasons: Sequence[str | FinishReason] | None = None,
    policy: str | None = None,
    split: str | None = None,
) -> MetaFilter | None:
    """A predicate on :class:`TrajectoryMeta`; ``None`` when nothing is asked for.

    ``min_policy_step`` keeps trajectories whose ``policy_step`` is known and ``>=`` it (RL
    staleness control).
    """
    envs = {env} if isinstance(env, str) else set(env) if env is not None else None
    reasons = {str(FinishReason(r)) for r in finish_reasons} if finish_reasons else None
    if all(x is None for x in (envs, success, min_policy_step, reasons, policy, split)):
        return None

    def keep(meta: TrajectoryMeta) -> bool:
        if envs is not None and meta.env_id not in envs:
            return False
        if success is not None and meta.success != success:
            return False
        if min_policy_step is not None and (
            meta.policy_step is None or meta.policy_step < min_policy_step
        ):
            return False
        if reasons is not None and meta.finish_reason not in reasons:
            return False
        if policy is not None and meta.policy != policy:
            return False
        return split is None or meta.split == split

    return keep


def and_filters(first: MetaFilter | None, second: MetaFilter | None) -> MetaFilter | None:
    """A filter keeping what both keep (``first`` asked first); ``None`` if both are."""
    if first is None:
        return second
    if second is None:
        return first

    def keep(meta: TrajectoryMeta) -> bool:
        return first(meta) and second(meta)

    return keep


def token_arrays(tokens: TokenData) -> dict[str, Any]:
    """NumPy views (no copy) of a trajectory's token arrays. Needs NumPy."""
    import numpy as np

    out: dict[str, Any] = {
        "ids": np.frombuffer(tokens.ids, dtype="<i4"),
        "loss_mask": np.frombuffer(tokens.loss_mask, dtype=np.uint8),
    }
    if tokens.logprobs is not None:
        out["logprobs"] = np.frombuffer(tokens.logprobs, dtype="<f4")
    return out
