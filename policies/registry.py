"""Policies by name, for the CLI and config files.

* ``oracle``: the env's own oracle; ``random``: random example actions.
* ``openai``: :class:`gymux.policies.openai.OpenAICompatPolicy`; options: the fields of
  :class:`gymux.policies.options.OpenAIOptions` (``base_url`` and ``model`` required).
* ``sglang``: ``gymux.policies.sglang.client.SGLangPolicy`` (imported only when asked for);
  options: the fields of :class:`gymux.policies.options.SGLangOptions` (``urls`` required,
  a list of server URLs; ``tokenizer_path``, the model path the tokenizer is loaded from,
  also accepted as ``tokenizer``).

Options come from the CLI's model flags and from a config workload's ``policy_options``
table (:class:`gymux.config.Workload`) and are converted into the policy's ``Options``
Struct with ``msgspec.convert``. A missing, unknown or invalid option raises
:class:`PolicyOptionsError` naming it; the CLI reports it in one line.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from gymux.env_plugins.protocol import EnvPlugin
from gymux.errors import PolicyOptionsError, UnknownPolicyError
from gymux.policies.options import OpenAIOptions, SGLangOptions, field_names
from gymux.policies.protocol import Policy, PolicyError
from gymux.policies.scripted import RandomPolicy

__all__ = [
    "OPENAI_OPTIONS",
    "POLICY_NAMES",
    "SGLANG_OPTIONS",
    "PolicyOptionsError",
    "UnknownPolicyError",
    "make_policy",
]

_O = TypeVar("_O", bound=msgspec.Struct)

POLICY_NAMES = ("oracle", "random", "openai", "sglang")

#: Options ``make_policy("openai", ...)`` accepts.
OPENAI_OPTIONS = field_names(OpenAIOptions)
#: Options ``make_policy("sglang", ...)`` accepts.
SGLANG_OPTIONS = field_names(SGLangOptions)


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
        from gymux.policies.oracle import oracle_policy

        return oracle_policy(plugin)
    if name == "random":
        return RandomPolicy(plugin.spec.example_actions, seed=seed)
    if name == "openai":
        return _make_openai(opts)
    if name == "sglang":
        return _make_sglang(opts)
    raise UnknownPolicyError(f"unknown policy {name!r} (choose from: {', '.join(POLICY_NAMES)})")


def _check_known(policy: str, opts: Mapping[str, Any], options_type: type[msgspec.Struct]) -> None:
    known = field_names(options_type)
    unknown = sorted(set(opts) - known)
    if unknown:
        raise PolicyOptionsError(
            f"policy {policy!r}: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )


def _options(policy: str, opts: Mapping[str, Any], options_type: type[_O]) -> _O:
    """``opts`` as ``options_type``: unknown names listed, invalid values named."""
    _check_known(policy, opts, options_type)
    try:
        return msgspec.convert(opts, options_type)
    except msgspec.ValidationError as exc:
        raise PolicyOptionsError(f"policy {policy!r}: invalid option: {exc}") from None


def _make_openai(opts: dict[str, Any]) -> Policy:
    from gymux.policies.openai import OpenAICompatPolicy

    _check_known("openai", opts, OpenAIOptions)
    missing = [key for key in ("base_url", "model") if not opts.get(key)]
    if missing:
        raise PolicyOptionsError(
            f"policy 'openai' needs {' and '.join(missing)} (--base-url URL --model NAME)"
        )
    options = _options("openai", opts, OpenAIOptions)
    try:
        return OpenAICompatPolicy(options=options)
    except PolicyOptionsError as exc:
        raise PolicyOptionsError(f"policy 'openai': {exc}") from None


def _make_sglang(opts: dict[str, Any]) -> Policy:
    urls = opts.get("urls")
    if isinstance(urls, str):
        opts["urls"] = urls = [urls]
    if not urls:
        raise PolicyOptionsError("policy 'sglang' needs at least one server URL (--server URL)")
    if "tokenizer" in opts and "tokenizer_path" not in opts:
        opts["tokenizer_path"] = opts.pop("tokenizer")
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
    options = _options("sglang", opts, SGLangOptions)
    try:
        policy: Policy = cls(options=options)
    except (OSError, PolicyError, PolicyOptionsError) as exc:  # no tokenizer, bad options
        raise PolicyOptionsError(f"policy 'sglang': {exc}") from None
    return policy
