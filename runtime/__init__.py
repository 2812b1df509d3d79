"""gymux: an async runtime for running LLM agents over interactive text environments.

The public API::

    from gymux import Runtime, RuntimeConfig, Workload

    async with Runtime(RuntimeConfig()) as rt:
        result = await rt.run(Workload(env="maze", tasks="test", policy="oracle"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "FinishReason",
    "GymuxConfig",
    "RunHandle",
    "RunResult",
    "Runtime",
    "RuntimeConfig",
    "Trajectory",
    "Turn",
    "Workload",
    "__version__",
    "load_config",
]

if TYPE_CHECKING:
    from gymux.config import GymuxConfig, RuntimeConfig, Workload, load_config
    from gymux.runtime import RunHandle, RunResult, Runtime
    from gymux.trajectory import FinishReason, Trajectory, Turn

_LAZY = {
    "GymuxConfig": "gymux.config",
    "RuntimeConfig": "gymux.config",
    "Workload": "gymux.config",
    "load_config": "gymux.config",
    "RunHandle": "gymux.runtime",
    "RunResult": "gymux.runtime",
    "Runtime": "gymux.runtime",
    "FinishReason": "gymux.trajectory",
    "Trajectory": "gymux.trajectory",
    "Turn": "gymux.trajectory",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import gymux` (and the env worker process) stays cheap.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gymux' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
