"""Flags shared by ``gymux run`` and ``gymux eval`` (gymux.cli.flags): runtime overrides and
model-policy options."""

from __future__ import annotations

import argparse

import pytest

from gymux.cli import flags
from gymux.cli.common import Parser, UsageError
from gymux.config import RuntimeConfig
from gymux.errors import UnknownPolicyError


def _args(*argv: str) -> argparse.Namespace:
    parser = Parser(prog="x")
    flags.add_policy_flag(parser)
    flags.add_runtime_flags(parser)
    flags.add_model_flags(parser)
    return parser.parse_args(list(argv))


def test_runtime_config_overrides_only_given_flags() -> None:
    base = RuntimeConfig(max_concurrent_episodes=7)
    assert flags.runtime_config(_args(), base) is base
    got = flags.runtime_config(_args("--step-timeout", "2.5", "--log-level", "debug"), base)
    assert (got.max_concurrent_episodes, got.step_timeout_s, got.log_level) == (7, 2.5, "debug")
    assert flags.runtime_config(_args("--concurrency", "3"), base).max_concurrent_episodes == 3


def test_openai_options() -> None:
    args = _args("--base-url", "http://h/v1", "--model", "m", "--max-tokens", "9")
    assert flags.policy_options(args, "openai") == {
        "base_url": "http://h/v1",
        "model": "m",
        "max_tokens": 9,
    }
    # The workload's own options stay unless a flag overrides them.
    base = {"base_url": "http://file", "model": "f", "temperature": 0.5}
    got = flags.policy_options(_args("--model", "m", "--temperature", "0"), "openai", base)
    assert got == {"base_url": "http://file", "model": "m", "temperature": 0.0}
    with pytest.raises(UsageError, match="--policy openai needs --base-url URL and --model NAME"):
        flags.policy_options(_args(), "openai")


def test_sglang_options() -> None:
    args = _args("--server", "http://a", "--server", "http://b", "--tokenizer", "/m")
    got = flags.policy_options(args, "sglang", {"tokenizer": "old", "max_new_tokens": 4})
    assert got == {"urls": ["http://a", "http://b"], "tokenizer_path": "/m", "max_new_tokens": 4}
    assert flags.policy_options(_args("--max-tokens", "8"), "sglang", got)["max_new_tokens"] == 8
    with pytest.raises(UsageError, match="needs --server URL"):
        flags.policy_options(_args("--tokenizer", "/m"), "sglang")
    with pytest.raises(UsageError, match="needs --tokenizer PATH"):
        flags.policy_options(_args("--server", "http://a"), "sglang")


def test_other_policies_take_no_model_options() -> None:
    assert flags.policy_options(_args("--model", "ignored"), "oracle") == {}
    flags.check_policy_name("oracle")
    with pytest.raises(UnknownPolicyError, match="unknown policy 'gpt' \\(choose from: "):
        flags.check_policy_name("gpt")


def test_concurrency_raises_builtin_caps_but_not_a_bridges() -> None:
    """`--concurrency N` lifts each env's instance cap to N, except an AgentGym bridge's:
    its cap is what its server holds (sqlgym's server hands out 8 instances)."""
    import argparse

    from gymux.cli.flags import follow_instance_caps
    from gymux.config import RuntimeConfig
    from gymux.env_plugins.agentgym.client import agentgym_plugin
    from gymux.env_plugins.registry import default_registry

    registry = default_registry()
    bridge = agentgym_plugin("sqlgym", "http://127.0.0.1:9", tasks=range(4))
    registry.register(bridge, replace=True)
    bridge_id = bridge.spec.id
    assert bridge_id.startswith("agentgym/")
    config = follow_instance_caps(
        argparse.Namespace(concurrency=32), RuntimeConfig(), ["maze", bridge_id], registry
    )
    assert config.env_instances.get("maze", registry.get("maze").max_instances) >= 32
    assert bridge_id not in config.env_instances
    assert registry.get(bridge_id).max_instances <= 8
