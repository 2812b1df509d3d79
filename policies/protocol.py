"""The policy protocol: given the conversation so far, return the model's text.

A policy sees one :class:`PolicyRequest` per episode turn. Policies that gain from batching
(an inference server) subclass :class:`gymux.policies.batching.BatchingPolicy`, which collects
the requests of all episodes waiting at the same moment and hands them over together.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from gymux.errors import PolicyError
from gymux.messages import Message, PolicyRequest, PolicyResponse

__all__ = [
    "Message",
    "Policy",
    "PolicyError",
    "PolicyRequest",
    "PolicyResponse",
]


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
