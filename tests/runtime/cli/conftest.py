"""Fixtures of the ``gymux.cli`` tests."""

from __future__ import annotations

import importlib.metadata

import pytest

from gymux.env_plugins.builtin.maze.plugin import plugin as maze_plugin
from gymux.env_plugins.registry import Registry


@pytest.fixture
def broken_registry() -> Registry:
    registry = Registry(entry_points_group=None)
    registry.add_entry_points(
        [
            importlib.metadata.EntryPoint(
                name="broken", value="no_such_module_xyz:plugin", group="gymux.envs"
            )
        ]
    )
    registry.register(maze_plugin)
    return registry
