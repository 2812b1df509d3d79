"""Policies by name, for the CLI and config files.

* ``oracle``: the env's own oracle; ``random``: random example actions.
* ``openai``: :class:`gymux.policies.openai.OpenAICompatPolicy`; options
  ``base_url`` and ``model`` (required), ``api_key_env``, ``max_concurrency``,
  ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``logprobs``, ``request_timeout_s``,
  ``max_retries``.
* ``sglang``: ``gymux.policies.sglang.client.SGLangPolicy`` (imported only when asked for);
  options ``urls`` (required, a list of server URLs), ``tokenizer_path`` (the model path
  the tokenizer is loaded from; passed as ``tokenizer`` where the class takes that), and
  whatever else that class accepts (``max_new_tokens``, ...), passed through as keywords.

Options come from the CLI's model flags and from a config workload's ``policy_options``
table (:class:`gymux.config.Workload`). A missing or unknown option raises
:class:`PolicyOptionsError`; the CLI reports it in one line.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from gymux.env_plugins.protocol import EnvPlugin
from gymux.errors import PolicyOptionsError, UnknownPolicyError
from gymux.policies.protocol import Policy, PolicyError
from gymux.policies.scripted import RandomPolicy

__all__ = [
    "OPENAI_OPTIONS",
    "POLICY_NAMES",
    "PolicyOptionsError",
    "UnknownPolicyError",
    "make_policy",
]

POLICY_NAMES = ("oracle", "random", "openai", "sglang")

#: Options ``make_policy("openai", ...)`` accepts.
OPENAI_OPTIONS = frozenset(
    {
        "base_url",
        "model",
        "api_key_env",
        "max_concurrency",
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "logprobs",
        "request_timeout_s",
        "max_retries",
    }
)


def make_policy(
    name: str,
    plugin: EnvPlugin,
    *,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> Policy:
    """Build the policy ``name`` for ``plugin``'s env (``options`` for openai / sglang)."""
    opts = dict(options or {})
    if name == "oracle":
        if plugin.oracle is None:
            raise UnknownPolicyError(f"env {plugin.id!r} has no oracle policy")
        return plugin.oracle()
    if name == "random":
        return RandomPolicy(plugin.spec.example_actions, seed=seed)
    if name == "openai":
        return _make_openai(opts)
    if name == "sglang":
        return _make_sglang(opts)
    raise UnknownPolicyError(f"unknown policy {name!r} (choose from: {', '.join(POLICY_NAMES)})")


def _make_openai(opts: dict[str, Any]) -> Policy:
    from gymux.policies.openai import OpenAICompatPolicy

    unknown = sorted(set(opts) - OPENAI_OPTIONS)
    if unknown:
        raise PolicyOptionsError(
            f"policy 'openai': unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(OPENAI_OPTIONS))})"
        )
    missing = [key for key in ("base_url", "model") if not opts.get(key)]
    if missing:
        raise PolicyOptionsError(
            f"policy 'openai' needs {' and '.join(missing)} (--base-url URL --model NAME)"
        )
    try:
        return OpenAICompatPolicy(**opts)
    except (TypeError, ValueError) as exc:
        raise PolicyOptionsError(f"policy 'openai': {exc}") from None


def _make_sglang(opts: dict[str, Any]) -> Policy:
    urls = opts.get("urls")
    if isinstance(urls, str):
        opts["urls"] = urls = [urls]
    if not urls:
        raise PolicyOptionsError("policy 'sglang' needs at least one server URL (--server URL)")
    try:
        module = importlib.import_module("gymux.policies.sglang.client")
    except ImportError as exc:
        raise UnknownPolicyError(
            f"policy 'sglang' is not available: cannot import gymux.policies.sglang.client ({exc})"
        ) from None
    cls = getattr(module, "SGLangPolicy", None)
    if cls is None:
        raise UnknownPolicyError(
            "policy 'sglang' is not available: gymux.policies.sglang.client has no SGLangPolicy"
        )
    # The tokenizer's keyword: ``tokenizer_path`` or ``tokenizer``, whichever the class takes.
    for given, other in (("tokenizer_path", "tokenizer"), ("tokenizer", "tokenizer_path")):
        if given in opts and not _accepts(cls, given) and _accepts(cls, other):
            opts[other] = opts.pop(given)
    try:
        policy: Policy = cls(**opts)
    except (TypeError, ValueError, OSError, PolicyError) as exc:  # bad options, no tokenizer
        raise PolicyOptionsError(f"policy 'sglang': {exc}") from None
    return policy


def _accepts(cls: Any, keyword: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
