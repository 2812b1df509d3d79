"""gymux task id N is AgentGym's item N (``data_idx`` N, AgentEval's ``<env>_N``) for the
built-in envs whose upstream tasks can be rebuilt offline: babyai, maze and sciworld; the
others (textcraft, wordle) say in their spec why not, and ``gymux envs`` shows it.

The upstream side is ``data/agentgym_items.json``, computed once from AgentGym's own code
(github.com/WooooDyy/AgentGym @ 3ef9235d, and its lmrlgym submodule abdulhaim/LMRL-Gym @
83abeedb), outside this repository:

* ``babyai``: for ids 0..89 (the test split), ``[AgentGym's level name, mission, [agent x,
  agent y, agent dir], grid]`` of the level AgentGym's server builds for ``data_idx`` i:
  ``gymnasium.make(all_levels[i % 40 + 1])`` then ``reset(seed=i // 40)``
  (``agentenv_babyai/environment.py``), under AgentGym's pins: minigrid 2.3.1 (``<2.5.0``)
  and gymnasium 0.29.1 (``<1.0.0``). ``grid`` is the first 16 hex digits of
  ``sha256(env.unwrapped.grid.encode().tobytes() + repr(shape).encode())``; the mission is
  minigrid's (before AgentGym's "then"/"after you" -> "and" rewrite).
* ``sciworld``: AgentGym's ``games`` list, built by running its ``SciWorldEnv()``
  (``agentenv_sciworld/environment.py``, unmodified) under scienceworld 1.2.3, run-length
  encoded as ``[task name, number of variations 0, 1, ...]`` in list order; ``data_idx`` i
  is entry i of the decoded list. (scienceworld 1.1.3 has the same task order and counts.)
* ``maze``: LMRL-Gym's ``double_t_maze()`` array (``#`` = 1), the goal AgentGym's
  ``setup_maze_env("double_t_maze")`` uses, and the ``start_positions`` list of
  ``agentenv_lmrlgym/maze/environment.py`` (game i starts at entry i), read from the sources.

The babyai check needs the ``babyai`` extra (minigrid 3.2.0); the others need nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from gymux.env_plugins import Task
from gymux.env_plugins.builtin.babyai.plugin import BABYAI_SPEC
from gymux.env_plugins.builtin.babyai.text import AGENTGYM_LEVELS, level_and_seed
from gymux.env_plugins.builtin.maze.env import MazeEnv
from gymux.env_plugins.builtin.maze.layouts import LAYOUTS, maze_task
from gymux.env_plugins.builtin.maze.oracle import MazeOracle
from gymux.env_plugins.builtin.maze.plugin import MAZE_SPEC
from gymux.env_plugins.builtin.sciworld.plugin import SCIWORLD_SPEC
from gymux.env_plugins.builtin.sciworld.tasks import (
    AGENTGYM_EXCLUDED,
    AGENTGYM_ITEMS,
    TASK_TYPES,
    task_id_of,
    task_of,
)
from gymux.env_plugins.builtin.textcraft.plugin import TEXTCRAFT_SPEC
from gymux.env_plugins.builtin.wordle.plugin import WORDLE_SPEC
from gymux.messages import Message, PolicyRequest

UPSTREAM: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "agentgym_items.json").read_text()
)

#: AgentGym's level names that minigrid 3.2.0 registers under another id (same level).
RENAMED = {"BabyAI-GoToObjS6-v0": "BabyAI-GoToObjS4-v0"}


# --------------------------------------------------------------------------- maze


def test_maze_layout_is_agentgyms() -> None:
    upstream = UPSTREAM["maze"]
    layout = LAYOUTS[0]
    goal = tuple(upstream["goal"])
    assert layout.goal == goal
    drawn = [row.replace("G", ".") for row in layout.rows]
    assert drawn == upstream["grid"]
    assert layout.rows[goal[0]][goal[1]] == "G"


def test_maze_test_ids_are_agentgym_games() -> None:
    starts = [tuple(p) for p in UPSTREAM["maze"]["starts"]]
    test_ids = MAZE_SPEC.split("test").ids
    assert test_ids == list(range(len(starts))) == list(range(26))
    for task_id in test_ids:
        task = maze_task(task_id)
        assert (task.layout.name, task.start) == ("double_t", starts[task_id]), task_id
    # ids past AgentGym's 26 games are gymux's own layouts
    assert all(maze_task(i).layout.name != "double_t" for i in MAZE_SPEC.split("train").ids)


@pytest.mark.anyio
async def test_maze_game_starting_on_the_goal_is_won_by_staying() -> None:
    """AgentGym's game 25 starts on the goal; upstream, a move that leaves the agent there
    (into a wall) reports success. The oracle does exactly that."""
    env = MazeEnv()
    obs = await env.reset(Task(id=25))
    assert "Your current position is at position (8, 6)" in obs.text
    request = PolicyRequest(
        episode_id="e",
        env_id="maze",
        task_id=25,
        turn=0,
        messages=[Message(role="user", content=obs.text)],
    )
    answer = await MazeOracle().solve(request)
    action = answer.rsplit("Action:", 1)[1].strip()
    # (8, 6) has walls left, below and right: the oracle bumps one of them
    assert (
        action.removeprefix("move ")
        in LAYOUTS[0].walls_around((8, 6))
        == [
            "left",
            "down",
            "right",
        ]
    )
    res = await env.step(action)
    assert (res.done, res.reward) == (True, 1.0)
    assert "solved the maze" in res.observation.text
    # stepping off the goal is an ordinary move; coming back wins
    await env.reset(Task(id=25))
    off = await env.step("move up")
    assert (off.done, off.reward) == (False, 0.0)
    back = await env.step("move down")
    assert (back.done, back.reward) == (True, 1.0)


# --------------------------------------------------------------------------- sciworld


def _agentgym_games() -> list[tuple[str, int]]:
    return [(name, v) for name, count in UPSTREAM["sciworld"]["runs"] for v in range(count)]


def test_sciworld_every_agentgym_item_is_the_same_task() -> None:
    games = _agentgym_games()
    assert len(games) == UPSTREAM["sciworld"]["items"] == AGENTGYM_ITEMS == 4639
    for data_idx, game in enumerate(games):
        assert task_of(data_idx) == game, data_idx
        assert task_id_of(*game) == data_idx


def test_sciworld_test_split_is_agentgym_items() -> None:
    games = _agentgym_games()
    test_ids = SCIWORLD_SPEC.split("test").ids
    assert len(test_ids) == 201
    for task_id in test_ids:
        assert task_id < AGENTGYM_ITEMS
        assert task_of(task_id) == games[task_id], task_id
    assert all(i < AGENTGYM_ITEMS for i in SCIWORLD_SPEC.split("train").ids)


def test_sciworld_excluded_types_come_after_agentgyms_ids() -> None:
    total = sum(t.variations for t in TASK_TYPES)
    tail = {task_of(i)[0] for i in range(AGENTGYM_ITEMS, total)}
    assert tail == set(AGENTGYM_EXCLUDED)


# --------------------------------------------------------------------------- babyai


def _level_fingerprint(env: Any) -> list[Any]:
    grid = env.grid.encode()
    digest = hashlib.sha256(grid.tobytes() + repr(grid.shape).encode()).hexdigest()[:16]
    pose = [int(env.agent_pos[0]), int(env.agent_pos[1]), int(env.agent_dir)]
    return [env.mission, pose, digest]


def test_babyai_level_names_are_agentgyms() -> None:
    for task_id in BABYAI_SPEC.split("test").ids:
        upstream_level = UPSTREAM["babyai"][str(task_id)][0]
        assert level_and_seed(task_id) == (
            RENAMED.get(upstream_level, upstream_level),
            task_id // 40,
        )
    assert AGENTGYM_LEVELS[3] == "BabyAI-GoToObjS4-v0"


def test_babyai_test_ids_build_agentgyms_levels() -> None:
    pytest.importorskip("minigrid")
    from gymux.env_plugins.builtin.babyai.actions import make_level

    test_ids = BABYAI_SPEC.split("test").ids
    assert sorted(UPSTREAM["babyai"], key=int) == [str(i) for i in test_ids]
    for task_id in test_ids:
        env = make_level(*level_and_seed(task_id))
        try:
            assert _level_fingerprint(env) == UPSTREAM["babyai"][str(task_id)][1:], task_id
        finally:
            env.close()


# --------------------------------------------------------------------------- the specs


def test_specs_say_whether_ids_are_agentgyms() -> None:
    for spec in (BABYAI_SPEC, MAZE_SPEC, SCIWORLD_SPEC):
        assert spec.agentgym_ids.split(":")[0] == "same", spec.id
    for spec in (TEXTCRAFT_SPEC, WORDLE_SPEC):
        word, _, why = spec.agentgym_ids.partition(":")
        assert word == "no" and why.strip(), spec.id


def test_gymux_envs_shows_the_agentgym_column(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from gymux.cli.envs import run
    from gymux.env_plugins.registry import default_registry

    run(argparse.Namespace(json=False), default_registry())
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[4] == "agentgym"
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    for env_id, word in (("maze", "same"), ("textcraft", "no"), ("wordle", "no")):
        assert rows[env_id][4] == word, rows[env_id]
    assert lines[-1].startswith('(agentgym: "same" = task id N is')

    run(argparse.Namespace(json=True), default_registry())
    listing = {row["id"]: row for row in json.loads(capsys.readouterr().out)}
    assert listing["wordle"]["agentgym_ids"] == WORDLE_SPEC.agentgym_ids
    assert listing["maze"]["agentgym_ids"] == "same"
