"""Maze: a small text grid-maze environment, and the reference example for plugin authors.

The game
--------
The agent stands in a hand-written ASCII maze (``#`` wall, ``.`` open, ``G`` goal) and must
walk to the goal with ``move up`` / ``move down`` / ``move left`` / ``move right``. Every
observation states the goal's position, the agent's position and the walls next to the
agent, in AgentGym's wording::

    The goal is at position (8, 6). Your current position is at position (1, 1).
    There are walls above you, to your left and below you.

Coordinates are ``(row, col)``, 0-indexed from the top-left corner: ``move down`` adds 1 to
the row, ``move right`` adds 1 to the column. Walking into a wall is not fatal: the agent
stays put, is told so, and the episode goes on. Reaching the goal gives reward ``1.0`` and
ends the episode; every other step gives ``0.0``. As in AgentGym (LMRL-Gym's maze), a move
that leaves the agent on the goal wins, which matters for the one task that starts there.

Tasks and splits
----------------
A task is a (layout, start cell) pair. The tasks are the start cells of every layout in
:data:`LAYOUTS`, enumerated in layout order; the task id is the index in that list
(:data:`TASKS`). The first layout is AgentGym's maze (LMRL-Gym's ``double_t_maze``, goal at
(8, 6)) and its 26 start cells are AgentGym's list in AgentGym's order, so task id ``i`` in
``0 .. 25`` is AgentGym's maze game ``i`` (its ``reset`` body ``{"game": i}``, AgentEval's
``maze_i``). The ``test`` split is those 26 ids. The ``train`` split is every other id
(``26 .. 89``: the ``rooms``, ``snake``, ``field`` and ``hook`` layouts, row-major open
non-goal cells, 64 tasks; AgentGym has no maze games past 25). Nothing
here is random, so ids are stable across runs and machines; changing a layout or the layout
order changes the ids and must bump :data:`MAZE_SPEC`'s version.

What a plugin provides (the pieces of this package)
---------------------------------------------------
The layouts and task ids are in :mod:`.layouts`, the oracle in :mod:`.oracle`; this module
holds the rest and re-exports both.

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
* :class:`MazeOracle` (in :mod:`.oracle`) -- a gold solver
  (:class:`~gymux.env_plugins.protocol.Oracle`) for any task, from its gold information (the
  layout, rebuilt from the task id) and the agent's position, read from the latest
  observation. It keeps no per-episode state, so one instance serves concurrent episodes.
* :data:`plugin` -- the :class:`~gymux.env_plugins.protocol.EnvPlugin` that the
  ``gymux.envs`` entry point ``maze = "gymux.env_plugins.builtin.maze.env:plugin"`` resolves to.
"""

from __future__ import annotations

import re

from gymux.env_plugins.builtin.maze.layouts import (
    DELTAS,
    LAYOUTS,
    TASKS,
    TEST_IDS,
    TRAIN_IDS,
    MazeLayout,
    MazeTask,
    Position,
    format_position,
    maze_task,
)
from gymux.env_plugins.builtin.maze.oracle import MazeOracle
from gymux.env_plugins.parsing import parse_react_action
from gymux.env_plugins.protocol import Observation, StepResult, Task
from gymux.errors import ActionParseError, EnvError

__all__ = [
    "ACTIONS",
    "LAYOUTS",
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
]

#: How the observation names a wall in each direction.
_WALL_WORDS: dict[str, str] = {
    "up": "above you",
    "left": "to your left",
    "down": "below you",
    "right": "to your right",
}
#: The canonical actions, in the order they are offered as admissible actions.
ACTIONS: tuple[str, ...] = ("move up", "move down", "move left", "move right")


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


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
        f"The goal is at position {format_position(layout.goal)}. "
        f"Your current position is at position {format_position(position)}. "
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
        dr, dc = DELTAS[direction]
        target = (self._position[0] + dr, self._position[1] + dc)
        hit_wall = not layout.is_open(target)
        if not hit_wall:
            self._position = target
        # As upstream (LMRL-Gym's MazeEnv), the episode is won when a move leaves the agent
        # on the goal; that includes bumping a wall while standing on it (AgentGym's game 25
        # starts there).
        self._done = self._position == layout.goal
        if self._done:
            what = (
                f"tried to move {direction} but there is a wall there; you stayed on the goal"
                if hit_wall
                else f"moved {direction} and reached the goal"
            )
            text = f"You {what} at position {format_position(layout.goal)}. You solved the maze!"
        elif hit_wall:
            text = (
                f"You tried to move {direction} but there is a wall there; "
                f"your position is unchanged. {observation_text(layout, self._position)}"
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
# Spec and plugin
# --------------------------------------------------------------------------------------
