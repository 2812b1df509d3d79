"""The sciworld entry point: its spec and plugin (the env is in :mod:`.env`)."""

from __future__ import annotations

from gymux.env_plugins.builtin.sciworld.env import (
    ACTION_TEMPLATES,
    SciWorldEnv,
    parse_sciworld_action,
)
from gymux.env_plugins.builtin.sciworld.oracle import SciWorldOracle
from gymux.env_plugins.builtin.sciworld.tasks import INSTALL_HINT, split_ids
from gymux.env_plugins.protocol import EnvPlugin, EnvSpec, SuccessRule, splits_from

__all__ = ["SCIWORLD_SPEC", "plugin"]

_INSTRUCTION = (
    "You are an agent in ScienceWorld, a text simulation of a house with a kitchen, a "
    "workshop, a greenhouse and other rooms, where you carry out elementary science "
    "experiments. Each turn you receive an observation and answer with exactly one action "
    "that brings you closer to completing the task. The actions you can take (OBJ and LOC "
    "are objects and locations named in the observations):\n"
    + "\n".join(f"- {template}: {meaning}" for template, meaning in ACTION_TEMPLATES)
    + "\n\nIf the simulator asks which of several matching actions you mean, answer with the "
    "number of the one you intend.\n\n"
    "Answer in this format every turn:\n\n"
    "Thought:\nyour reasoning about what to do next\n\n"
    "Action:\nyour next action\n\n"
    "For example:\n\n"
    "Thought:\nI need to find a thermometer first; the kitchen may have one.\n\n"
    "Action:\nopen door to kitchen"
)

SCIWORLD_SPEC = EnvSpec(
    id="sciworld",
    version="2",
    instruction=_INSTRUCTION,
    action_format="Action: <one ScienceWorld action, e.g. open door to kitchen>",
    splits=splits_from({"test": split_ids("test"), "train": split_ids("train")}),
    max_turns=200,
    reward_range=(0.0, 100.0),
    success=SuccessRule(threshold=100.0),
    example_actions=["look around", "inventory", "task", "wait1"],
    # ids 0..4638 are AgentGym's data_idx 0..4638; 4639.. (the excluded types) are gymux's.
    agentgym_ids="same",
    description=(
        "ScienceWorld (scienceworld 1.2.3): elementary science experiments in a text "
        "simulator; reward = task score 0..100, success = 100."
    ),
)

plugin = EnvPlugin(
    SCIWORLD_SPEC,
    SciWorldEnv,
    execution="thread",
    parse_action=parse_sciworld_action,
    oracle=SciWorldOracle,
    max_instances=4,
    requires={"scienceworld": INSTALL_HINT},
)
