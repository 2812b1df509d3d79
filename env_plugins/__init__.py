"""Environment plugins: the protocol, the registry and the built-in environments.

``check_plugin`` (:mod:`gymux.env_plugins.conformance`) and ``register``
(:mod:`gymux.env_plugins.registry`) are imported on first use, so that a worker process
(:mod:`gymux.env_plugins._worker`) importing this package stays light.
"""

from typing import TYPE_CHECKING, Any

from gymux.env_plugins.parsing import (
    parse_any_action,
    parse_json_action,
    parse_react_action,
    with_validation,
)
from gymux.env_plugins.protocol import (
    ActionParseError,
    Env,
    EnvError,
    EnvPlugin,
    EnvSpec,
    Execution,
    Observation,
    Oracle,
    StepResult,
    SuccessRule,
    SyncEnv,
    Task,
    TaskSplit,
    TransientEnvError,
    assistant_turn,
    splits_from,
)

__all__ = [
    "ActionParseError",
    "Env",
    "EnvError",
    "EnvPlugin",
    "EnvSpec",
    "Execution",
    "Observation",
    "Oracle",
    "StepResult",
    "SuccessRule",
    "SyncEnv",
    "Task",
    "TaskSplit",
    "TransientEnvError",
    "assistant_turn",
    "check_plugin",
    "parse_any_action",
    "parse_json_action",
    "parse_react_action",
    "register",
    "splits_from",
    "with_validation",
]

if TYPE_CHECKING:
    from gymux.env_plugins.conformance import check_plugin
    from gymux.env_plugins.registry import register

_LAZY = {
    "check_plugin": "gymux.env_plugins.conformance",
    "register": "gymux.env_plugins.registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
