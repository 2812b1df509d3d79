"""The maze oracle: the shortest path, from the task's gold layout and the last observation."""

from __future__ import annotations

import re

from gymux.env_plugins.builtin.maze.layouts import DELTAS, maze_task
from gymux.env_plugins.builtin.maze.layouts import format_position as _fmt
from gymux.errors import PolicyError
from gymux.messages import PolicyRequest
from gymux.react import format_react

__all__ = ["MazeOracle"]

#: The order the oracle tries directions in when several are equally short (deterministic).
_ORACLE_ORDER: tuple[str, ...] = ("up", "down", "left", "right")


_POSITION_RE = re.compile(r"Your current position is at position \((\d+), (\d+)\)")


class MazeOracle:
    """Solves any maze task by BFS, from the task's gold layout and the latest observation.

    Stateless per episode: the position is read from the last user message on each call.
    """

    version = "maze-bfs-1"

    async def solve(self, request: PolicyRequest) -> str:
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
            # Standing on the goal (a task may start there): a move that keeps the agent on
            # it wins, as in AgentGym; with no wall to bump, step off and come back.
            walls = layout.walls_around(position)
            direction = walls[0] if walls else _ORACLE_ORDER[0]
            thought = f"I am on the goal at {_fmt(position)}. Moving {direction} " + (
                "into the wall keeps me on it." if walls else "and back ends the game."
            )
            return format_react(thought, f"move {direction}")
        for direction in _ORACLE_ORDER:
            dr, dc = DELTAS[direction]
            nxt = (position[0] + dr, position[1] + dc)
            if layout.distances.get(nxt) == distance - 1:
                thought = (
                    f"I am at {_fmt(position)} and the goal is at {_fmt(layout.goal)}, "
                    f"{distance} moves away. Moving {direction} takes me one step closer."
                )
                return format_react(thought, f"move {direction}")
        raise PolicyError(f"maze oracle: no move from {_fmt(position)} gets closer to the goal")
