"""The AgentGym bridge, both ways: a client plugin for AgentGym's environment servers
(:mod:`.client`, speaking the families in :mod:`.dialects`), and the server behind
``gymux serve-env`` that serves gymux environments to AgentGym's own clients (:mod:`.server`).
"""

from gymux.env_plugins.agentgym.client import *  # noqa: F403
from gymux.env_plugins.agentgym.client import __all__ as __all__
