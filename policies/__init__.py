"""Policies: the protocol, batching support, scripted, random and oracle policies, and the
model-server clients (OpenAI-compatible, SGLang; loaded on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gymux.policies.base import BasePolicy, SimplePolicy, react, with_defaults
from gymux.policies.batching import BatchingPolicy
from gymux.policies.oracle import OraclePolicy
from gymux.policies.prompting import PromptFormat
from gymux.policies.protocol import (
    Message,
    Policy,
    PolicyError,
    PolicyRequest,
    PolicyResponse,
)
from gymux.policies.registry import make_policy
from gymux.policies.scripted import RandomPolicy, ScriptedPolicy

if TYPE_CHECKING:
    from gymux.policies.openai import OpenAICompatPolicy
    from gymux.policies.sglang import SGLangPolicy

__all__ = [
    "BasePolicy",
    "BatchingPolicy",
    "Message",
    "OpenAICompatPolicy",
    "OraclePolicy",
    "Policy",
    "PolicyError",
    "PolicyRequest",
    "PolicyResponse",
    "PromptFormat",
    "RandomPolicy",
    "SGLangPolicy",
    "ScriptedPolicy",
    "SimplePolicy",
    "make_policy",
    "react",
    "with_defaults",
]

_LAZY = {
    "OpenAICompatPolicy": "gymux.policies.openai",
    "SGLangPolicy": "gymux.policies.sglang",
}


def __getattr__(name: str) -> Any:
    # The server clients load on first use (the SGLang one pulls in its tokenizer code).
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gymux.policies' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
