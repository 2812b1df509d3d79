"""The babyai entry point: its spec and plugin (the env is in :mod:`.env`)."""

from __future__ import annotations

from gymux.env_plugins.builtin.babyai.actions import CHECK, parse_babyai_action
from gymux.env_plugins.builtin.babyai.env import MAX_TURNS, TEST_SIZE, TRAIN_END, BabyAIEnv
from gymux.env_plugins.builtin.babyai.oracle import BabyAIOracle
from gymux.env_plugins.builtin.babyai.text import LEVEL_COUNT
from gymux.env_plugins.protocol import EnvPlugin, EnvSpec, SuccessRule, splits_from

__all__ = ["BABYAI_SPEC", "plugin"]

_INSTRUCTION = """\
You are an agent in a grid world of rooms, doors and objects (keys, balls and boxes). Each \
turn you get an observation: what you see in front of you, what is straight ahead, what \
you carry, and the actions available now. Your goal is given at the start ("Your goal: \
..."); achieve it in as few actions as you can.

Objects in view have ids such as "red ball 1" or "blue door 2" (colour, type, and a number \
counting that colour and type from the nearest); ids can change as you move, so use the \
ones of the latest observation. Actions:
- turn left / turn right: turn on the spot.
- move forward: step one cell ahead.
- go to <color> <type> <n>: walk up to the object and face it.
- pick up <color> <type> <n>: walk to a key, ball or box and pick it up (you can carry one \
object at a time).
- go through <color> door <n>: walk into the doorway of an open door.
- toggle and go through <color> door <n>: walk to a closed door, open it and step into the \
doorway. A locked door opens only while you carry a key of its colour.
- toggle: open (or close) the door right in front of you; opens a box in front of you.
- drop: put down what you carry, on the empty cell in front of you.
- pick up: pick up the object right in front of you.
- check available actions: list the actions you can take now.

Answer in this format every turn:

Thought:
your reasoning

Action:
one action

For example:

Thought:
The red ball is in view and my goal is to go to it.

Action:
go to red ball 1"""

BABYAI_SPEC = EnvSpec(
    id="babyai",
    version="2",
    instruction=_INSTRUCTION,
    action_format="Action: <turn left | turn right | move forward | go to <obj> | "
    "pick up <obj> | go through <door> | toggle and go through <door> | toggle | drop | "
    "check available actions>",
    splits=splits_from({"test": range(0, TEST_SIZE), "train": range(TEST_SIZE, TRAIN_END)}),
    max_turns=MAX_TURNS,
    reward_range=(0.0, 1.0),
    # Any success scores 1 - 0.9 * steps / max_steps >= 0.1; failures score 0.
    success=SuccessRule(threshold=0.05),
    example_actions=["turn left", "turn right", "move forward", CHECK],
    # Checked against AgentGym's levels under minigrid 2.3.1: see text.AGENTGYM_LEVELS.
    agentgym_ids=(
        "same: level id % 40, seed id // 40, as AgentGym; of ids 0-3999 only train ids 155, "
        "156 and 2994 differ (same grid, another mission under minigrid 3.2.0)"
    ),
    description=(
        f"AgentGym's BabyAI: {LEVEL_COUNT} minigrid levels in text, high-level actions "
        "compiled to primitive moves; score 1 - 0.9 * steps / max_steps on success."
    ),
)

plugin = EnvPlugin(
    BABYAI_SPEC,
    BabyAIEnv,
    execution="process",
    parse_action=parse_babyai_action,
    oracle=BabyAIOracle,
    max_instances=16,
    requires={
        "minigrid": "pip install 'gymux[babyai]'",
        "gymnasium": "pip install 'gymux[babyai]'",
    },
)
