"""The BabyAI oracle: minigrid's BabyAI bot, playing through the env's high-level actions.

The module docstring of :mod:`.env` describes how it chooses and what it achieves.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections import OrderedDict, deque
from typing import Any

import anyio.to_thread

from gymux.env_plugins.builtin.babyai.actions import (
    CHECK,
    DONE,
    DROP,
    FORWARD,
    LEFT,
    PRIMITIVE_NAMES,
    RIGHT,
    TOGGLE,
    BabyAIGame,
    load_minigrid,
    parse_babyai_action,
)
from gymux.env_plugins.builtin.babyai.text import level_and_seed
from gymux.env_plugins.protocol import ActionParseError
from gymux.messages import PolicyRequest
from gymux.react import format_react

__all__ = ["BabyAIOracle", "oracle_action"]

#: Longest bot roll-out (primitive moves) the oracle simulates to cost an action.
_ROLLOUT_LIMIT = 600
#: How many of the best-looking actions the oracle looks one action beyond.
_LOOKAHEAD = 3


def _bot_module() -> Any:
    load_minigrid()
    from minigrid.utils import baby_ai_bot

    return baby_ai_bot


@functools.cache
def _gold_bot_class() -> Any:
    """minigrid's bot, with paths allowed through closed (unlocked) doors.

    Its own search stops at every closed door, so it explores room by room; with the gold
    map (see :meth:`_Replay._reveal`) it can head straight for its target and open the doors
    on the way (its go-next-to subgoal already opens a closed door it has to pass).
    """
    bots = _bot_module()

    class GoldBot(bots.BabyAIBot):  # type: ignore[misc,name-defined]
        stack: list[Any]

        def _breadth_first_search(
            self, initial_states: Any, accept_fn: Any, ignore_blockers: bool
        ) -> tuple[Any, Any, dict[tuple[int, int], Any]]:
            # The bot's search, made cheaper without changing its answers: cells are read
            # straight from the grid's list and the mask from a Python copy, and a cell
            # already reached is not queued again (it would be skipped when popped).
            grid = self.mission.unwrapped.grid
            cells, width, height = grid.grid, grid.width, grid.height
            seen = self.vis_mask.tolist()
            queue: deque[tuple[int, int, int, int, Any]] = deque(
                (int(s[0]), int(s[1]), int(s[2]), int(s[3]), None) for s in initial_states
            )
            came_from: dict[tuple[int, int], Any] = {}
            pop, push = queue.popleft, queue.append
            while queue:
                i, j, di, dj, prev = pop()
                here = (i, j)
                if here in came_from:
                    continue
                came_from[here] = prev
                cell = (
                    cells[j * width + i] if 0 <= i < width and 0 <= j < height else grid.get(i, j)
                )
                if accept_fn(here, cell):
                    path = [here]
                    while came_from[path[-1]] is not None:
                        path.append(came_from[path[-1]])
                    return path, here, came_from
                if not seen[i][j]:
                    continue
                if cell is not None:
                    kind = cell.type
                    if kind == "wall":
                        continue
                    if kind == "door":
                        if cell.is_locked:
                            continue
                    elif not ignore_blockers:
                        continue
                for k, m in ((di, dj), (dj, di), (-dj, -di), (-di, -dj)):
                    if (i + k, j + m) not in came_from:
                        push((i + k, j + m, k, m, here))
            return None, None, came_from

        def __init__(self, mission: Any) -> None:
            super().__init__(mission)
            self.stack = _GoldStack(self, self.stack)

    class GoldExplore(bots.ExploreSubgoal):  # type: ignore[misc,name-defined]
        """Exploration with the gold map: every cell reachable without a key is already
        known, so the only way on is through a locked door (go for it, and its key)."""

        def replan_before_action(self) -> Any:
            bot = self.bot
            _, unseen, _ = bot._shortest_path(
                lambda pos, cell: not bot.vis_mask[pos], try_with_blockers=True
            )
            if unseen:
                return super().replan_before_action()
            _, door_pos, _ = bot._shortest_path(
                lambda pos, cell: cell is not None and cell.type == "door" and cell.is_locked,
                try_with_blockers=True,
            )
            if not door_pos:
                return super().replan_before_action()
            door = bot.mission.unwrapped.grid.get(*door_pos)
            carrying = self.carrying
            has_key = bool(carrying and carrying.type == "key" and carrying.color == door.color)
            bot.stack.pop()
            bot.stack.append(bots.OpenSubgoal(bot, reason="KeepKey" if has_key else None))
            bot.stack.append(bots.GoNextToSubgoal(bot, door, reason="Open"))
            return None

    class _GoldStack(list):  # type: ignore[type-arg]
        """The bot's subgoal stack, swapping its exploration subgoals for GoldExplore."""

        def __init__(self, bot: Any, items: list[Any]) -> None:
            super().__init__(items)
            self._bot = bot

        def __deepcopy__(self, memo: dict[int, Any]) -> Any:
            # Copies keep their subgoals as they are (no swapping on the way in).
            new = type(self).__new__(type(self))
            memo[id(self)] = new
            new._bot = copy.deepcopy(self._bot, memo)
            list.extend(new, (copy.deepcopy(item, memo) for item in self))
            return new

        def append(self, item: Any) -> None:
            if type(item) is bots.ExploreSubgoal:
                item = GoldExplore(self._bot)
            elif (
                type(item) is bots.GoNextToSubgoal
                and item.reason is None
                and self
                and type(self[-1]) is bots.DropSubgoal
                and _just_unlocked(self._bot)
            ):
                # The walk to where the key of a just-unlocked door gets dropped.
                item = GoldDropWalk(self._bot, item.datum)
            super().append(item)

    class GoldDropWalk(bots.GoNextToSubgoal):  # type: ignore[misc,name-defined]
        """The walk to a spot where the bot will drop what it carries: stop as soon as the
        cell ahead is free and clear of doors (the bot's own choice can be far away)."""

        def replan_before_action(self) -> Any:
            fx, fy = (int(v) for v in self.fwd_pos)
            grid = self.bot.mission.unwrapped.grid
            if self.fwd_cell is None and _clear_of_doors(grid, fx, fy):
                self.bot.stack.pop()
                return None
            return super().replan_before_action()

    return GoldBot


def _just_unlocked(bot: Any) -> bool:
    """Whether the agent faces an open door while carrying the key of its colour."""
    env = bot.mission.unwrapped
    front = env.grid.get(*env.front_pos)
    carrying = env.carrying
    return bool(
        front is not None
        and front.type == "door"
        and front.is_open
        and carrying is not None
        and carrying.type == "key"
        and carrying.color == front.color
    )


def _clear_of_doors(grid: Any, x: int, y: int) -> bool:
    """Whether none of the cells around ``(x, y)`` is a door (so a drop there blocks none)."""
    if not (0 < x < grid.width - 1 and 0 < y < grid.height - 1):
        return False
    for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
        cell = grid.get(nx, ny)
        if cell is not None and cell.type == "door":
            return False
    return True


def _key_in_box(game: BabyAIGame) -> tuple[int, int] | None:
    """Where a box hiding an object stands (KeyInBox), if any: the bot cannot open those."""
    grid = game.env.grid
    for x in range(game.width):
        for y in range(game.height):
            cell = grid.get(x, y)
            if cell is not None and cell.type == "box" and cell.contains is not None:
                return x, y
    return None


def _no_observation() -> None:
    return None


class _Replay:
    """A private copy of the episode with minigrid's bot following along."""

    def __init__(self, task_id: int) -> None:
        level, seed = level_and_seed(task_id)
        self.game = BabyAIGame(level, seed)
        # The replay never reads minigrid's observations (the game and the bot look at the
        # grid themselves), so spare minigrid from building one after every move.
        self.game.env.gen_obs = _no_observation
        self.bot: Any = None
        self.suggestion: int | None = None
        self.start_bot()

    def start_bot(self) -> None:
        """Make a fresh bot for the current state (not while a box still hides a key)."""
        self.bot, self.suggestion = None, None
        if self.game.ended or _key_in_box(self.game) is not None:
            return
        env = self.game.env
        try:
            bot = _gold_bot_class()(env)
            instr = env.instrs
            # PutNext...Carrying levels start with the object to move in hand; the bot would
            # look for it on the floor forever. Drop the "go to it, pick it up" subgoals.
            if (
                env.carrying is not None
                and type(instr).__name__ == "PutNextInstr"
                and any(o is env.carrying for o in instr.desc_move.obj_set)
            ):
                del bot.stack[-2:]
            self.bot = bot
            self._reveal()
            self.suggestion = bot.replan()
        except Exception:  # the bot gives up with asserts; the oracle falls back
            self.bot, self.suggestion = None, None

    def _reveal(self) -> None:
        """Gold knowledge: show the bot every cell it can reach without unlocking a door."""
        game, mask = self.game, self.bot.vis_mask
        grid = game.env.grid
        start = (int(game.env.agent_pos[0]), int(game.env.agent_pos[1]))
        seen = {start}
        todo = [start]
        while todo:
            x, y = todo.pop()
            mask[x, y] = True
            cell = grid.get(x, y)
            blocks = cell is not None and (
                cell.type == "wall" or (cell.type == "door" and cell.is_locked)
            )
            if blocks and (x, y) != start:
                continue
            for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if 0 <= nx < game.width and 0 <= ny < game.height and (nx, ny) not in seen:
                    seen.add((nx, ny))
                    todo.append((nx, ny))

    def after_primitive(self, prim: int) -> None:
        if self.bot is None or self.game.ended:
            return
        try:
            if prim == TOGGLE:
                self._reveal()
            self.suggestion = self.bot.replan(prim)
        except Exception:
            self.bot, self.suggestion = None, None

    def do(self, action: str) -> None:
        if not self.game.ended:
            self.game.execute(action, self.after_primitive)

    def rollout(self, limit: int) -> list[int] | None:
        """Follow the bot until the mission succeeds and return its primitive moves; ``None``
        if the bot gives up, the episode ends unsolved, or ``limit`` moves do not suffice."""
        moves: list[int] = []
        game = self.game
        while not game.success:
            if game.ended or self.bot is None or self.suggestion is None or len(moves) >= limit:
                return None
            prim = self.suggestion
            game.primitive(prim, observe=False)
            moves.append(prim)
            self.after_primitive(prim)
        return moves


def _turns_estimate(moves: list[int]) -> int:
    """Roughly how many env actions a run of primitive moves takes: a walk ending in a
    pick-up or a door opened and passed is one action ("pick up X", "toggle and go
    through X"); a drop after a walk, or a door opened without passing, takes two; a walk
    at the end is one ("go to X"); long walks take one action per 8 moves."""
    turns, walk = 0, 0
    for i, prim in enumerate(moves):
        if prim in (LEFT, RIGHT, FORWARD):
            walk += 1
            continue
        passes = prim == TOGGLE and i + 1 < len(moves) and moves[i + 1] == FORWARD
        turns += 1 + (walk - 1) // 8 if walk else 1
        if walk and (prim == DROP or (prim == TOGGLE and not passes)):
            turns += 1
        walk = 0
    if walk:
        turns += 1 + (walk - 1) // 8
    return turns


def _primitive_action(replay: _Replay, prim: int) -> str | None:
    """The env action that performs the bot's primitive ``prim`` now."""
    if prim == DONE:
        front = replay.game.front()
        for obj in replay.game.objects():
            if obj.pos == front:
                return f"go to {obj.name}"
        return None
    return PRIMITIVE_NAMES.get(prim)


def _box_phase_action(replay: _Replay, box: tuple[int, int]) -> str:
    """KeyInBox: walk to the box hiding the key and open it (the bot cannot)."""
    game = replay.game
    available = game.available()
    if game.front() == box and "toggle" in available:
        return "toggle"
    for obj in game.objects():
        name = f"go to {obj.name}"
        if obj.pos == box and name in available:
            return name
    return "turn left"


_Score = tuple[int, int, int, int]
#: A ranking: (score, action, the state after the action). Rankings kept in the cache keep
#: the states of the first ``_LOOKAHEAD`` actions only (the rest are ``None``).
_Ranking = list[tuple[_Score, str, "_Replay | None"]]


def _choose(
    replay: _Replay, ranked: _Ranking | None = None
) -> tuple[str, str, tuple[_Replay, _Ranking] | None]:
    """The action to take now, a one-line reason, and (when it can be reused) the state
    after that action with the ranking already computed from it.

    ``ranked`` is the ranking of ``replay`` if already known (from the cache).
    """
    box = _key_in_box(replay.game)
    if box is not None:
        return (
            _box_phase_action(replay, box),
            "A box hides the key I need; I open it first.",
            None,
        )
    # The states after each action equal a fresh replay of the longer history only if the
    # bot is not restarted here first (a restart happens where a replay has none).
    reusable = replay.bot is not None
    if replay.bot is None:
        replay.start_bot()
    if replay.bot is None or replay.suggestion is None:
        return "turn left", "I have no plan from here; I look around.", None
    if ranked is None:
        ranked = _rank(replay)
    if not ranked:
        action = _primitive_action(replay, replay.suggestion) or "turn left"
        return action, "I follow the bot's next move.", None
    (turns, _, _, _), choice, _ = ranked[0]
    if turns < 0:
        return choice, f'"{choice}" completes the goal.', None
    # Look one action further for the most promising few: the best pair wins.
    best: tuple[int, int, int] | None = None
    follows: dict[str, tuple[_Replay, _Ranking]] = {}
    for rank, (_, action, trial) in enumerate(ranked[:_LOOKAHEAD]):
        assert trial is not None
        # Ranking a state changes it only where it has no bot yet (it starts one).
        pristine = reusable and trial.bot is not None
        follow: _Ranking = _rank(trial)
        if pristine:
            follows[action] = (trial, follow)
        if not follow:
            continue
        (then_turns, then_moves, _, _), _, _ = follow[0]
        key = (max(then_turns, -1), then_moves, rank)
        if best is None or key < best:
            best, choice = key, action
    (turns, moves, _, _) = next(score for score, action, _ in ranked if action == choice)
    return (
        choice,
        f'After "{choice}" the plan needs about {turns} more actions ({moves} primitive moves).',
        follows.get(choice),
    )


def _rank(replay: _Replay) -> _Ranking:
    """The available actions with the bot's remaining plan after each, best first.

    An action's score is (estimated actions left, primitive moves left, its own moves,
    list position); an action that completes the goal scores -1 actions left. The bot's
    own next move is costed first, and roll-outs stop once they cannot beat the best so far.
    """
    if replay.bot is None:
        replay.start_bot()
    if replay.game.ended or replay.bot is None or replay.suggestion is None:
        return []
    default = _primitive_action(replay, replay.suggestion)
    names = replay.game.action_names()
    if default in names:
        names.remove(default)
        names.insert(0, default)
    ranked: _Ranking = []
    shortest: int | None = None
    for order, action in enumerate(names):
        if action == CHECK:
            continue
        trial = copy.deepcopy(replay)
        trial.do(action)
        prims = trial.game.steps - replay.game.steps
        if trial.game.success:
            ranked.append(((-1, 0, prims, order), action, trial))
            continue
        if trial.game.ended:
            continue
        limit = _ROLLOUT_LIMIT if shortest is None else min(_ROLLOUT_LIMIT, 2 * shortest + 24)
        # The roll-out uses up the trial; the few states the look-ahead needs are made
        # again below (replays are deterministic), which is cheaper than copying each.
        rest = trial.rollout(limit)
        if rest is None:
            continue
        shortest = len(rest) if shortest is None else min(shortest, len(rest))
        ranked.append(((_turns_estimate(rest), len(rest), prims, order), action, None))
    ranked.sort(key=lambda item: item[0])
    for i, (score, action, kept) in enumerate(ranked[:_LOOKAHEAD]):
        if kept is None:
            kept = copy.deepcopy(replay)
            kept.do(action)
            ranked[i] = (score, action, kept)
    return ranked


#: How many replayed states the oracle keeps (least recently used ones go first). An entry
#: holds up to 1 + _LOOKAHEAD level copies, about 1-2 MB on the big levels.
_CACHE_SIZE = 64


class _ReplayCache:
    """Deterministic replays, keyed by (task id, the exact actions taken so far).

    A bounded LRU, shared by the threads the oracle runs in: the oracle keeps no episode
    state of its own, only replays any call could recompute. An entry holds the replayed
    state and, where known, its ranking (from the previous turn's look-ahead). Entries are
    copied in and out, so callers never share one.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[int, tuple[str, ...]], tuple[_Replay, _Ranking | None]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(
        self, task_id: int, actions: tuple[str, ...]
    ) -> tuple[int, _Replay, _Ranking | None] | None:
        """The longest cached prefix of ``actions``: (its length, a copy of its state, a
        copy of its ranking if known and the prefix is all of ``actions``)."""
        with self._lock:
            for n in range(len(actions), -1, -1):
                entry = self._entries.get((task_id, actions[:n]))
                if entry is not None:
                    self._entries.move_to_end((task_id, actions[:n]))
                    break
            else:
                return None
        replay, ranked = entry
        if n < len(actions):
            ranked = None
        replay, ranked = copy.deepcopy((replay, ranked))
        return n, replay, ranked

    def put(
        self, task_id: int, actions: tuple[str, ...], replay: _Replay, ranked: _Ranking | None
    ) -> None:
        """Keep ``replay`` (and its ranking) for ``actions``; the cache takes them over: the
        caller must not change them afterwards."""
        if self.size <= 0:
            return
        if ranked is not None:
            ranked = [
                (score, action, trial if i < _LOOKAHEAD else None)
                for i, (score, action, trial) in enumerate(ranked)
            ]
        with self._lock:
            self._entries[(task_id, actions)] = (replay, ranked)
            self._entries.move_to_end((task_id, actions))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


_CACHE = _ReplayCache(_CACHE_SIZE)


def oracle_action(task_id: int, actions: list[str]) -> tuple[str, str]:
    """Replay ``actions`` (env actions, already parsed) on task ``task_id`` and choose the
    next one; returns ``(action, reason)``. Blocking and CPU-bound.

    Replays are cached (:class:`_ReplayCache`): a call extends the longest replay cached
    for a prefix of ``actions`` instead of starting over, and reuses the ranking the
    previous turn's look-ahead computed for this state. The answers are the same as
    without the cache.
    """
    history = tuple(actions)
    hit = _CACHE.get(task_id, history)
    ranked: _Ranking | None = None
    if hit is None:
        replay, done = _Replay(task_id), 0
    else:
        done, replay, ranked = hit
    for action in actions[done:]:
        if replay.game.ended:
            break
        replay.do(action)
    if done < len(history):
        _CACHE.put(task_id, history, copy.deepcopy(replay), None)
    action, reason, after = _choose(replay, ranked)
    if after is not None:
        _CACHE.put(task_id, (*history, action), *after)
    return action, reason


def _taken_actions(request: PolicyRequest) -> list[str]:
    taken: list[str] = []
    for message in request.messages:
        if message.role != "assistant":
            continue
        try:
            taken.append(parse_babyai_action(message.content))
        except ActionParseError:
            continue  # e.g. the "OK" acknowledgement of the instruction
    return taken


class BabyAIOracle:
    """minigrid's BabyAI bot, playing through the env's high-level actions.

    Stateless: each call replays the actions of the conversation's assistant messages on
    the task's level and chooses in a worker thread. Only deterministic replays are kept
    between calls (a bounded, thread-safe cache keyed by the exact action history).
    """

    version = "babyai-bot-1"

    async def solve(self, request: PolicyRequest) -> str:
        action, reason = await anyio.to_thread.run_sync(
            oracle_action, request.task_id, _taken_actions(request)
        )
        return format_react(reason, action)
