"""The plugin-authoring guide's code must work as written."""

from __future__ import annotations

import re
from pathlib import Path

import anyio

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.conformance import check_plugin
from gymux.env_plugins.registry import Registry
from gymux.runtime import Runtime

DOCS = Path(__file__).resolve().parents[2] / "docs"


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.DOTALL)


def test_plugin_authoring_example_builds_a_working_plugin():
    namespace: dict[str, object] = {}
    for block in python_blocks("plugin-authoring.md"):
        if "coinflip_gymux" in block or "register(plugin)" in block:
            continue  # packaging-only snippets
        exec(compile(block, "plugin-authoring.md", "exec"), namespace)
    plugin = namespace["plugin"]
    report = anyio.run(check_plugin, plugin)
    assert report.ok, report.problems

    async def main():
        reg = Registry(entry_points_group=None)
        reg.register(plugin)
        async with Runtime(RuntimeConfig(), registry=reg) as rt:
            return await rt.run(Workload(env="coinflip", tasks="test", policy="oracle"))

    result = anyio.run(main)
    assert result.summary.episodes == 100
    assert result.summary.success_rate == 1.0
