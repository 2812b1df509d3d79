"""A base class for policies that need no setup or teardown."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from gymux.policies.protocol import PolicyRequest, PolicyResponse

__all__ = ["SimplePolicy", "react"]


def react(thought: str, action: str) -> str:
    """Format an answer in AgentGym's ReAct style."""
    return f"Thought:\n{thought}\n\nAction:\n{action}"


class SimplePolicy:
    """Subclass and implement :meth:`act`; entering and exiting do nothing."""

    name: str = "simple"
    version: str = "0"

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
