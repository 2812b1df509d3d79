"""The wordle entry point: its spec and plugin (the env is in :mod:`.env`)."""

from __future__ import annotations

from gymux.env_plugins.builtin.wordle.env import WordleEnv, parse_wordle_action
from gymux.env_plugins.builtin.wordle.oracle import WordleOracle
from gymux.env_plugins.builtin.wordle.words import (
    MAX_GUESSES,
    TEST_SIZE,
    WORD_LENGTH,
    target_words,
    word_list,
)
from gymux.env_plugins.protocol import EnvPlugin, EnvSpec, SuccessRule, splits_from

__all__ = ["WORDLE_SPEC", "plugin"]

_INSTRUCTION = f"""\
You are playing Wordle. Find the secret {WORD_LENGTH}-letter English word in at most \
{MAX_GUESSES} guesses.

Each guess must be a {WORD_LENGTH}-letter word from the game's word list. After every guess \
you get one colour per letter, in order:
- green: the letter is in the word and in the right position;
- yellow: the letter is in the word but in a different position;
- gray: the letter is not in the word (or the word has no further copies of it).
Repeated letters are handled as in Wordle: greens are assigned first, then yellows from left \
to right, only as many as the word still has unmatched copies of that letter.

For example, guessing "crane" when the secret is "lager" gives the line
  c(gray) r(yellow) a(yellow) n(gray) e(yellow)
after the word "Feedback:", followed by the number of guesses you have left. A word that is \
not {WORD_LENGTH} letters or not in the word list is rejected and does not use up a guess.

Answer in this format every turn:

Thought:
your reasoning about which words are still possible

Action:
guess <word>

For example:

Thought:
I will start with a word that has common letters.

Action:
guess crane"""

WORDLE_SPEC = EnvSpec(
    id="wordle",
    version="1",
    instruction=_INSTRUCTION,
    action_format="Action: guess <5-letter word>",
    splits=splits_from(
        {
            "test": range(0, TEST_SIZE),
            "train": range(TEST_SIZE, len(target_words())),
        }
    ),
    max_turns=MAX_GUESSES + 2,
    reward_range=(0.0, 1.0),
    success=SuccessRule(threshold=1.0),
    example_actions=["guess crane", "guess slate", "guess tries", "guess pound", "guess lymph"],
    agentgym_ids=(
        "no: AgentGym's Wordle (LMRL-Gym) is another game: a 40-word vocabulary, and after "
        "each guess the answer is re-drawn by random.Random(id) from the words still "
        "possible, so an AgentGym id names a seed, not a word; gymux's has a fixed secret "
        "from a 3568-word list. For AgentGym's items use the env lmrl-wordle (its game, "
        "id N = seed N)"
    ),
    description=(
        f"Wordle over a {len(word_list())}-word list: six guesses, green/yellow/gray letter "
        "feedback, reward 1.0 for solving."
    ),
)

plugin = EnvPlugin(
    WORDLE_SPEC,
    WordleEnv,
    execution="thread",
    parse_action=parse_wordle_action,
    oracle=WordleOracle,
    max_instances=256,
)
