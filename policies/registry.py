"""Policies by name, for the CLI and config files.

* ``oracle``: the env's own oracle; ``random``: random example actions.
* ``openai``: :class:`gymux.policies.openai.OpenAICompatPolicy`; options: the fields of
  :class:`gymux.policies.options.OpenAIOptions` (``base_url`` and ``model`` required).
* ``sglang``: ``gymux.policies.sglang.client.SGLangPolicy`` (imported only when asked for);
  options: the fields of :class:`gymux.policies.options.SGLangOptions` (``urls`` required,
  a list of server URLs; ``tokenizer_path``, the model path the tokenizer is loaded from,
  also accepted as ``tokenizer``).
* ``vllm``: :class:`gymux.policies.vllm.VLLMPolicy` (token-exact over vLLM's
  ``/v1/completions``); options: the fields of :class:`gymux.policies.options.VLLMOptions`,
  given as for ``sglang``.
* ``hf``: :class:`gymux.policies.hf.HFPolicy` (a transformers model run in-process, extra
  ``hf``); options: the fields of :class:`gymux.policies.options.HFOptions` (``model``
  required: a model folder or ``smollm2``; ``seed`` defaults to the workload's).

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
from gymux.policies.options import (
    HFOptions,
    OpenAIOptions,
    SGLangOptions,
    VLLMOptions,
    field_names,
)
from gymux.policies.protocol import Policy, PolicyError
from gymux.policies.scripted import RandomPolicy

__all__ = [
    "FOLLOW_CONCURRENCY",
    "OPENAI_OPTIONS",
    "POLICY_NAMES",
    "SGLANG_OPTIONS",
    "PolicyOptionsError",
    "UnknownPolicyError",
    "follow_concurrency",
    "make_policy",
]

_O = TypeVar("_O", bound=msgspec.Struct)

POLICY_NAMES = ("oracle", "random", "openai", "sglang", "vllm", "hf")

#: Options ``make_policy("openai", ...)`` accepts.
OPENAI_OPTIONS = field_names(OpenAIOptions)
#: Options ``make_policy("sglang", ...)`` accepts.
SGLANG_OPTIONS = field_names(SGLangOptions)
#: Options ``make_policy("vllm", ...)`` accepts.
VLLM_OPTIONS = field_names(VLLMOptions)


def make_policy(
    name: str,
    plugin: EnvPlugin,
    *,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    concurrency: int | None = None,
) -> Policy:
    """Build the policy ``name`` for ``plugin``'s env (``options`` for openai / sglang / vllm).

    ``concurrency`` is the run's episode cap: the policy's own caps on requests in flight
    and on pooled connections (:data:`FOLLOW_CONCURRENCY`) rise to it unless ``options``
    set them, so that a policy default never caps a run below ``--concurrency``.
    """
    opts = follow_concurrency(name, dict(options or {}), concurrency)
    if name == "oracle":
        from gymux.policies.oracle import oracle_policy

        return oracle_policy(plugin)
    if name == "random":
        return RandomPolicy(plugin.spec.example_actions, seed=seed)
    if name == "openai":
        return _make_openai(opts)
    if name == "sglang":
        return _make_server_policy("sglang", opts, "gymux.policies.sglang.client", "SGLangPolicy")
    if name == "vllm":
        return _make_server_policy("vllm", opts, "gymux.policies.vllm", "VLLMPolicy")
    if name == "hf":
        return _make_hf(opts, seed)
    raise UnknownPolicyError(f"unknown policy {name!r} (choose from: {', '.join(POLICY_NAMES)})")


#: Tokens in flight a server's budget allows per concurrent episode, when the budget follows
#: the run's episode cap (a 2k-token prompt and a few turns' growth, with room to spare).
TOKENS_PER_EPISODE = 8_192

_SERVER_CAPS = {
    "max_requests_per_server": 1,
    "connections_per_server": 1,
    "max_tokens_per_server": TOKENS_PER_EPISODE,
}
#: The options of each model policy that cap how many of a run's episodes it serves at once,
#: with how much of each cap one concurrent episode needs.
FOLLOW_CONCURRENCY: dict[str, dict[str, int]] = {
    "openai": {"max_concurrency": 1},
    "sglang": _SERVER_CAPS,
    "vllm": _SERVER_CAPS,
}
_OPTIONS_TYPES: dict[str, type[msgspec.Struct]] = {
    "openai": OpenAIOptions,
    "sglang": SGLangOptions,
    "vllm": VLLMOptions,
}


def follow_concurrency(name: str, opts: dict[str, Any], concurrency: int | None) -> dict[str, Any]:
    """``opts`` where each cap of :data:`FOLLOW_CONCURRENCY` not set is
    ``max(its default, concurrency x what one episode needs)``; set ones are kept as they
    are, and so is 0 (no limit)."""
    if concurrency is None or name not in FOLLOW_CONCURRENCY:
        return opts
    options_type = _OPTIONS_TYPES[name]
    defaults = dict(
        zip(
            options_type.__struct_fields__[-len(options_type.__struct_defaults__) :],
            options_type.__struct_defaults__,
            strict=True,
        )
    )
    for key, per_episode in FOLLOW_CONCURRENCY[name].items():
        default = defaults[key]
        if key not in opts and isinstance(default, int):
            opts[key] = default if default == 0 else max(default, concurrency * per_episode)
    return opts


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


_SERVER_OPTIONS: dict[str, type[msgspec.Struct]] = {"sglang": SGLangOptions, "vllm": VLLMOptions}


def _make_server_policy(name: str, opts: dict[str, Any], module_name: str, cls_name: str) -> Policy:
    """A token-exact server policy (``sglang``, ``vllm``): server URLs and a tokenizer."""
    urls = opts.get("urls")
    if isinstance(urls, str):
        opts["urls"] = urls = [urls]
    if not urls:
        raise PolicyOptionsError(f"policy {name!r} needs at least one server URL (--server URL)")
    if "tokenizer" in opts and "tokenizer_path" not in opts:
        opts["tokenizer_path"] = opts.pop("tokenizer")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownPolicyError(
            f"policy {name!r} is not available: cannot import {module_name} ({exc})"
        ) from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise UnknownPolicyError(
            f"policy {name!r} is not available: {module_name} has no {cls_name}"
        )
    options = _options(name, opts, _SERVER_OPTIONS[name])
    try:
        policy: Policy = cls(options=options)
    except (OSError, PolicyError, PolicyOptionsError) as exc:  # no tokenizer, bad options
        raise PolicyOptionsError(f"policy {name!r}: {exc}") from None
    return policy


def _make_hf(opts: dict[str, Any], seed: int) -> Policy:
    """The in-process transformers policy (``gymux.policies.hf``): ``model`` required."""
    _check_known("hf", opts, HFOptions)
    if not opts.get("model"):
        raise PolicyOptionsError("policy 'hf' needs a model (--model DIR or --model smollm2)")
    opts.setdefault("seed", seed)
    options = _options("hf", opts, HFOptions)
    from gymux.policies.hf.policy import HFPolicy

    try:
        return HFPolicy(options=options)
    except PolicyOptionsError:
        raise
    except (OSError, PolicyError) as exc:
        raise PolicyOptionsError(f"policy 'hf': {exc}") from None
