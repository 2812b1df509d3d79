"""Environment plugins: the protocol, the registry and the built-in environments.

``check_plugin`` (:mod:`gymux.env_plugins.conformance`) and ``register``
(:mod:`gymux.env_plugins.registry`) are imported on first use, so that a worker process
(:mod:`gymux.env_plugins._worker`) importing this package stays light.
"""

from typing import TYPE_CHECKING, Any

from gymux.env_plugins import parsing, protocol
from gymux.env_plugins.parsing import *  # noqa: F403 - re-exported: parsing.__all__
from gymux.env_plugins.protocol import *  # noqa: F403 - re-exported: protocol.__all__

#: The protocol and parsing modules' public names, and the two loaded on first use.
__all__ = [*protocol.__all__, *parsing.__all__, "check_plugin", "register"]

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
