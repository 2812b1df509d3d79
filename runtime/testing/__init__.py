"""Tools for plugin authors and embedders to use in their own tests.

* :func:`check_plugin` (from :mod:`gymux.env_plugins.conformance`): drives an env plugin
  through the runtime's adapters and reports every protocol problem it finds.
* :func:`soak` (from :mod:`gymux.testing.soak`): many sequential episodes of one env with
  resource readings between them, to find leaks.
* :class:`ScriptedPolicy` and :class:`RandomPolicy` (from :mod:`gymux.policies.scripted`):
  policies that need no model.

::

    import anyio
    from gymux.testing import check_plugin

    report = anyio.run(check_plugin, plugin)
    assert report.ok, report.problems
"""

from __future__ import annotations

from gymux.env_plugins.conformance import ConformanceReport, check_plugin
from gymux.policies.scripted import RandomPolicy, ScriptedPolicy
from gymux.testing.soak import ResourceReading, SoakReport, read_resources, soak

__all__ = [
    "ConformanceReport",
    "RandomPolicy",
    "ResourceReading",
    "ScriptedPolicy",
    "SoakReport",
    "check_plugin",
    "read_resources",
    "soak",
]
