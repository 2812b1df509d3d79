"""The record of one episode: what was seen, said, done and earned, turn by turn."""

from __future__ import annotations

import enum

import msgspec

from gymux.policies.protocol import Message

__all__ = ["SCHEMA_VERSION", "FinishReason", "Trajectory", "Turn"]

#: Version of the :class:`Trajectory` layout. Bumped on any incompatible change.
SCHEMA_VERSION = 1


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

    @property
    def num_turns(self) -> int:
        return len(self.turns)
