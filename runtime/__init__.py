"""gymux: an async runtime for running LLM agents over interactive text environments.

The public API::

    from gymux import Runtime, RuntimeConfig, Workload

    async with Runtime(RuntimeConfig()) as rt:
        result = await rt.run(Workload(env="maze", tasks="test", policy="oracle"))

This package exports the runtime (``Runtime``, ``RunHandle``, ``RunResult``), its config
(``RuntimeConfig``, ``Workload``, ``GymuxConfig``, ``load_config``), the data it produces
(``Trajectory``, ``Turn``, ``FinishReason``) and exchanges with policies (``Message``,
``PolicyRequest``, ``PolicyResponse``), the events of :mod:`gymux.events`, the sink
interface of :mod:`gymux.sinks`, and the error tree of :mod:`gymux.errors` (``GymuxError``
and its subclasses). Environments, policies and stores have their own packages:
:mod:`gymux.env_plugins`, :mod:`gymux.policies`, :mod:`gymux.stores`; test helpers are in
:mod:`gymux.testing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ActionParseError",
    "ConfigError",
    "CorruptionError",
    "EnvError",
    "EpisodeError",
    "EpisodeFinished",
    "EpisodeStarted",
    "Event",
    "EventBus",
    "FinishReason",
    "GymuxConfig",
    "GymuxError",
    "JsonlSink",
    "Message",
    "PluginError",
    "PolicyError",
    "PolicyOptionsError",
    "PolicyRequest",
    "PolicyResponse",
    "RecordTooLargeError",
    "RunFinished",
    "RunHandle",
    "RunResult",
    "RunStarted",
    "Runtime",
    "RuntimeConfig",
    "Sink",
    "SinkError",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "Subscriber",
    "SuiteError",
    "Trajectory",
    "TransientEnvError",
    "Turn",
    "TurnFinished",
    "UnknownPolicyError",
    "Workload",
    "__version__",
    "load_config",
    "read_jsonl",
]

if TYPE_CHECKING:
    from gymux.config import GymuxConfig, RuntimeConfig, Workload, load_config
    from gymux.errors import (
        ActionParseError,
        ConfigError,
        CorruptionError,
        EnvError,
        GymuxError,
        PluginError,
        PolicyError,
        PolicyOptionsError,
        RecordTooLargeError,
        SinkError,
        StoreClosedError,
        StoreError,
        StoreLockedError,
        SuiteError,
        TransientEnvError,
        UnknownPolicyError,
    )
    from gymux.events import (
        EpisodeError,
        EpisodeFinished,
        EpisodeStarted,
        Event,
        EventBus,
        RunFinished,
        RunStarted,
        Subscriber,
        TurnFinished,
    )
    from gymux.messages import Message, PolicyRequest, PolicyResponse
    from gymux.runtime import RunHandle, RunResult, Runtime
    from gymux.sinks import JsonlSink, Sink, read_jsonl
    from gymux.trajectory import FinishReason, Trajectory, Turn

#: Where each exported name lives: its module is imported on first use.
_LAZY = {
    **dict.fromkeys(["GymuxConfig", "RuntimeConfig", "Workload", "load_config"], "gymux.config"),
    **dict.fromkeys(
        [
            "ActionParseError",
            "ConfigError",
            "CorruptionError",
            "EnvError",
            "GymuxError",
            "PluginError",
            "PolicyError",
            "PolicyOptionsError",
            "RecordTooLargeError",
            "SinkError",
            "StoreClosedError",
            "StoreError",
            "StoreLockedError",
            "SuiteError",
            "TransientEnvError",
            "UnknownPolicyError",
        ],
        "gymux.errors",
    ),
    **dict.fromkeys(
        [
            "EpisodeError",
            "EpisodeFinished",
            "EpisodeStarted",
            "Event",
            "EventBus",
            "RunFinished",
            "RunStarted",
            "Subscriber",
            "TurnFinished",
        ],
        "gymux.events",
    ),
    **dict.fromkeys(["Message", "PolicyRequest", "PolicyResponse"], "gymux.messages"),
    **dict.fromkeys(["RunHandle", "RunResult", "Runtime"], "gymux.runtime"),
    **dict.fromkeys(["JsonlSink", "Sink", "read_jsonl"], "gymux.sinks"),
    **dict.fromkeys(["FinishReason", "Trajectory", "Turn"], "gymux.trajectory"),
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import gymux` (and the env worker process) stays cheap.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gymux' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
