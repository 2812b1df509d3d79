"""The ``oracle`` policy: an env plugin's gold solver, adapted to the policy protocol.

An env exposes its gold solver as a :class:`gymux.env_plugins.protocol.Oracle` (``version``
and ``async solve(request) -> str``); :class:`OraclePolicy` wraps one into a
:class:`~gymux.policies.protocol.Policy` named ``"oracle"``, and :func:`oracle_policy` builds
the policy for a plugin. Plugins written for older gymux whose ``oracle`` factory returns a
ready policy keep working: that policy is used as it is.
"""

from __future__ import annotations

from gymux.env_plugins.protocol import EnvPlugin, Oracle
from gymux.errors import UnknownPolicyError
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import BasePolicy, with_defaults
from gymux.policies.protocol import Policy

__all__ = ["OraclePolicy", "oracle_policy"]


class OraclePolicy(BasePolicy):
    """A policy answering with an :class:`Oracle`'s ``solve``; closing it closes the oracle."""

    name = "oracle"

    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle
        self.version = oracle.version

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        return PolicyResponse(text=await self.oracle.solve(request))

    async def aclose(self) -> None:
        close = getattr(self.oracle, "aclose", None)
        if close is not None:
            await close()


def oracle_policy(plugin: EnvPlugin) -> Policy:
    """The ``oracle`` policy of ``plugin``'s env; :class:`UnknownPolicyError` if it has none."""
    if plugin.oracle is None:
        raise UnknownPolicyError(f"env {plugin.id!r} has no oracle policy")
    made = plugin.oracle()
    if isinstance(made, Oracle):
        return OraclePolicy(made)
    return with_defaults(made)  # an older plugin's factory: already a policy
