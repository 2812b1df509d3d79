"""Maze: a small text grid-maze environment, and the reference example for plugin authors.

The game
--------
The agent stands in a hand-written ASCII maze (``#`` wall, ``.`` open, ``G`` goal) and must
walk to the goal with ``move up`` / ``move down`` / ``move left`` / ``move right``. Every
observation states the goal's position, the agent's position and the walls next to the
agent, in AgentGym's wording::

    The goal is at position (7, 5). Your current position is at position (1, 1).
    There are walls above you and to your left.

Coordinates are ``(row, col)``, 0-indexed from the top-left corner: ``move down`` adds 1 to
the row, ``move right`` adds 1 to the column. Walking into a wall is not fatal: the agent
stays put, is told so, and the episode goes on. Reaching the goal gives reward ``1.0`` and
ends the episode; every other step gives ``0.0``.

Tasks and splits
----------------
A task is a (layout, start cell) pair. The tasks are every open non-goal cell of every
layout in :data:`LAYOUTS`, enumerated in layout order and then row-major; the task id is the
index in that list (:data:`TASKS`). The ``test`` split is every start cell of the first
layout, the "double-T" maze: ids ``0 .. 25`` (26 tasks). The ``train`` split is every other
id (``26 .. 89``: the ``rooms``, ``snake``, ``field`` and ``hook`` layouts, 64 tasks). Nothing
here is random, so ids are stable across runs and machines; changing a layout or the layout
order changes the ids and must bump :data:`MAZE_SPEC`'s version.

What a plugin provides (the pieces of this module)
--------------------------------------------------
* :class:`MazeEnv` -- the environment. It is cheap pure Python, so it implements the
  ``async`` :class:`~gymux.env_plugins.protocol.Env` protocol and runs on the event loop
  (an env that blocks or burns CPU should implement ``SyncEnv`` and use the ``thread`` or
  ``process`` execution instead). Instances are reused across episodes: :meth:`MazeEnv.reset`
  reinitialises all per-episode state. Misuse (``step`` before ``reset`` or after the episode
  ended, an unknown task id) raises :class:`~gymux.env_plugins.protocol.EnvError`.
* :func:`parse_maze_action` -- turns the model's raw ReAct output into one of the four
  canonical ``move <dir>`` strings, raising
  :class:`~gymux.env_plugins.protocol.ActionParseError` (shown to the model) otherwise.
* :data:`MAZE_SPEC` -- the :class:`~gymux.env_plugins.protocol.EnvSpec`: instruction, action
  format, splits, turn budget, reward range and success rule.
* :class:`MazeOracle` -- a policy that solves any task from its gold information (the
  layout, rebuilt from the task id) and the agent's position, read from the latest
  observation. It keeps no per-episode state, so one instance serves concurrent episodes.
* :data:`plugin` -- the :class:`~gymux.env_plugins.protocol.EnvPlugin` that the
  ``gymux.envs`` entry point ``maze = "gymux.env_plugins.builtin.maze.env:plugin"`` resolves to.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gymux.env_plugins.parsing import parse_react_action
from gymux.env_plugins.protocol import (
    ActionParseError,
    EnvError,
    EnvPlugin,
    EnvSpec,
    Observation,
    StepResult,
    SuccessRule,
    Task,
    splits_from,
)
from gymux.errors import PolicyError
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy, react

__all__ = [
    "ACTIONS",
    "LAYOUTS",
    "MAZE_SPEC",
    "TASKS",
    "TEST_IDS",
    "TRAIN_IDS",
    "MazeEnv",
    "MazeLayout",
    "MazeOracle",
    "MazeTask",
    "maze_task",
    "normalize_action",
    "observation_text",
    "parse_maze_action",
    "plugin",
]

Position = tuple[int, int]

#: Direction name -> (row delta, col delta). The order is the order walls are listed in.
_DELTAS: dict[str, Position] = {
    "up": (-1, 0),
    "left": (0, -1),
    "down": (1, 0),
    "right": (0, 1),
}
#: How the observation names a wall in each direction.
_WALL_WORDS: dict[str, str] = {
    "up": "above you",
    "left": "to your left",
    "down": "below you",
    "right": "to your right",
}
#: The canonical actions, in the order they are offered as admissible actions.
ACTIONS: tuple[str, ...] = ("move up", "move down", "move left", "move right")
#: The order the oracle tries directions in when several are equally short (deterministic).
_ORACLE_ORDER: tuple[str, ...] = ("up", "down", "left", "right")


# --------------------------------------------------------------------------------------
# Layouts and tasks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MazeLayout:
    """One hand-written maze. Build with :meth:`parse`, which validates the drawing."""

    name: str
    rows: tuple[str, ...]
    goal: Position
    #: Open non-goal cells, row-major: the start cells of this layout's tasks.
    starts: tuple[Position, ...]
    #: Shortest-path distance (in moves) from every open cell to the goal.
    distances: Mapping[Position, int]

    @classmethod
    def parse(cls, name: str, drawing: str) -> MazeLayout:
        """Parse an ASCII drawing; raise ``ValueError`` if it is not a valid maze.

        Valid means: rectangular, only ``#``/``.``/``G``, enclosed by walls, exactly one
        goal, and every open cell reachable from the goal.
        """
        rows = tuple(line.strip() for line in drawing.strip().splitlines())
        if not rows or any(len(row) != len(rows[0]) for row in rows):
            raise ValueError(f"maze layout {name!r} is not rectangular")
        height, width = len(rows), len(rows[0])
        goals: list[Position] = []
        starts: list[Position] = []
        for r, row in enumerate(rows):
            for c, ch in enumerate(row):
                if ch not in "#.G":
                    raise ValueError(f"maze layout {name!r} has unknown cell {ch!r} at ({r}, {c})")
                border = r in (0, height - 1) or c in (0, width - 1)
                if border and ch != "#":
                    raise ValueError(f"maze layout {name!r} is open on its border at ({r}, {c})")
                if ch == "G":
                    goals.append((r, c))
                elif ch == ".":
                    starts.append((r, c))
        if len(goals) != 1:
            raise ValueError(f"maze layout {name!r} has {len(goals)} goals; it needs exactly 1")
        goal = goals[0]
        distances = _bfs_distances(rows, goal)
        unreachable = [cell for cell in starts if cell not in distances]
        if unreachable:
            raise ValueError(f"maze layout {name!r}: cells {unreachable} cannot reach the goal")
        return cls(
            name=name,
            rows=rows,
            goal=goal,
            starts=tuple(starts),
            distances=MappingProxyType(distances),
        )

    def is_open(self, cell: Position) -> bool:
        """True for open cells and the goal; false for walls and cells outside the grid."""
        r, c = cell
        return 0 <= r < len(self.rows) and 0 <= c < len(self.rows[r]) and self.rows[r][c] != "#"

    def walls_around(self, cell: Position) -> list[str]:
        """The directions (``up``/``left``/``down``/``right``) with a wall next to ``cell``."""
        r, c = cell
        return [d for d, (dr, dc) in _DELTAS.items() if not self.is_open((r + dr, c + dc))]


def _bfs_distances(rows: tuple[str, ...], goal: Position) -> dict[Position, int]:
    """Breadth-first search from the goal over open cells (moves are reversible)."""
    distances: dict[Position, int] = {goal: 0}
    queue: deque[Position] = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in _DELTAS.values():
            nr, nc = r + dr, c + dc
            if (
                0 <= nr < len(rows)
                and 0 <= nc < len(rows[nr])
                and rows[nr][nc] != "#"
                and (nr, nc) not in distances
            ):
                distances[(nr, nc)] = distances[(r, c)] + 1
                queue.append((nr, nc))
    return distances


# The double-T maze must stay first: its 26 start cells are the test split (ids 0..25).
_DOUBLE_T = """
###########
#.........#
#.###.###.#
#####.#####
#####.#####
#####.#####
#.........#
#.###G###.#
###########
"""

_ROOMS = """
#########
#...#...#
#.#...#.#
#.#.#.#.#
#...#..G#
#########
"""

_SNAKE = """
######
#G...#
####.#
#....#
#.####
#....#
######
"""

_FIELD = """
#######
#.....#
#.#.#.#
#..G..#
#.#.#.#
#.....#
#######
"""

_HOOK = """
#######
#.....#
#.###.#
#.#G..#
#.#####
#######
"""

#: The layouts, in task-id order. Append new layouts at the end (and bump the version).
LAYOUTS: tuple[MazeLayout, ...] = (
    MazeLayout.parse("double_t", _DOUBLE_T),
    MazeLayout.parse("rooms", _ROOMS),
    MazeLayout.parse("snake", _SNAKE),
    MazeLayout.parse("field", _FIELD),
    MazeLayout.parse("hook", _HOOK),
)


@dataclass(frozen=True, slots=True)
class MazeTask:
    """One task: a layout and the agent's start cell."""

    id: int
    layout: MazeLayout
    start: Position

    @property
    def shortest_path(self) -> int:
        """The fewest moves from the start to the goal."""
        return self.layout.distances[self.start]


#: Every task, indexed by id: layout order, then row-major start cells.
TASKS: tuple[MazeTask, ...] = tuple(
    MazeTask(id=i, layout=layout, start=start)
    for i, (layout, start) in enumerate(
        [(layout, start) for layout in LAYOUTS for start in layout.starts]
    )
)
#: Test split: every start cell of the double-T layout.
TEST_IDS: tuple[int, ...] = tuple(t.id for t in TASKS if t.layout.name == "double_t")
#: Train split: every other task.
TRAIN_IDS: tuple[int, ...] = tuple(t.id for t in TASKS if t.layout.name != "double_t")


def maze_task(task_id: int) -> MazeTask:
    """The task with this id; ``KeyError`` naming the valid range if there is none."""
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < len(TASKS):
        raise KeyError(f"unknown maze task id {task_id!r}; valid ids are 0..{len(TASKS) - 1}")
    return TASKS[task_id]


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def _fmt(cell: Position) -> str:
    return f"({cell[0]}, {cell[1]})"


def _walls_sentence(layout: MazeLayout, cell: Position) -> str:
    words = [_WALL_WORDS[d] for d in layout.walls_around(cell)]
    if not words:
        return "There are no walls around you."
    if len(words) == 1:
        return f"There is a wall {words[0]}."
    return f"There are walls {', '.join(words[:-1])} and {words[-1]}."


def observation_text(layout: MazeLayout, position: Position) -> str:
    """The standard status text: goal, current position and surrounding walls."""
    return (
        f"The goal is at position {_fmt(layout.goal)}. "
        f"Your current position is at position {_fmt(position)}. "
        f"{_walls_sentence(layout, position)}"
    )


_ACTION_RE = re.compile(r"^(?:move[\s_-]*)?(up|down|left|right)\s*[.!]?$", re.IGNORECASE)
_DECORATION = "*`'\" \t"
_VALID = ", ".join(f'"{a}"' for a in ACTIONS)


def normalize_action(action: str) -> str:
    """Map ``"Move Up"``, ``"up"``, ``"move  up."`` ... to ``"move up"``; else ActionParseError."""
    # Strip markdown emphasis, backticks and quotes left around the action ("**Action:** up").
    match = _ACTION_RE.match(" ".join(action.strip(_DECORATION).split()))
    if match is None:
        raise ActionParseError(f"invalid action {action!r}. Valid actions are {_VALID}.")
    return f"move {match.group(1).lower()}"


def parse_maze_action(text: str) -> str:
    """Extract the action from ReAct output and normalise it to a canonical move."""
    return normalize_action(parse_react_action(text))


# --------------------------------------------------------------------------------------
# The environment
# --------------------------------------------------------------------------------------


class MazeEnv:
    """An async maze environment instance (reusable: each ``reset`` starts afresh)."""

    def __init__(self) -> None:
        self._task: MazeTask | None = None
        self._position: Position = (0, 0)
        self._done = False
        self._closed = False

    async def reset(self, task: Task) -> Observation:
        if self._closed:
            raise EnvError("MazeEnv.reset() called after close()")
        try:
            maze = maze_task(task.id)
        except KeyError as exc:
            raise EnvError(exc.args[0]) from None
        self._task = maze
        self._position = maze.start
        self._done = False
        return Observation(
            text=observation_text(maze.layout, maze.start), admissible_actions=list(ACTIONS)
        )

    async def step(self, action: str) -> StepResult:
        if self._closed:
            raise EnvError("MazeEnv.step() called after close()")
        if self._task is None:
            raise EnvError("MazeEnv.step() called before reset(); reset the env with a task first")
        if self._done:
            raise EnvError("MazeEnv.step() called after the episode ended; call reset() first")
        move = normalize_action(action)  # ActionParseError for anything else
        direction = move.removeprefix("move ")
        layout = self._task.layout
        dr, dc = _DELTAS[direction]
        target = (self._position[0] + dr, self._position[1] + dc)
        hit_wall = not layout.is_open(target)
        if hit_wall:
            text = (
                f"You tried to move {direction} but there is a wall there; "
                f"your position is unchanged. {observation_text(layout, self._position)}"
            )
        else:
            self._position = target
            if target == layout.goal:
                self._done = True
                text = (
                    f"You moved {direction} and reached the goal at position "
                    f"{_fmt(layout.goal)}. You solved the maze!"
                )
            else:
                text = f"You moved {direction}. {observation_text(layout, target)}"
        return StepResult(
            observation=Observation(text=text, admissible_actions=list(ACTIONS)),
            reward=1.0 if self._done else 0.0,
            done=self._done,
            info={"position": [self._position[0], self._position[1]], "hit_wall": hit_wall},
        )

    async def close(self) -> None:
        self._closed = True
        self._task = None


# --------------------------------------------------------------------------------------
# Spec, oracle and plugin
# --------------------------------------------------------------------------------------

_INSTRUCTION = """\
You are an expert maze solver. You are in a maze drawn on a grid of cells; some cells are \
walls. Your objective is to reach the goal cell in as few moves as possible.

Positions are written as (row, col), counted from 0 at the top-left corner of the maze. \
Moving down increases your row by 1, moving up decreases it by 1; moving right increases \
your column by 1, moving left decreases it by 1.

At each step you are told where the goal is, where you are, and in which directions there \
are walls right next to you. For example: "The goal is at position (1, 6). Your current \
position is at position (3, 1). There are walls above you and to your left." If you try to \
move into a wall you stay where you are and are told so. You have at most 15 moves.

Your possible actions are "move up", "move down", "move left" and "move right".

Think about your next move, then give exactly one action. Your answer must use this format:
Thought:
<your reasoning>

Action:
move up

Now let's start a new game. Answer with your thought and your action in the format above, \
strictly."""

MAZE_SPEC = EnvSpec(
    id="maze",
    version="1",
    instruction=_INSTRUCTION,
    action_format="Thought:\n<reasoning>\n\nAction:\nmove <up|down|left|right>",
    splits=splits_from({"test": list(TEST_IDS), "train": list(TRAIN_IDS)}),
    max_turns=15,
    reward_range=(0.0, 1.0),
    success=SuccessRule(threshold=1.0),
    example_actions=list(ACTIONS),
    description="Walk through a small text grid maze to the goal cell.",
)

_POSITION_RE = re.compile(r"Your current position is at position \((\d+), (\d+)\)")


class MazeOracle(SimplePolicy):
    """Solves any maze task by BFS, from the task's gold layout and the latest observation.

    Stateless per episode: the position is read from the last user message on each call.
    """

    name = "oracle"
    version = "maze-bfs-1"

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        try:
            task = maze_task(request.task_id)
        except KeyError as exc:
            raise PolicyError(exc.args[0]) from None
        layout = task.layout
        last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        if last_user is None:
            raise PolicyError("maze oracle: the conversation has no user message to read")
        matches = _POSITION_RE.findall(last_user.content)
        if not matches:
            raise PolicyError(
                "maze oracle: cannot find 'Your current position is at position (r, c)' "
                f"in the last observation: {last_user.content[:200]!r}"
            )
        row, col = matches[-1]
        position = (int(row), int(col))
        distance = layout.distances.get(position)
        if distance is None:
            raise PolicyError(
                f"maze oracle: position {_fmt(position)} is not an open cell "
                f"of layout {layout.name!r}"
            )
        if distance == 0:
            raise PolicyError(f"maze oracle: already at the goal {_fmt(layout.goal)}")
        for direction in _ORACLE_ORDER:
            dr, dc = _DELTAS[direction]
            nxt = (position[0] + dr, position[1] + dc)
            if layout.distances.get(nxt) == distance - 1:
                thought = (
                    f"I am at {_fmt(position)} and the goal is at {_fmt(layout.goal)}, "
                    f"{distance} moves away. Moving {direction} takes me one step closer."
                )
                return PolicyResponse(text=react(thought, f"move {direction}"))
        raise PolicyError(f"maze oracle: no move from {_fmt(position)} gets closer to the goal")


plugin = EnvPlugin(
    MAZE_SPEC,
    MazeEnv,
    execution="async",
    parse_action=parse_maze_action,
    oracle=MazeOracle,
    max_instances=1024,
)
