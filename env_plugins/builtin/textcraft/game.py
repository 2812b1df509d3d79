"""TextCraft's tasks, commands and rules: everything but the env wrapper and the oracle.

Shared by the environment (:mod:`.env`) and its oracle (:mod:`.oracle`); the module
docstring of :mod:`.env` describes the game.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gymux.env_plugins.builtin.textcraft.recipes import (
    Recipe,
    RecipeBook,
    display_name,
    item_id,
    recipe_book,
    stable_rank,
)
from gymux.env_plugins.parsing import parse_react_action
from gymux.env_plugins.protocol import ActionParseError, EnvError

__all__ = [
    "MAX_TURNS",
    "ORACLE_MAX_STEPS",
    "TEST_IDS",
    "TRAIN_IDS",
    "Command",
    "TextCraftGame",
    "TextCraftTask",
    "goal_order",
    "parse_command",
    "parse_textcraft_action",
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
