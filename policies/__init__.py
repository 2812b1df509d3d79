"""Policies: the protocol, batching support, scripted, random and oracle policies."""

from gymux.policies.base import SimplePolicy, react
from gymux.policies.protocol import (
    Message,
    Policy,
    PolicyError,
    PolicyRequest,
    PolicyResponse,
)

__all__ = [
    "Message",
    "Policy",
    "PolicyError",
    "PolicyRequest",
    "PolicyResponse",
    "SimplePolicy",
    "react",
]
