"""The BabyAI game: a minigrid level, its text view, and high-level actions compiled
into primitive minigrid moves.

:class:`BabyAIGame` wraps one minigrid level (``env.unwrapped``). It keeps the agent's
*known map* (every cell it has seen since the reset) and plans paths with a breadth-first
search over ``(x, y, direction)`` states through known, passable cells (empty floor and
open doors). High-level actions name objects in the current view by their ids
(``red ball 1``: colour, type, and a number counting that colour and type from the nearest).

minigrid is imported lazily (:func:`load_minigrid`), so this module imports without the
optional extra.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gymux.env_plugins.builtin.babyai.text import (
    VisibleObject,
    describe_scene,
    format_actions,
    object_phrase,
)
from gymux.env_plugins.parsing import parse_react_action
from gymux.env_plugins.protocol import ActionParseError, EnvError

__all__ = [
    "CHECK",
    "COLORS",
    "DONE",
    "DROP",
    "FORWARD",
    "LEFT",
    "PICKUP",
    "PRIMITIVE_NAMES",
    "RIGHT",
    "TOGGLE",
    "BabyAIGame",
    "Outcome",
    "load_minigrid",
    "normalise_action",
    "parse_babyai_action",
]

# minigrid's primitive actions (minigrid.core.actions.Actions).
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
#: The env action that performs each primitive on its own (``done`` has none: see below).
PRIMITIVE_NAMES = {
    LEFT: "turn left",
    RIGHT: "turn right",
    FORWARD: "move forward",
    PICKUP: "pick up",
    DROP: "drop",
    TOGGLE: "toggle",
}
CHECK = "check available actions"
COLORS = ("red", "green", "blue", "purple", "yellow", "grey")
_DIR_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))
_PICKABLE = ("key", "ball", "box")
_OBJECT_TYPES = ("door", "key", "ball", "box")

_INSTALL_HINT = "BabyAI needs minigrid and gymnasium: pip install 'gymux[babyai]'"


def load_minigrid() -> Any:
    """Import gymnasium with minigrid's levels registered; EnvError if not installed."""
    try:
        import gymnasium
        import minigrid  # noqa: F401  (registers the BabyAI levels with gymnasium)
    except ImportError as exc:
        raise EnvError(f"{_INSTALL_HINT} ({exc})") from None
    return gymnasium


def _silence_level_generation() -> None:
    """minigrid's level generator prints its rejection-sampling notes; give that one module
    a ``print`` that does nothing. (Swapping ``sys.stdout`` instead would be process-wide
    and would swallow other threads' output while a level is made.)"""
    from minigrid.envs.babyai.core import roomgrid_level

    roomgrid_level.print = _no_print  # type: ignore[attr-defined]


def _no_print(*args: object, **kwargs: object) -> None:
    return None


def make_level(level: str, seed: int) -> Any:
    """A freshly reset minigrid level (``unwrapped``), without minigrid's chatter."""
    gymnasium = load_minigrid()
    _silence_level_generation()
    env = gymnasium.make(level).unwrapped
    env.reset(seed=seed)
    return env


_SPACES_RE = re.compile(r"\s+")
_TRAILING_RE = re.compile(r"[\s.!;,`'\"]+$")
# AgentGym names doors with their state ("red closed door 1") and says "pickup".
_DOOR_STATE_RE = re.compile(r"\b(open|closed|locked) door\b")


def normalise_action(action: str) -> str:
    """Lower-case, single spaces, no trailing punctuation or quotes; AgentGym spellings
    (``pickup``, ``the``, door states in names) mapped to this env's."""
    text = _SPACES_RE.sub(" ", action.strip().strip("`'\"").lower())
    text = _TRAILING_RE.sub("", text)
    text = re.sub(r"^pickup\b", "pick up", text)
    text = re.sub(r"^(go to|pick up|go through|toggle and go through) the ", r"\1 ", text)
    return _DOOR_STATE_RE.sub("door", text)


_TARGET_RE = re.compile(
    r"^(go to|pick up|go through|toggle and go through) "
    rf"({'|'.join(COLORS)}) ({'|'.join(_OBJECT_TYPES)}) ([0-9]+)$"
)
_VERB_RE = re.compile(r"^(go to|pick up|go through|toggle and go through)\b")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one env action did."""

    message: str
    reward: float = 0.0
    done: bool = False
    success: bool = False
    primitives: int = 0
    valid: bool = True


State = tuple[int, int, int]


class BabyAIGame:
    """One BabyAI level instance, its known map and the high-level action compiler.

    ``on_primitive`` (if given to :meth:`execute`) is called after every primitive move
    with the primitive's number; the oracle uses it to keep minigrid's bot in step.
    """

    def __init__(self, level: str, seed: int) -> None:
        self.level = level
        self.seed = seed
        self.env = make_level(level, seed)
        self.width = int(self.env.width)
        self.height = int(self.env.height)
        self.known: set[tuple[int, int]] = set()
        self.visible: set[tuple[int, int]] = set()
        self.steps = 0
        self.ended = False
        self.success = False
        self.reward = 0.0
        self._actions: dict[str, list[int]] | None = None
        self._reasons: dict[str, str] = {}
        self._objects: list[VisibleObject] | None = None
        self._observe()

    # ------------------------------------------------------------------ state

    @property
    def mission(self) -> str:
        return str(self.env.mission)

    @property
    def agent(self) -> State:
        x, y = self.env.agent_pos
        return int(x), int(y), int(self.env.agent_dir)

    def carrying(self) -> tuple[str, str] | None:
        obj = self.env.carrying
        return None if obj is None else (str(obj.color), str(obj.type))

    def cell(self, x: int, y: int) -> Any:
        if 0 <= x < self.width and 0 <= y < self.height:
            return self.env.grid.get(x, y)
        return None

    def front(self) -> tuple[int, int]:
        x, y, d = self.agent
        dx, dy = _DIR_VEC[d]
        return x + dx, y + dy

    def _observe(self) -> None:
        env = self.env
        _, vis_mask = env.gen_obs_grid()
        view = int(env.agent_view_size)
        x, y, d = self.agent
        fx, fy = _DIR_VEC[d]
        rx, ry = -fy, fx
        top_x = x + fx * (view - 1) - rx * (view // 2)
        top_y = y + fy * (view - 1) - ry * (view // 2)
        visible: set[tuple[int, int]] = set()
        for vj in range(view):
            for vi in range(view):
                if not vis_mask[vi, vj]:
                    continue
                ax, ay = top_x - fx * vj + rx * vi, top_y - fy * vj + ry * vi
                if 0 <= ax < self.width and 0 <= ay < self.height:
                    visible.add((ax, ay))
        self.visible = visible
        self.known |= visible
        self._actions = None
        self._objects = None

    def objects(self) -> list[VisibleObject]:
        """Visible doors, keys, balls and boxes, nearest first, with their ids."""
        if self._objects is not None:
            return self._objects
        x, y, d = self.agent
        fx, fy = _DIR_VEC[d]
        rx, ry = -fy, fx
        found: list[tuple[int, int, int, Any, tuple[int, int]]] = []
        for px, py in self.visible:
            if (px, py) == (x, y):
                continue
            cell = self.env.grid.get(px, py)
            if cell is None or cell.type not in _OBJECT_TYPES:
                continue
            dx, dy = px - x, py - y
            found.append((dx * fx + dy * fy, dx * rx + dy * ry, abs(dx) + abs(dy), cell, (px, py)))
        found.sort(key=lambda f: (f[2], f[0], f[1]))
        counts: dict[tuple[str, str], int] = {}
        result: list[VisibleObject] = []
        for ahead, right, _, cell, pos in found:
            key = (str(cell.color), str(cell.type))
            counts[key] = counts.get(key, 0) + 1
            state = ""
            if cell.type == "door":
                state = "locked" if cell.is_locked else "open" if cell.is_open else "closed"
            result.append(
                VisibleObject(
                    name=f"{key[0]} {key[1]} {counts[key]}",
                    type=key[1],
                    color=key[0],
                    state=state,
                    pos=pos,
                    ahead=ahead,
                    right=right,
                )
            )
        self._objects = result
        return result

    def _thing_name(self, pos: tuple[int, int]) -> str:
        for obj in self.objects():
            if obj.pos == pos:
                return object_phrase(obj)
        cell = self.cell(*pos)
        return "a wall" if cell is None or cell.type == "wall" else f"a {cell.color} {cell.type}"

    def ahead_text(self) -> str:
        x, y, d = self.agent
        dx, dy = _DIR_VEC[d]
        k = 1
        while (x + k * dx, y + k * dy) in self.visible:
            pos = (x + k * dx, y + k * dy)
            if self.env.grid.get(*pos) is not None:
                thing = self._thing_name(pos)
                if k == 1:
                    return f"Right in front of you is {thing}."
                return f"Straight ahead, {k} steps away, is {thing}."
            k += 1
        return "The way straight ahead is clear as far as you can see."

    def scene(self) -> str:
        return describe_scene(self.objects(), self.ahead_text(), self.carrying())

    # ------------------------------------------------------------------ planning

    def _passable(self, x: int, y: int) -> bool:
        if (x, y) not in self.known:
            return False
        if not (0 <= x < self.width and 0 <= y < self.height):
            return False
        cell = self.env.grid.get(x, y)
        return cell is None or (cell.type == "door" and bool(cell.is_open))

    def plan(self, goal: Callable[[int, int, int], bool]) -> list[int] | None:
        """Shortest primitive sequence (turns and forward moves) to a state meeting ``goal``."""
        start = self.agent
        if goal(*start):
            return []
        previous: dict[State, tuple[State, int] | None] = {start: None}
        queue: deque[State] = deque([start])
        while queue:
            state = queue.popleft()
            x, y, d = state
            dx, dy = _DIR_VEC[d]
            moves: list[tuple[int, State]] = []
            if self._passable(x + dx, y + dy):
                moves.append((FORWARD, (x + dx, y + dy, d)))
            moves.append((LEFT, (x, y, (d - 1) % 4)))
            moves.append((RIGHT, (x, y, (d + 1) % 4)))
            for prim, nxt in moves:
                if nxt in previous:
                    continue
                previous[nxt] = (state, prim)
                if goal(*nxt):
                    path: list[int] = []
                    cur: State = nxt
                    while (link := previous[cur]) is not None:
                        cur, step = link
                        path.append(step)
                    return path[::-1]
                queue.append(nxt)
        return None

    def plan_facing(self, pos: tuple[int, int]) -> list[int] | None:
        px, py = pos

        def facing(x: int, y: int, d: int) -> bool:
            return (x + _DIR_VEC[d][0], y + _DIR_VEC[d][1]) == (px, py)

        return self.plan(facing)

    # ------------------------------------------------------------------ actions

    def _compute_actions(self) -> None:
        actions: dict[str, list[int]] = {"turn left": [LEFT], "turn right": [RIGHT]}
        reasons: dict[str, str] = {}
        carrying = self.env.carrying
        fpos = self.front()
        front = self.cell(*fpos)
        in_grid = 0 <= fpos[0] < self.width and 0 <= fpos[1] < self.height
        if in_grid and (front is None or (front.type == "door" and front.is_open)):
            actions["move forward"] = [FORWARD]
        else:
            reasons["move forward"] = (
                f"You cannot move forward: {self._thing_name(fpos)} is in the way."
            )
        if front is not None and front.type in _PICKABLE and carrying is None:
            actions["pick up"] = [PICKUP]
        elif carrying is not None:
            reasons["pick up"] = (
                f"You cannot pick anything up: you already carry a {carrying.color} "
                f"{carrying.type}. Drop it first."
            )
        else:
            reasons["pick up"] = "There is nothing you can pick up right in front of you."
        if carrying is not None and in_grid and front is None:
            actions["drop"] = [DROP]
        elif carrying is None:
            reasons["drop"] = "You cannot drop anything: you are not carrying anything."
        else:
            reasons["drop"] = (
                f"You cannot drop the {carrying.color} {carrying.type}: "
                f"{self._thing_name(fpos)} is right in front of you."
            )
        toggle_reason = self._toggle_problem(front)
        if toggle_reason is None:
            actions["toggle"] = [TOGGLE]
        else:
            reasons["toggle"] = toggle_reason
        for obj in self.objects():
            self._object_actions(obj, actions, reasons)
        actions[CHECK] = []
        self._actions, self._reasons = actions, reasons

    def _toggle_problem(self, front: Any) -> str | None:
        if front is None or front.type not in ("door", "box"):
            return "There is nothing you can toggle right in front of you."
        if front.type == "door" and front.is_locked:
            carrying = self.env.carrying
            if carrying is None or carrying.type != "key" or carrying.color != front.color:
                return (
                    f"The {front.color} door is locked: you need to carry a {front.color} "
                    "key to open it."
                )
        return None

    def _object_actions(
        self, obj: VisibleObject, actions: dict[str, list[int]], reasons: dict[str, str]
    ) -> None:
        name = obj.name
        no_path = f"You cannot reach the {name}: no known path leads to it."
        path = self.plan_facing(obj.pos)
        go = f"go to {name}"
        if path is None:
            reasons[go] = no_path
        else:
            # Already facing it: "go to" waits one step (minigrid's "done" primitive), which
            # lets a "go to" mission register that the agent is there.
            actions[go] = path or [DONE]
        if obj.type in _PICKABLE:
            pick = f"pick up {name}"
            carrying = self.env.carrying
            if carrying is not None:
                reasons[pick] = (
                    f"You cannot pick up the {name}: you already carry a {carrying.color} "
                    f"{carrying.type}. Drop it first."
                )
            elif path is None:
                reasons[pick] = no_path
            else:
                actions[pick] = [*path, PICKUP]
            return
        if obj.type != "door":
            return
        through = f"go through {name}"
        toggle_through = f"toggle and go through {name}"
        if obj.state == "open":
            reasons[toggle_through] = f'The {name} is already open: use "{through}".'
            target = obj.pos
            walk = self.plan(lambda x, y, d: (x, y) == target)
            if walk is None:
                reasons[through] = no_path
            elif not walk:
                reasons[through] = f"You are already in the doorway of the {name}."
            else:
                actions[through] = walk
            return
        reasons[through] = f'The {name} is {obj.state}: use "{toggle_through}".'
        problem = self._toggle_problem(self.cell(*obj.pos))
        if problem is not None:
            reasons[toggle_through] = problem
        elif path is None:
            reasons[toggle_through] = no_path
        else:
            actions[toggle_through] = [*path, TOGGLE, FORWARD]

    def available(self) -> dict[str, list[int]]:
        """Every action possible now, with its primitive moves (``check ...`` has none)."""
        if self._actions is None:
            self._compute_actions()
        assert self._actions is not None
        return self._actions

    def action_names(self) -> list[str]:
        return list(self.available())

    def observation_text(self, lead: str) -> str:
        return f"{lead}\n{self.scene()}\n{format_actions(self.action_names())}"

    # ------------------------------------------------------------------ stepping

    def primitive(self, prim: int, *, observe: bool = True) -> None:
        """Take one primitive move in minigrid and update the episode's outcome.

        ``observe=False`` skips updating the view and known map (for throw-away roll-outs).
        """
        _, reward, terminated, truncated, _ = self.env.step(prim)
        self.steps += 1
        if observe:
            self._observe()
        if terminated and reward > 0:
            self.ended, self.success, self.reward = True, True, float(reward)
        elif truncated:
            # Out of minigrid's step budget (max_steps): the episode ends unsolved.
            self.ended, self.success, self.reward = True, False, 0.0
        # A "failure" verdict (terminated with reward 0: a strict level's wrong door or
        # wrong order) does not end the episode, as in AgentGym: play goes on.

    def execute(self, action: str, on_primitive: Callable[[int], None] | None = None) -> Outcome:
        """Perform one env action (any spelling :func:`normalise_action` accepts)."""
        if self.ended:
            raise EnvError("the BabyAI episode has ended; reset first")
        name = normalise_action(action)
        if name.startswith("check"):
            return Outcome(message=format_actions(self.action_names()))
        available = self.available()
        prims = available.get(name)
        if prims is None:
            return Outcome(message=self._unavailable(name, action), valid=False)
        done_before = self.steps
        for prim in prims:
            self.primitive(prim)
            if on_primitive is not None:
                on_primitive(prim)
            if self.ended:
                break
        count = self.steps - done_before
        moves = f"{count} primitive move{'' if count == 1 else 's'}"
        if self.success:
            message = f'You did "{name}" ({moves}). The goal is achieved: the task is completed.'
        elif self.ended:
            message = f'You did "{name}" ({moves}). You have run out of steps for this task.'
        else:
            message = f'You did "{name}" ({moves}).'
        return Outcome(
            message=message,
            reward=self.reward if self.success else 0.0,
            done=self.ended,
            success=self.success,
            primitives=count,
        )

    def _unavailable(self, name: str, raw: str) -> str:
        reason = self._reasons.get(name)
        if reason is not None:
            return reason
        target = _TARGET_RE.match(name)
        if target is not None:
            obj = f"{target.group(2)} {target.group(3)} {target.group(4)}"
            if not any(o.name == obj for o in self.objects()):
                return f'There is no "{obj}" in view. Refer to objects by the ids shown.'
            return f'You cannot "{name}": that does not apply to the {obj}.'
        shown = raw.strip() if len(raw.strip()) <= 80 else raw.strip()[:77] + "..."
        if _VERB_RE.match(name):
            return (
                f'"{shown}" does not name an object in view. Write it as '
                '"<verb> <color> <type> <number>", e.g. "go to red ball 1".'
            )
        return f'"{shown}" is not a valid action.'


def parse_babyai_action(text: str) -> str:
    """ReAct output -> a normalised action (lower case, single spaces, AgentGym spellings
    mapped). Whether the action applies is the env's business, not the parser's."""
    action = normalise_action(parse_react_action(text))
    if not action:
        raise ActionParseError('"Action:" is empty. Write one action, e.g. "turn left".')
    if "\n" in action or len(action) > 200:
        raise ActionParseError('Write exactly one action after "Action:", e.g. "move forward".')
    return action
