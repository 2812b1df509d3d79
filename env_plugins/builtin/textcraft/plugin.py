"""The textcraft entry point: its spec and plugin (the env is in :mod:`.env`)."""

from __future__ import annotations

from gymux.env_plugins.builtin.textcraft.env import TextCraftEnv
from gymux.env_plugins.builtin.textcraft.game import (
    MAX_TURNS,
    TEST_IDS,
    TRAIN_IDS,
    goal_order,
    parse_textcraft_action,
)
from gymux.env_plugins.builtin.textcraft.oracle import TextCraftOracle
from gymux.env_plugins.protocol import EnvPlugin, EnvSpec, SuccessRule, splits_from

__all__ = ["TEXTCRAFT_SPEC", "plugin"]

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
    agentgym_ids=(
        "no: AgentGym's goal for an id follows the os.listdir order of its recipe files, "
        "which differs between filesystems (all of ids 0-99 change between name order and "
        "ext4 hash order), and its recipe lists follow Python set order (PYTHONHASHSEED); "
        "gymux orders the same 544 goals by depth and sha256"
    ),
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
