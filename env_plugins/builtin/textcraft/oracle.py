"""The TextCraft oracle: plans from the gold recipe tree, after replaying the conversation."""

from __future__ import annotations

from gymux.env_plugins.builtin.textcraft.game import (
    Command,
    TextCraftGame,
    parse_textcraft_action,
    textcraft_task,
)
from gymux.env_plugins.builtin.textcraft.recipes import (
    Ingredient,
    Recipe,
    RecipeBook,
    display_name,
)
from gymux.env_plugins.protocol import ActionParseError, EnvError
from gymux.errors import PolicyError
from gymux.messages import PolicyRequest
from gymux.react import format_react

__all__ = ["TextCraftOracle", "oracle_plan"]


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


class TextCraftOracle:
    """Crafts the goal from the gold recipe tree; keeps no per-episode state.

    Each call replays the assistant messages' actions (as the plugin's parser reads them)
    on a private :class:`TextCraftGame` of the request's task to know the inventory, then
    answers the first step of :func:`oracle_plan`.
    """

    version = "textcraft-planner-1"

    async def solve(self, request: PolicyRequest) -> str:
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
        return format_react(thought, str(step))
