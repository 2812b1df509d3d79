"""The record of one episode: what was seen, said, done and earned, turn by turn."""

from __future__ import annotations

import enum
import math
import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Any

import msgspec

from gymux.messages import Message

__all__ = [
    "SCHEMA_VERSION",
    "FinishReason",
    "TokenData",
    "Trajectory",
    "Turn",
    "pack_float32",
    "pack_int32",
    "pack_uint8",
]

#: Version of the :class:`Trajectory` layout. Readers of version N read version N-1.
#: 1: first release. 2: ``tokens``, ``policy_step``, ``Turn.policy_finish``.
#: 3: ``Turn.weight_version``. 4: ``Turn.span``/``queue_s``/``abort``/``weight_versions``,
#: ``Trajectory.terminal``/``truncated``/``group_id``/``group_size`` (RL groups).
SCHEMA_VERSION = 4


class FinishReason(enum.StrEnum):
    """Why an episode ended. Every episode ends with exactly one."""

    DONE = "done"
    MAX_TURNS = "max_turns"
    CONTEXT_LIMIT = "context_limit"
    ENV_ERROR = "env_error"
    POLICY_ERROR = "policy_error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class Turn(msgspec.Struct, kw_only=True, gc=False):
    """One policy call and the environment's answer to it.

    Not tracked by the garbage collector (``gc=False``): its fields are text, numbers and
    tuples of them, so it cannot be part of a reference cycle, and with thousands of
    episodes in flight their turns were a large share of what every young collection
    walked."""

    index: int
    #: The observation the policy answered (the env's text, or a corrective message).
    observation: str
    #: The model's raw output.
    raw_output: str
    #: The action parsed from ``raw_output``; ``None`` when parsing failed.
    action: str | None
    reward: float = 0.0
    done: bool = False
    #: The parser's message when ``action`` is ``None``.
    parse_error: str | None = None
    policy_s: float = 0.0
    env_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: The policy's finish reason for this output (``stop``, ``length``, ...).
    policy_finish: str = "stop"
    #: The model weights' version that produced ``raw_output``, when the server reports one.
    weight_version: str | None = None
    #: This turn's response tokens as ``[start, end)`` offsets into ``Trajectory.tokens.ids``
    #: (schema 4; ``None`` when there are no token data).
    span: tuple[int, int] | None = None
    #: Seconds spent waiting before the turn's policy call: for an env instance (first turn)
    #: or at a policy gate paused by a weight update (schema 4).
    queue_s: float = 0.0
    #: Why a generation was cut and redone (``"weight_update"``, ``"oversample"``, ...).
    abort: str | None = None
    #: Only when this turn's tokens came from several weight versions: ``(offset into
    #: tokens.ids where that version starts, version)``, ascending by offset.
    weight_versions: list[tuple[int, str]] | None = None


class TokenData(msgspec.Struct, frozen=True, kw_only=True):
    """The exact token sequence of an episode, packed little-endian.

    ``ids``: int32 per token; ``logprobs``: float32 per token (0 where unknown, e.g. prompt
    tokens); ``loss_mask``: uint8 per token, 1 on model-generated tokens. Use
    :func:`gymux.stores.codec.token_arrays` to view them as NumPy arrays without a copy.
    """

    ids: bytes
    loss_mask: bytes
    logprobs: bytes | None = None
    #: Name or path of the tokenizer the ids belong to.
    tokenizer: str = ""

    @property
    def length(self) -> int:
        return len(self.ids) // 4


class Trajectory(msgspec.Struct, kw_only=True):
    """A finished episode, as sinks and stores receive it."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    episode_id: str
    env_id: str
    env_version: str
    task_id: int
    split: str
    sample: int
    policy: str
    policy_version: str
    messages: list[Message] = msgspec.field(default_factory=list)
    turns: list[Turn] = msgspec.field(default_factory=list)
    #: Final reward (the reward of the last step).
    reward: float = 0.0
    success: bool = False
    finish_reason: FinishReason = FinishReason.DONE
    #: Human-readable cause for error, timeout and cancelled endings.
    error: str | None = None
    #: How many times the episode was started (``> 1`` after transient env errors).
    attempts: int = 1
    invalid_actions: int = 0
    started_at: float = 0.0
    wall_s: float = 0.0
    #: The policy's training step (weights version), for RL staleness filters.
    policy_step: int | None = None
    #: Token-exact record, where the policy returned token ids; ``None`` means text only.
    tokens: TokenData | None = None
    #: The environment ended the episode (schema 4; an RL "terminal" state).
    terminal: bool = False
    #: The episode was cut by a turn budget, the context length or a time limit (schema 4).
    truncated: bool = False
    #: The RL group (e.g. GRPO samples of one task) this episode belongs to, if any.
    group_id: str | None = None
    #: How many trajectories the group holds (1: not grouped).
    group_size: int = 1

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def timings(self) -> dict[str, float]:
        """Per-turn times summed over the episode: ``queue_s``, ``policy_s``, ``env_s``
        (for reports; 0 for records older than schema 4 where a field did not exist)."""
        return {
            "queue_s": math.fsum(t.queue_s for t in self.turns),
            "policy_s": math.fsum(t.policy_s for t in self.turns),
            "env_s": math.fsum(t.env_s for t in self.turns),
        }


# -- packing TokenData's arrays (little-endian, whatever the host) ----------------------


_LITTLE = sys.byteorder == "little"


def _packed(typecode: str, values: Sequence[Any]) -> bytes:
    # A typed array of the same type is copied as it is (on a little-endian host): ~1 µs
    # for 2,000 values, where struct.pack(*values) makes a Python object of each (~30 µs).
    # For a list, struct packs little-endian whatever the host, ~2x faster than building
    # an array first (measured: 32 vs 64 µs for 1,100 ids).
    if (
        _LITTLE
        and isinstance(values, array)
        and values.typecode == typecode
        and values.itemsize == 4
    ):
        return values.tobytes()
    return struct.pack(f"<{len(values)}{typecode}", *values)


def pack_int32(values: Sequence[int]) -> bytes:
    """Token ids as packed little-endian int32."""
    return _packed("i", values)


def pack_float32(values: Sequence[float]) -> bytes:
    """Logprobs as packed little-endian float32."""
    return _packed("f", values)


def pack_uint8(values: Sequence[int]) -> bytes:
    """A loss mask as bytes of 0/1."""
    return bytes(values)
