"""Policies by name, for the CLI and config files."""

from __future__ import annotations

from gymux.env_plugins.protocol import EnvPlugin
from gymux.policies.protocol import Policy
from gymux.policies.scripted import RandomPolicy

__all__ = ["POLICY_NAMES", "UnknownPolicyError", "make_policy"]

POLICY_NAMES = ("oracle", "random")


class UnknownPolicyError(ValueError):
    """No policy of that name, or it does not exist for that env."""


def make_policy(name: str, plugin: EnvPlugin, *, seed: int = 0) -> Policy:
    """Build the policy ``name`` for ``plugin``'s env."""
    if name == "oracle":
        if plugin.oracle is None:
            raise UnknownPolicyError(f"env {plugin.id!r} has no oracle policy")
        return plugin.oracle()
    if name == "random":
        return RandomPolicy(plugin.spec.example_actions, seed=seed)
    raise UnknownPolicyError(f"unknown policy {name!r} (choose from: {', '.join(POLICY_NAMES)})")
