"""Maze layouts and tasks: the hand-written mazes, their shortest-path distances, task ids.

Shared by the environment (:mod:`.env`) and its oracle (:mod:`.oracle`). A task is a
(layout, start cell) pair: the start cells of every layout in :data:`LAYOUTS`, in layout
order; the task id is the index in :data:`TASKS`. A layout's start cells are its open
non-goal cells in row-major order, except the first layout's: AgentGym's maze, whose 26
starts are AgentGym's own list in its order (:data:`AGENTGYM_STARTS`), so that task ids
``0 .. 25`` are AgentGym's maze games ``0 .. 25``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "AGENTGYM_STARTS",
    "DELTAS",
    "LAYOUTS",
    "TASKS",
    "TEST_IDS",
    "TRAIN_IDS",
    "MazeLayout",
    "MazeTask",
    "Position",
    "format_position",
    "maze_task",
]

Position = tuple[int, int]

#: Direction name -> (row delta, col delta). The order is the order walls are listed in.
DELTAS: dict[str, Position] = {
    "up": (-1, 0),
    "left": (0, -1),
    "down": (1, 0),
    "right": (0, 1),
}

# --------------------------------------------------------------------------------------
# Layouts and tasks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MazeLayout:
    """One hand-written maze. Build with :meth:`parse`, which validates the drawing."""

    name: str
    rows: tuple[str, ...]
    goal: Position
    #: The start cells of this layout's tasks: open non-goal cells in row-major order, or
    #: the explicit list given to :meth:`parse` (which may include the goal).
    starts: tuple[Position, ...]
    #: Shortest-path distance (in moves) from every open cell to the goal.
    distances: Mapping[Position, int]

    @classmethod
    def parse(
        cls, name: str, drawing: str, starts: tuple[Position, ...] | None = None
    ) -> MazeLayout:
        """Parse an ASCII drawing; raise ``ValueError`` if it is not a valid maze.

        Valid means: rectangular, only ``#``/``.``/``G``, enclosed by walls, exactly one
        goal, and every open cell reachable from the goal. ``starts``, when given, replaces
        the row-major start cells: distinct open cells (the goal included), in that order.
        """
        rows = tuple(line.strip() for line in drawing.strip().splitlines())
        if not rows or any(len(row) != len(rows[0]) for row in rows):
            raise ValueError(f"maze layout {name!r} is not rectangular")
        height, width = len(rows), len(rows[0])
        goals: list[Position] = []
        open_cells: list[Position] = []
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
                    open_cells.append((r, c))
        if len(goals) != 1:
            raise ValueError(f"maze layout {name!r} has {len(goals)} goals; it needs exactly 1")
        goal = goals[0]
        if starts is not None:
            bad = [cell for cell in starts if cell != goal and cell not in open_cells]
            if bad or len(set(starts)) != len(starts):
                raise ValueError(
                    f"maze layout {name!r}: start cells {list(starts)} must be distinct open "
                    f"cells (not open: {bad})"
                )
        distances = _bfs_distances(rows, goal)
        unreachable = [cell for cell in open_cells if cell not in distances]
        if unreachable:
            raise ValueError(f"maze layout {name!r}: cells {unreachable} cannot reach the goal")
        return cls(
            name=name,
            rows=rows,
            goal=goal,
            starts=tuple(open_cells) if starts is None else tuple(starts),
            distances=MappingProxyType(distances),
        )

    def is_open(self, cell: Position) -> bool:
        """True for open cells and the goal; false for walls and cells outside the grid."""
        r, c = cell
        return 0 <= r < len(self.rows) and 0 <= c < len(self.rows[r]) and self.rows[r][c] != "#"

    def walls_around(self, cell: Position) -> list[str]:
        """The directions (``up``/``left``/``down``/``right``) with a wall next to ``cell``."""
        r, c = cell
        return [d for d, (dr, dc) in DELTAS.items() if not self.is_open((r + dr, c + dc))]


def _bfs_distances(rows: tuple[str, ...], goal: Position) -> dict[Position, int]:
    """Breadth-first search from the goal over open cells (moves are reversible)."""
    distances: dict[Position, int] = {goal: 0}
    queue: deque[Position] = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in DELTAS.values():
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
# It is AgentGym's maze: agentenv-lmrlgym serves LMRL-Gym's ``double_t_maze()`` (a 10 x 13
# array, 1 = wall; ``llm_rl_scripts/maze/env/mazes.py``) with the goal at (8, 6), drawn here
# cell for cell.
_DOUBLE_T = """
#############
#.....#.....#
###.#####.###
###.#####.###
###.#####.###
###.......###
######.######
######.######
######G######
#############
"""

#: AgentGym's maze games ``0 .. 25``: the ``start_positions`` list of
#: ``agentenv_lmrlgym/maze/environment.py`` (``reset(game=i)`` starts at entry ``i``), in
#: its order. Game 25 starts on the goal itself; as upstream, any move that leaves the
#: agent there (into a wall) then wins.
AGENTGYM_STARTS: tuple[Position, ...] = (
    (1, 1),
    (1, 2),
    (1, 3),
    (1, 4),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (1, 10),
    (1, 11),
    (2, 3),
    (3, 3),
    (4, 3),
    (5, 3),
    (5, 4),
    (5, 5),
    (5, 6),
    (6, 6),
    (7, 6),
    (5, 7),
    (5, 8),
    (5, 9),
    (4, 9),
    (3, 9),
    (2, 9),
    (8, 6),
)

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
    MazeLayout.parse("double_t", _DOUBLE_T, starts=AGENTGYM_STARTS),
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


#: Every task, indexed by id: layout order, then each layout's start cells.
TASKS: tuple[MazeTask, ...] = tuple(
    MazeTask(id=i, layout=layout, start=start)
    for i, (layout, start) in enumerate(
        [(layout, start) for layout in LAYOUTS for start in layout.starts]
    )
)
#: Test split: every start cell of the double-T layout (AgentGym's maze games 0..25).
TEST_IDS: tuple[int, ...] = tuple(t.id for t in TASKS if t.layout.name == "double_t")
#: Train split: every other task.
TRAIN_IDS: tuple[int, ...] = tuple(t.id for t in TASKS if t.layout.name != "double_t")


def maze_task(task_id: int) -> MazeTask:
    """The task with this id; ``KeyError`` naming the valid range if there is none."""
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < len(TASKS):
        raise KeyError(f"unknown maze task id {task_id!r}; valid ids are 0..{len(TASKS) - 1}")
    return TASKS[task_id]


def format_position(cell: Position) -> str:
    """``(row, col)`` as the observations write it."""
    return f"({cell[0]}, {cell[1]})"
