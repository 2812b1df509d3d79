"""Base classes for policies, and the adapter for policies written without them.

:class:`BasePolicy` gives every optional member of :class:`~gymux.policies.protocol.Policy`
its default and the ``async with`` lifecycle of :class:`gymux._lifecycle.AsyncResource`;
:class:`SimplePolicy` is the one to subclass for a policy that needs no setup or teardown.
:func:`with_defaults` lets the runtime call a policy that implements only the required
members as if it had all of them.
"""

from __future__ import annotations

from typing import Any, cast

from gymux._lifecycle import AsyncResource
from gymux.policies.protocol import Policy, PolicyRequest, PolicyResponse
from gymux.react import format_react as react
from gymux.trajectory import TokenData

__all__ = ["BasePolicy", "SimplePolicy", "react", "with_defaults"]


class BasePolicy(AsyncResource):
    """Defaults of the optional policy members; subclasses implement :meth:`act`.

    Override :meth:`aopen` / :meth:`aclose` for set-up and tear-down.
    """

    name: str = "policy"
    version: str = "0"
    step: int | None = None

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        raise NotImplementedError

    def finish_episode(self, episode_id: str) -> TokenData | None:
        """Default: the policy keeps no token record."""
        return None


class SimplePolicy(BasePolicy):
    """Subclass and implement :meth:`act`; entering and exiting do nothing."""

    name = "simple"


def with_defaults(policy: Any) -> Policy:
    """``policy`` itself when it has every :class:`Policy` member, else a thin wrapper
    that adds the missing optional ones (``step = None``, ``finish_episode -> None``).

    Third-party policies that implement only ``name``, ``version``, ``act`` and the async
    context manager keep working through it; this is the one place that tolerates them.
    """
    if hasattr(policy, "finish_episode") and hasattr(policy, "step"):
        return cast(Policy, policy)
    return _WithDefaults(policy)


class _WithDefaults(AsyncResource):
    """Delegates to a policy lacking optional members; supplies their defaults."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name: str = inner.name
        self.version: str = inner.version
        self.step: int | None = getattr(inner, "step", None)
        self._finish = getattr(inner, "finish_episode", None)

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        response: PolicyResponse = await self._inner.act(request)
        return response

    def finish_episode(self, episode_id: str) -> TokenData | None:
        if self._finish is None:
            return None
        tokens: TokenData | None = self._finish(episode_id)
        return tokens

    async def aopen(self) -> None:
        await self._inner.__aenter__()

    async def aclose(self) -> None:
        await self._inner.__aexit__(None, None, None)
