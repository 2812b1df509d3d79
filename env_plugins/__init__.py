"""Environment plugins: the protocol, the registry and the built-in environments."""

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
    StepResult,
    SuccessRule,
    SyncEnv,
    Task,
    TaskSplit,
    TransientEnvError,
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
    "StepResult",
    "SuccessRule",
    "SyncEnv",
    "Task",
    "TaskSplit",
    "TransientEnvError",
    "parse_any_action",
    "parse_json_action",
    "parse_react_action",
    "splits_from",
    "with_validation",
]
