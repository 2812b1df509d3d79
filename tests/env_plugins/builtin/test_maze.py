"""Tests for the maze environment plugin (gymux.env_plugins.builtin.maze.env)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import deque

import anyio
import pytest

from gymux.env_plugins import ActionParseError, Env, EnvError, Execution, Task
from gymux.env_plugins.builtin.maze.env import (
    ACTIONS,
    LAYOUTS,
    TASKS,
    TEST_IDS,
    TRAIN_IDS,
    MazeEnv,
    MazeLayout,
    MazeOracle,
    maze_task,
    observation_text,
    parse_maze_action,
)
from gymux.env_plugins.builtin.maze.layouts import AGENTGYM_STARTS
from gymux.env_plugins.builtin.maze.plugin import MAZE_SPEC, plugin
from gymux.policies import Message, PolicyError, PolicyRequest
from gymux.policies.oracle import OraclePolicy

from doubles import envs as E
from doubles.trajectories import opening


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def task_id_of(layout: str, start: tuple[int, int]) -> int:
    ids = [t.id for t in TASKS if t.layout.name == layout and t.start == start]
    assert len(ids) == 1, (layout, start)
    return ids[0]


def bfs_length(rows: tuple[str, ...], start: tuple[int, int]) -> int:
    """Independent shortest-path length from start to the 'G' cell."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        if rows[r][c] == "G":
            return dist[(r, c)]
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            nr, nc = r + dr, c + dc
            if rows[nr][nc] != "#" and (nr, nc) not in dist:
                dist[(nr, nc)] = dist[(r, c)] + 1
                queue.append((nr, nc))
    raise AssertionError(f"goal unreachable from {start}")


# ---------------------------------------------------------------------------- tasks, splits


def test_layouts_and_task_enumeration() -> None:
    assert len(LAYOUTS) >= 4
    assert LAYOUTS[0].name == "double_t"
    assert len(LAYOUTS[0].starts) == 26
    # AgentGym's maze comes first, with AgentGym's start list; the others start row-major.
    expected = [("double_t", start) for start in AGENTGYM_STARTS] + [
        (layout.name, (r, c))
        for layout in LAYOUTS[1:]
        for r, row in enumerate(layout.rows)
        for c, ch in enumerate(row)
        if ch == "."
    ]
    assert [(t.layout.name, t.start) for t in TASKS] == expected
    assert [t.id for t in TASKS] == list(range(len(TASKS)))
    # pinned anchors: changing these changes published task ids
    assert (TASKS[0].layout.name, TASKS[0].start) == ("double_t", (1, 1))
    assert (TASKS[24].layout.name, TASKS[24].start) == ("double_t", (2, 9))
    assert (TASKS[25].layout.name, TASKS[25].start) == ("double_t", (8, 6))  # on the goal
    assert (TASKS[26].layout.name, TASKS[26].start) == ("rooms", (1, 1))
    assert len(TASKS) == 90
    assert LAYOUTS[0].goal == (8, 6)


_FINGERPRINT_CODE = """
import hashlib
from gymux.env_plugins.builtin.maze.env import TASKS
text = "\\n".join(f"{t.id} {t.layout.name} {t.start[0]} {t.start[1]}" for t in TASKS)
print(hashlib.sha256(text.encode()).hexdigest())
"""
#: sha256 of the published (id, layout, start) table; a change here renumbers tasks and
#: must come with a MAZE_SPEC version bump.
_TASKS_SHA256 = "ce843605bfb56163e64940d4dca3f61f6927bf4cd1986b6451daf5411f95ada4"


def test_task_ids_are_deterministic() -> None:
    for i in range(len(TASKS)):
        assert maze_task(i) == maze_task(i) == TASKS[i]
    text = "\n".join(f"{t.id} {t.layout.name} {t.start[0]} {t.start[1]}" for t in TASKS)
    assert hashlib.sha256(text.encode()).hexdigest() == _TASKS_SHA256
    # a fresh interpreter (different hash seed) enumerates the same table
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", _FINGERPRINT_CODE],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.stdout.strip() == _TASKS_SHA256


def test_splits() -> None:
    assert list(TEST_IDS) == list(range(26))
    test, train = MAZE_SPEC.split("test"), MAZE_SPEC.split("train")
    assert test.ids == list(TEST_IDS)
    assert train.ids == list(TRAIN_IDS)
    assert test.count == 26
    assert train.count == len(TASKS) - 26 == 64
    assert set(test.ids).isdisjoint(train.ids)
    assert sorted(test.ids + train.ids) == list(range(len(TASKS)))
    assert all(TASKS[i].layout.name == "double_t" for i in test.ids)
    assert set(MAZE_SPEC.splits) == {"test", "train"}


def test_every_task_solvable_within_budget() -> None:
    for t in TASKS:
        assert t.shortest_path == bfs_length(t.layout.rows, t.start)
        # only AgentGym's game 25 starts on the goal
        assert (1 if t.id != 25 else 0) <= t.shortest_path <= MAZE_SPEC.max_turns


def test_layout_validation() -> None:
    with pytest.raises(ValueError, match="goals"):
        MazeLayout.parse("nogoal", "###\n#.#\n###")
    with pytest.raises(ValueError, match="border"):
        MazeLayout.parse("open", "###\n#G.\n###")
    with pytest.raises(ValueError, match="reach"):
        MazeLayout.parse("cut", "#####\n#G#.#\n#####")
    with pytest.raises(ValueError, match="rectangular"):
        MazeLayout.parse("ragged", "####\n#G.#\n###")
    # explicit start cells: open cells (the goal allowed), no repeats
    small = MazeLayout.parse("s", "#####\n#G..#\n#####", starts=((1, 3), (1, 1)))
    assert small.starts == ((1, 3), (1, 1))
    for bad in (((0, 0),), ((1, 2), (1, 2))):
        with pytest.raises(ValueError, match="start cells"):
            MazeLayout.parse("s", "#####\n#G..#\n#####", starts=bad)


def test_spec_and_plugin() -> None:
    assert MAZE_SPEC.id == "maze"
    assert MAZE_SPEC.version == "2"
    assert MAZE_SPEC.max_turns == 15
    assert MAZE_SPEC.reward_range == (0.0, 1.0)
    assert MAZE_SPEC.success.threshold == 1.0
    assert MAZE_SPEC.success.is_success(1.0) and not MAZE_SPEC.success.is_success(0.0)
    assert MAZE_SPEC.example_actions == list(ACTIONS)
    assert "Thought:\n" in MAZE_SPEC.instruction
    assert "Action:\nmove up" in MAZE_SPEC.instruction
    for action in ACTIONS:
        assert f'"{action}"' in MAZE_SPEC.instruction
    assert plugin.spec is MAZE_SPEC
    assert plugin.id == "maze"
    assert plugin.execution is Execution.ASYNC
    assert plugin.parse_action is parse_maze_action
    assert plugin.max_instances == 1024
    assert isinstance(plugin.factory(), Env)
    assert plugin.oracle is not None
    oracle = plugin.oracle()
    assert isinstance(oracle, MazeOracle)
    policy = OraclePolicy(oracle)
    assert (policy.name, policy.version) == ("oracle", "maze-bfs-1")


def test_entry_point_resolves_to_plugin() -> None:
    assert E.load_entry_point("maze") is plugin


# ---------------------------------------------------------------------------- observation text


def test_observation_text_walls() -> None:
    dt = LAYOUTS[0]
    assert observation_text(dt, (1, 1)) == (
        "The goal is at position (8, 6). Your current position is at position (1, 1). "
        "There are walls above you, to your left and below you."
    )
    assert observation_text(dt, (1, 5)).endswith(
        "There are walls above you, below you and to your right."
    )
    assert observation_text(dt, (1, 3)).endswith("There is a wall above you.")
    assert observation_text(dt, (3, 3)).endswith("There are walls to your left and to your right.")
    assert dt.walls_around((8, 6)) == ["left", "down", "right"]
    open_field = MazeLayout.parse("open", "#####\n#...#\n#.G.#\n#...#\n#####")
    assert observation_text(open_field, (2, 2)).endswith("There are no walls around you.")


# ---------------------------------------------------------------------------- env


@pytest.mark.anyio
async def test_reset_observation() -> None:
    env = MazeEnv()
    obs = await env.reset(Task(id=0, split="test"))
    assert obs.text == (
        "The goal is at position (8, 6). Your current position is at position (1, 1). "
        "There are walls above you, to your left and below you."
    )
    assert obs.admissible_actions == ["move up", "move down", "move left", "move right"]


@pytest.mark.anyio
async def test_legal_and_illegal_moves() -> None:
    env = MazeEnv()
    await env.reset(Task(id=0))  # double_t (1, 1)
    res = await env.step("move up")
    assert not res.done and res.reward == 0.0
    assert res.info == {"position": [1, 1], "hit_wall": True}
    assert res.observation.text == (
        "You tried to move up but there is a wall there; your position is unchanged. "
        "The goal is at position (8, 6). Your current position is at position (1, 1). "
        "There are walls above you, to your left and below you."
    )
    res = await env.step("move left")
    assert res.info == {"position": [1, 1], "hit_wall": True}
    assert res.observation.text.startswith("You tried to move left but there is a wall there")

    res = await env.step("move right")
    assert res.info == {"position": [1, 2], "hit_wall": False}
    assert res.reward == 0.0 and not res.done
    assert res.observation.text == (
        "You moved right. The goal is at position (8, 6). "
        "Your current position is at position (1, 2). There are walls above you and below you."
    )
    assert res.observation.admissible_actions == list(ACTIONS)

    # bare and mixed-case directions are normalised by the env too
    res = await env.step("LEFT")
    assert res.info == {"position": [1, 1], "hit_wall": False}
    res = await env.step("Move Down")
    assert res.info == {"position": [1, 1], "hit_wall": True}
    res = await env.step("right")
    assert res.info == {"position": [1, 2], "hit_wall": False}
    with pytest.raises(ActionParseError, match="move up"):
        await env.step("jump")


@pytest.mark.anyio
async def test_reaching_goal() -> None:
    env = MazeEnv()
    tid = task_id_of("double_t", (7, 6))
    await env.reset(Task(id=tid))
    res = await env.step("move down")
    assert res.done is True
    assert res.reward == 1.0
    assert res.info == {"position": [8, 6], "hit_wall": False}
    assert "reached the goal" in res.observation.text
    with pytest.raises(EnvError, match="ended"):
        await env.step("move up")


@pytest.mark.anyio
async def test_long_walk_to_goal() -> None:
    env = MazeEnv()
    await env.reset(Task(id=task_id_of("double_t", (2, 9))))
    moves = ["down"] * 3 + ["left"] * 3 + ["down"] * 3
    for i, move in enumerate(moves):
        res = await env.step(f"move {move}")
        assert res.info["hit_wall"] is False
        last = i == len(moves) - 1
        assert res.done is last
        assert res.reward == (1.0 if last else 0.0)
    assert res.info["position"] == [8, 6]


@pytest.mark.anyio
async def test_instance_reuse() -> None:
    env = MazeEnv()
    await env.reset(Task(id=task_id_of("double_t", (7, 6))))
    assert (await env.step("move down")).done
    obs = await env.reset(Task(id=0))
    assert "Your current position is at position (1, 1)." in obs.text
    res = await env.step("move right")
    assert res.info == {"position": [1, 2], "hit_wall": False}
    assert not res.done
    # reset mid-episode also starts from scratch, on another layout
    rooms = task_id_of("rooms", (1, 1))
    obs = await env.reset(Task(id=rooms))
    assert (
        "The goal is at position (4, 7). Your current position is at position (1, 1)." in obs.text
    )
    res = await env.step("move down")
    assert res.info == {"position": [2, 1], "hit_wall": False}


@pytest.mark.anyio
async def test_env_errors() -> None:
    env = MazeEnv()
    with pytest.raises(EnvError, match="before reset"):
        await env.step("move up")
    for bad in (-1, len(TASKS), 10_000):
        with pytest.raises(EnvError, match=rf"{bad}.*0\.\.{len(TASKS) - 1}"):
            await env.reset(Task(id=bad))
    # a failed reset leaves a fresh env still unusable for step
    with pytest.raises(EnvError, match="before reset"):
        await env.step("move up")
    await env.reset(Task(id=3))
    await env.close()
    with pytest.raises(EnvError):
        await env.step("move up")
    with pytest.raises(EnvError):
        await env.reset(Task(id=3))


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thought:\nI should go up.\n\nAction:\nmove up", "move up"),
        ("Thought: go\nAction: move down", "move down"),
        ("Action: LEFT", "move left"),
        ("Action: `Move Right`", "move right"),
        ("action:  move   up.", "move up"),
        (
            "Thought: first left\nAction: move left\nThought: no, right\nAction: move right",
            "move right",
        ),
        ('**Action:** "down"', "move down"),
        ("Action: **move up**", "move up"),
    ],
)
def test_parse_valid(text: str, expected: str) -> None:
    assert parse_maze_action(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I will move up",
        "Thought: hmm\nAction:",
        "Thought: hmm\nAction: jump",
        "Action: move diagonally",
        "Action: move up and then left",
        "Action: north",
        "Action: move upward",
        "",
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(ActionParseError):
        parse_maze_action(text)


def test_parse_error_lists_valid_actions() -> None:
    with pytest.raises(ActionParseError) as info:
        parse_maze_action("Thought: x\nAction: teleport")
    message = str(info.value)
    assert "teleport" in message
    for action in ACTIONS:
        assert action in message


# ---------------------------------------------------------------------------- oracle


async def run_oracle_episode(oracle: OraclePolicy, task_id: int) -> tuple[int, float, bool]:
    """Drive MazeEnv with the oracle exactly as a runtime would; return (steps, reward, done)."""
    env = MazeEnv()
    obs = await env.reset(Task(id=task_id))
    messages = opening(MAZE_SPEC.instruction, obs.text)
    reward, done, turn = 0.0, False, 0
    for turn in range(1, MAZE_SPEC.max_turns + 1):
        request = PolicyRequest(
            episode_id=f"ep-{task_id}",
            env_id="maze",
            task_id=task_id,
            turn=turn,
            messages=list(messages),
            admissible_actions=obs.admissible_actions,
        )
        response = await oracle.act(request)
        action = parse_maze_action(response.text)
        result = await env.step(action)
        # only on the goal itself (AgentGym's game 25) does the oracle bump a wall: that wins
        assert result.info["hit_wall"] is (TASKS[task_id].shortest_path == 0)
        messages.append(Message(role="assistant", content=response.text, loss=True))
        messages.append(Message(role="user", content=result.observation.text))
        obs = result.observation
        reward, done = result.reward, result.done
        if done:
            break
    await env.close()
    return turn, reward, done


@pytest.mark.anyio
@pytest.mark.parametrize("split", ["test", "train"])
async def test_oracle_solves_every_task_optimally(split: str) -> None:
    oracle = OraclePolicy(MazeOracle())
    for task_id in MAZE_SPEC.split(split).ids:
        steps, reward, done = await run_oracle_episode(oracle, task_id)
        task = TASKS[task_id]
        assert done and reward == 1.0, task_id
        assert steps == max(1, bfs_length(task.layout.rows, task.start)), task_id
        assert steps <= MAZE_SPEC.max_turns


@pytest.mark.anyio
async def test_oracle_concurrent_episodes_share_one_instance() -> None:
    oracle = OraclePolicy(MazeOracle())
    results: dict[int, tuple[int, float, bool]] = {}

    async def one(task_id: int) -> None:
        results[task_id] = await run_oracle_episode(oracle, task_id)

    async with oracle, anyio.create_task_group() as tg:
        for task_id in range(len(TASKS)):
            tg.start_soon(one, task_id)
    assert len(results) == len(TASKS)
    for task_id, (steps, reward, done) in results.items():
        assert done and reward == 1.0
        assert steps == max(1, TASKS[task_id].shortest_path)


def _request(task_id: int, *contents: str) -> PolicyRequest:
    return PolicyRequest(
        episode_id="e",
        env_id="maze",
        task_id=task_id,
        turn=1,
        messages=[Message(role="user", content=c) for c in contents],
    )


@pytest.mark.anyio
async def test_oracle_reads_the_last_observation() -> None:
    oracle = OraclePolicy(MazeOracle())
    tid = task_id_of("double_t", (1, 1))
    # stale earlier observation says (1, 1); the latest says (1, 4): must go left
    response = await oracle.act(
        _request(
            tid,
            observation_text(LAYOUTS[0], (1, 1)),
            observation_text(LAYOUTS[0], (1, 4)),
        )
    )
    assert parse_maze_action(response.text) == "move left"
    assert response.text.startswith("Thought:\n")
    response = await oracle.act(_request(tid, observation_text(LAYOUTS[0], (1, 1))))
    assert parse_maze_action(response.text) == "move right"


@pytest.mark.anyio
async def test_oracle_errors() -> None:
    oracle = OraclePolicy(MazeOracle())
    with pytest.raises(PolicyError):
        await oracle.act(_request(0, "no position in here"))
    with pytest.raises(PolicyError):
        await oracle.act(_request(0))
    with pytest.raises(PolicyError, match="999"):
        await oracle.act(_request(999, observation_text(LAYOUTS[0], (1, 1))))
    with pytest.raises(PolicyError, match="not an open cell"):
        await oracle.act(_request(0, "Your current position is at position (0, 0)."))
    # on the goal it bumps a wall (a win, as in AgentGym) rather than failing
    response = await oracle.act(_request(0, "Your current position is at position (8, 6)."))
    assert parse_maze_action(response.text) == "move left"
