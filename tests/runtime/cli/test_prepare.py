"""``gymux prepare`` (gymux.cli.prepare)."""

from __future__ import annotations

import msgspec
import pytest

from gymux.cli.main import main
from gymux.env_plugins import EnvPlugin
from gymux.env_plugins.builtin.maze.plugin import MAZE_SPEC
from gymux.env_plugins.builtin.maze.plugin import plugin as maze_plugin
from gymux.env_plugins.registry import Registry


def test_prepare_generates_ahead_and_says_when_there_is_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    maze = maze_plugin
    seen: list[list[int]] = []
    reg = Registry(entry_points_group=None)
    reg.register(maze)
    spec = msgspec.structs.replace(MAZE_SPEC, id="prep")
    reg.register(EnvPlugin(spec, maze.factory, prepare=seen.append))
    assert main(["prepare", "maze"], registry=reg) == 0
    assert "nothing to prepare" in capsys.readouterr().out
    assert main(["prepare", "prep", "--tasks", "test"], registry=reg) == 0
    assert seen == [maze.spec.split("test").ids]
    assert main(["prepare", "prep", "--tasks", "3-5"], registry=reg) == 0
    assert seen[-1] == [3, 4, 5]
    assert "prep: prepared 3 tasks" in capsys.readouterr().out
    assert main(["prepare", "prep", "--tasks", "nosuch"], registry=reg) == 2
    assert main(["prepare", "missing"], registry=reg) == 2
