"""The lmrl-wordle entry point: its spec and plugin (the env is in :mod:`.env`)."""

from __future__ import annotations

from gymux.env_plugins.builtin.lmrl_wordle.env import (
    LmrlWordleEnv,
    parse_lmrl_wordle_action,
)
from gymux.env_plugins.builtin.lmrl_wordle.game import N_CHARS, N_TRIES, spaced, vocabulary
from gymux.env_plugins.builtin.lmrl_wordle.oracle import LmrlWordleOracle
from gymux.env_plugins.protocol import EnvPlugin, EnvSpec, SuccessRule, splits_from

__all__ = ["LMRL_WORDLE_SPEC", "TEST_SEEDS", "TRAIN_SEEDS", "plugin"]

#: The ``test`` split: seeds 0..24, as many as AgentEval's Wordle items (25). AgentGym's
#: repository gives the count, not the item ids, so these are the first 25 seeds.
TEST_SEEDS = range(0, 25)
#: The ``train`` split: seeds 25..9999. Any other seed is a valid game too (``gymux
#: serve-env`` resets to any seed, as AgentGym's server does).
TRAIN_SEEDS = range(25, 10_000)

_INSTRUCTION = f"""\
You are playing Wordle. Find a hidden {N_CHARS}-letter word in at most {N_TRIES} guesses, \
using as few as you can.

Write every guess as its letters separated by spaces, for example "s h i r e". After each \
guess the game answers with {N_CHARS} space-separated letters, one per position of your \
guess, for example "b y g g b":
- "g": the letter is in the hidden word at this position;
- "y": the letter is in the hidden word, but not at this position;
- "b": the letter is not in the hidden word.
A guess that is not a {N_CHARS}-letter word from the vocabulary below is answered with \
"invalid word" and still uses up one of your {N_TRIES} guesses.

The vocabulary (the only accepted words):
```
{chr(10).join(vocabulary())}
```

Answer in this format every turn:
Thought:
<your reasoning about which words still fit the feedback>

Action:
<your guess, letters separated by spaces>

For example:
Thought:
I will start with a word that uses common letters.

Action:
{spaced(vocabulary()[1])}"""

LMRL_WORDLE_SPEC = EnvSpec(
    id="lmrl-wordle",
    version="1",
    instruction=_INSTRUCTION,
    action_format="Thought:\n<reasoning>\n\nAction:\n<guess as spaced letters, e.g. s h i r e>",
    splits=splits_from({"test": TEST_SEEDS, "train": TRAIN_SEEDS}),
    # AgentGym's turn budget for Wordle; the game itself ends after six tries.
    max_turns=N_TRIES + 2,
    reward_range=(0.0, 1.0),
    success=SuccessRule(threshold=1.0),
    example_actions=[spaced(w) for w in vocabulary()[:5]],
    agentgym_ids=(
        "same: task id N is AgentGym's Wordle seed N (POST /wordle/reset {seed: N}, "
        "AgentEval's wordle_N): LMRL-Gym's game, vocabulary and random draws, reproduced"
    ),
    description=(
        f"AgentGym's Wordle (LMRL-Gym): a {len(vocabulary())}-word vocabulary, the answer "
        "re-drawn among the words still possible after every guess; reward 1.0 for solving."
    ),
)

plugin = EnvPlugin(
    LMRL_WORDLE_SPEC,
    LmrlWordleEnv,
    execution="async",
    parse_action=parse_lmrl_wordle_action,
    oracle=LmrlWordleOracle,
    max_instances=1024,
)
