"""The textworld entry point: its spec and plugin (the env is in :mod:`.env`)."""

from __future__ import annotations

from gymux.env_plugins.builtin.textworld.env import TextWorldEnv, parse_textworld_action
from gymux.env_plugins.builtin.textworld.games import TEXTWORLD_VERSION
from gymux.env_plugins.builtin.textworld.oracle import TextWorldOracle
from gymux.env_plugins.builtin.textworld.tasks import MAX_TURNS, TEST_IDS, TRAIN_IDS, pregenerate
from gymux.env_plugins.protocol import EnvPlugin, EnvSpec, SuccessRule, splits_from

__all__ = ["TEXTWORLD_SPEC", "plugin"]

_INSTRUCTION = """\
You are in a house and you are hungry. Your task is to cook a meal and eat it. Find the \
cookbook in the kitchen and read it (examine cookbook) to learn the recipe. Collect its \
ingredients, prepare each one exactly as the recipe says, then prepare the meal in the \
kitchen and eat it. Spoiling an ingredient (for example cooking it twice burns it) or eating \
the wrong thing loses the game.

Useful commands:
- look, inventory, examine <something>
- go north / go south / go east / go west
- open <container or door>, close <container or door>
- take <object>, take <object> from <container or supporter>, drop <object>
- put <object> on <supporter>, insert <object> into <container>
- slice / dice / chop <food> with <knife>
- cook <food> with <stove> (fries it), cook <food> with <oven> (roasts it), \
cook <food> with <BBQ or toaster> (grills it)
- prepare meal, eat <food>

After each observation you get the list of AVAILABLE ACTIONS for the current state; other \
commands are allowed but usually do nothing.

Answer in this format every turn, with exactly one command after "Action:":

Thought:
your reasoning about what to do next

Action:
your next command

For example:

Thought:
The recipe is in the cookbook, so I should read it first.

Action:
examine cookbook"""

TEXTWORLD_SPEC = EnvSpec(
    id="textworld",
    version="1",
    instruction=_INSTRUCTION,
    action_format="Action: <a TextWorld command, e.g. take red apple from fridge>",
    splits=splits_from({"test": TEST_IDS, "train": TRAIN_IDS}),
    max_turns=MAX_TURNS,
    reward_range=(0.0, 1.0),
    success=SuccessRule(threshold=1.0),
    example_actions=["look", "inventory", "examine cookbook", "go north", "open fridge"],
    description=(
        f"TextWorld {TEXTWORLD_VERSION} household cooking games generated offline "
        "(ALFWorld-like): read the recipe, fetch and prepare the ingredients, eat the meal; "
        "reward 1.0 when won."
    ),
)

plugin = EnvPlugin(
    TEXTWORLD_SPEC,
    TextWorldEnv,
    execution="process",
    parse_action=parse_textworld_action,
    oracle=TextWorldOracle,
    max_instances=16,
    prepare=pregenerate,
    requires={"textworld": "pip install 'gymux[textworld]'"},
)
