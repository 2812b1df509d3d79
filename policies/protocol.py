"""The policy protocol: given the conversation so far, return the model's text.

A policy sees one :class:`PolicyRequest` per episode turn. Policies that gain from batching
(an inference server) subclass :class:`gymux.policies.batching.BatchingPolicy`, which collects
the requests of all episodes waiting at the same moment and hands them over together.
"""

from __future__ import annotations

from types import TracebackType
from typing import Literal, Protocol, Self, runtime_checkable

import msgspec

__all__ = [
    "Message",
    "Policy",
    "PolicyError",
    "PolicyRequest",
    "PolicyResponse",
]

Role = Literal["system", "user", "assistant"]


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One chat message. ``loss`` marks messages a trainer should learn from."""

    role: Role
    content: str
    loss: bool = False


class PolicyError(Exception):
    """The policy could not answer. The episode ends with finish reason ``policy_error``."""


class PolicyRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One turn's question to a policy."""

    episode_id: str
    env_id: str
    task_id: int
    turn: int
    messages: list[Message]
    #: Actions the env accepts now, when it can enumerate them.
    admissible_actions: list[str] | None = None
    #: Sample index within the task (``0 .. samples-1``); handy for seeding.
    sample: int = 0


class PolicyResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A policy's answer.

    ``finish_reason`` is ``"stop"`` for a normal answer, ``"length"`` when generation hit its
    token limit, and ``"context_limit"`` when the prompt no longer fits the model's context
    (the episode then ends with finish reason ``context_limit``).
    """

    text: str
    finish_reason: Literal["stop", "length", "context_limit"] = "stop"
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@runtime_checkable
class Policy(Protocol):
    """What the runtime calls. ``name`` and ``version`` are recorded on every trajectory.

    Policies are async context managers: the runtime enters each policy once before the
    first request and exits it at shutdown (start and stop dispatchers, sessions, ...).

    Optional: ``finish_episode(episode_id) -> TokenData | None``. A policy that keeps an
    episode's exact token sequence (ids, logprobs, loss mask) returns it here; the runtime
    calls it when the episode ends (and before a retry, discarding the result) and stores
    it as ``Trajectory.tokens``. The policy should forget the episode then.
    """

    name: str
    version: str

    async def act(self, request: PolicyRequest) -> PolicyResponse: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...
