"""Policies that need no model: random choice and scripted replies."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence

from gymux.policies.base import SimplePolicy, react
from gymux.policies.protocol import PolicyError, PolicyRequest, PolicyResponse

__all__ = ["RandomPolicy", "ScriptedPolicy"]


class RandomPolicy(SimplePolicy):
    """Picks uniformly among the env's admissible actions (or its example actions).

    Choices are a deterministic function of ``(seed, episode, turn)``, so a rerun with the
    same seed takes the same actions.
    """

    name = "random"
    version = "1"

    def __init__(self, actions: Sequence[str] = (), *, seed: int = 0) -> None:
        self._actions = list(actions)
        self._seed = seed

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        choices = request.admissible_actions or self._actions
        if not choices:
            raise PolicyError(f"random policy: env {request.env_id!r} offers no actions")
        key = f"{self._seed}:{request.env_id}:{request.task_id}:{request.sample}:{request.turn}"
        rng = random.Random(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest()))
        return PolicyResponse(text=react("I pick an action at random.", rng.choice(choices)))


class ScriptedPolicy(SimplePolicy):
    """Answers with ``reply(request)``; for tests, demos and benchmarks."""

    name = "scripted"
    version = "1"

    def __init__(self, reply: Callable[[PolicyRequest], str], *, name: str = "scripted") -> None:
        self._reply = reply
        self.name = name

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        return PolicyResponse(text=self._reply(request))
