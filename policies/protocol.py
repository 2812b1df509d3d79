"""The policy protocol: given the conversation so far, return the model's text.

A policy sees one :class:`PolicyRequest` per episode turn. Policies that gain from batching
(an inference server) subclass :class:`gymux.policies.batching.BatchingPolicy`, which collects
the requests of all episodes waiting at the same moment and hands them over together.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

from gymux.errors import PolicyError
from gymux.messages import Message, PolicyRequest, PolicyResponse
from gymux.trajectory import TokenData

__all__ = [
    "Message",
    "Policy",
    "PolicyError",
    "PolicyRequest",
    "PolicyResponse",
    "UpdateMode",
    "WeightLoader",
    "WeightUpdatable",
]

#: How a weight update treats generations in flight: ``abort`` them (the runtime redoes
#: them under the new weights), ``wait`` for them, or let them ``continue`` (keep their
#: prefix and finish under the new weights, where the policy or server supports it).
UpdateMode = Literal["abort", "wait", "continue"]


@runtime_checkable
class Policy(Protocol):
    """What the runtime calls. ``name`` and ``version`` are recorded on every trajectory.

    Policies are async context managers: the runtime enters each policy once before the
    first request and exits it at shutdown (start and stop dispatchers, sessions, ...).

    ``step`` and ``finish_episode`` have defaults in the base classes
    (:class:`gymux.policies.base.BasePolicy` and its subclasses); a policy written without
    them (only ``name``, ``version``, ``act`` and the context manager) still runs: the
    runtime adapts it with :func:`gymux.policies.base.with_defaults`.
    """

    name: str
    version: str
    #: The training step of the policy's weights (recorded as ``Trajectory.policy_step``,
    #: for RL staleness filters), or ``None``.
    step: int | None

    async def act(self, request: PolicyRequest) -> PolicyResponse: ...

    def finish_episode(self, episode_id: str) -> TokenData | None:
        """The episode's exact token record (ids, logprobs, loss mask), or ``None``.

        The runtime calls it when the episode ends (and before a retry, discarding the
        result) and stores it as ``Trajectory.tokens``; the policy forgets the episode then.
        """
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


@runtime_checkable
class WeightUpdatable(Protocol):
    """A policy that loads new weights itself (the in-process ``hf`` policy).

    ``update_weights`` must not fail a generation in flight: it waits for a safe point
    (e.g. the end of a decode step), loads ``source`` (a checkpoint folder, a state dict),
    drops what the old weights computed (KV caches), and reports ``version`` as the
    ``weight_version`` of every later answer.
    """

    async def update_weights(self, source: Any, *, version: str) -> None: ...


@runtime_checkable
class WeightLoader(Protocol):
    """Loads new weights into the model servers behind a policy
    (:mod:`gymux.policies.weights`: SGLang, vLLM). ``Runtime.update_policy`` calls
    ``pause``, then ``load``, then ``resume`` (also when ``load`` failed)."""

    async def pause(self, mode: UpdateMode) -> None: ...

    async def load(self, source: str, *, version: str) -> None: ...

    async def resume(self) -> None: ...
