"""The maze entry point: its spec and plugin (the env is in :mod:`.env`)."""

from __future__ import annotations

from gymux.env_plugins.builtin.maze.env import ACTIONS, MazeEnv, parse_maze_action
from gymux.env_plugins.builtin.maze.layouts import TEST_IDS, TRAIN_IDS
from gymux.env_plugins.builtin.maze.oracle import MazeOracle
from gymux.env_plugins.protocol import EnvPlugin, EnvSpec, SuccessRule, splits_from

__all__ = ["MAZE_SPEC", "plugin"]

_INSTRUCTION = """\
You are an expert maze solver. You are in a maze drawn on a grid of cells; some cells are \
walls. Your objective is to reach the goal cell in as few moves as possible.

Positions are written as (row, col), counted from 0 at the top-left corner of the maze. \
Moving down increases your row by 1, moving up decreases it by 1; moving right increases \
your column by 1, moving left decreases it by 1.

At each step you are told where the goal is, where you are, and in which directions there \
are walls right next to you. For example: "The goal is at position (1, 6). Your current \
position is at position (3, 1). There are walls above you and to your left." If you try to \
move into a wall you stay where you are and are told so. You have at most 15 moves.

Your possible actions are "move up", "move down", "move left" and "move right".

Think about your next move, then give exactly one action. Your answer must use this format:
Thought:
<your reasoning>

Action:
move up

Now let's start a new game. Answer with your thought and your action in the format above, \
strictly."""

MAZE_SPEC = EnvSpec(
    id="maze",
    version="2",
    instruction=_INSTRUCTION,
    action_format="Thought:\n<reasoning>\n\nAction:\nmove <up|down|left|right>",
    splits=splits_from({"test": list(TEST_IDS), "train": list(TRAIN_IDS)}),
    max_turns=15,
    reward_range=(0.0, 1.0),
    success=SuccessRule(threshold=1.0),
    example_actions=list(ACTIONS),
    # ids 0..25 are AgentGym's maze games 0..25; 26.. are gymux's own (AgentGym has none).
    agentgym_ids="same",
    description="Walk through a small text grid maze to the goal cell.",
)

plugin = EnvPlugin(
    MAZE_SPEC,
    MazeEnv,
    execution="async",
    parse_action=parse_maze_action,
    oracle=MazeOracle,
    max_instances=1024,
)
