"""The record of one episode: what was seen, said, done and earned, turn by turn."""

from __future__ import annotations

import enum
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
#: 3: ``Turn.weight_version``.
SCHEMA_VERSION = 3


class FinishReason(enum.StrEnum):
    """Why an episode ended. Every episode ends with exactly one."""

    DONE = "done"
    MAX_TURNS = "max_turns"
    CONTEXT_LIMIT = "context_limit"
    ENV_ERROR = "env_error"
    POLICY_ERROR = "policy_error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class Turn(msgspec.Struct, kw_only=True):
    """One policy call and the environment's answer to it."""

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

    @property
    def num_turns(self) -> int:
        return len(self.turns)


# -- packing TokenData's arrays (little-endian, whatever the host) ----------------------


def _packed(typecode: str, values: Sequence[Any]) -> bytes:
    arr = array(typecode, values)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def pack_int32(values: Sequence[int]) -> bytes:
    """Token ids as packed little-endian int32."""
    return _packed("i", values)


def pack_float32(values: Sequence[float]) -> bytes:
    """Logprobs as packed little-endian float32."""
    return _packed("f", values)


def pack_uint8(values: Sequence[int]) -> bytes:
    """A loss mask as bytes of 0/1."""
    return bytes(values)
