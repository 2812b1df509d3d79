"""The lmrl-wordle oracle: a consistent-candidate player that reads only the conversation.

It pairs each of its guesses (the ``Action:`` of an assistant message) with the feedback
line that answers it (``"b y g g b"``), replays them onto the knowledge state exactly as the
game keeps it (:func:`~.game.knowledge_from_feedback`), and so knows the game's filtered
vocabulary without seeing the seed. It then guesses the candidate that leaves the fewest
candidates on average over the targets the game could draw (the game draws uniformly from
the candidates), counting a guess that solves at once as none; ties go to the first in
vocabulary order. Its choices are deterministic and cached per knowledge state.
"""

from __future__ import annotations

import functools
import re

import anyio.to_thread

from gymux.env_plugins.builtin.lmrl_wordle.env import parse_lmrl_wordle_action
from gymux.env_plugins.builtin.lmrl_wordle.game import (
    N_CHARS,
    Knowledge,
    filter_vocab,
    initial_knowledge,
    knowledge_from_feedback,
    spaced,
    transition,
)
from gymux.errors import ActionParseError, PolicyError
from gymux.messages import PolicyRequest
from gymux.react import format_react

__all__ = ["LmrlWordleOracle", "read_knowledge"]

_FEEDBACK_RE = re.compile(rf"^\s*([bgy](?: [bgy]){{{N_CHARS - 1}}})\s*$")


def read_knowledge(request: PolicyRequest) -> Knowledge:
    """The knowledge state the conversation's guesses and feedback lines give."""
    knowledge = initial_knowledge()
    guess: str | None = None
    for message in request.messages:
        if message.role == "assistant":
            try:
                guess = parse_lmrl_wordle_action(message.content)
            except ActionParseError:
                guess = None
            continue
        if message.role != "user" or guess is None:
            continue
        match = _FEEDBACK_RE.match(message.content)
        if match is not None and len(guess) == N_CHARS:
            knowledge = knowledge_from_feedback(knowledge, guess, match.group(1).split())
        guess = None
    return knowledge


def _score(knowledge: Knowledge, guess: str, candidates: list[str]) -> int:
    """Candidates left after ``guess``, summed over the targets the game may draw."""
    total = 0
    for target in candidates:
        left = filter_vocab(transition(knowledge, guess, target), candidates)
        if left != [guess]:
            total += len(left)
    return total


@functools.lru_cache(maxsize=4096)
def _choose(knowledge: Knowledge) -> tuple[str, int]:
    """The guess for ``knowledge`` and how many candidates there are."""
    candidates = filter_vocab(knowledge)
    if not candidates:
        return "", 0
    if len(candidates) <= 2:
        return candidates[0], len(candidates)
    best = min(candidates, key=lambda g: (_score(knowledge, g, candidates), candidates.index(g)))
    return best, len(candidates)


class LmrlWordleOracle:
    """A solver reading only the feedback; one instance serves concurrent episodes.

    Raises :class:`PolicyError` when no word fits the feedback (a conversation that is not
    this game's).
    """

    version = "lmrl-wordle-solver-1"

    async def solve(self, request: PolicyRequest) -> str:
        knowledge = read_knowledge(request)
        guess, count = await anyio.to_thread.run_sync(_choose, knowledge)
        if not guess:
            raise PolicyError(
                "lmrl-wordle oracle: no word in the vocabulary fits the feedback so far"
            )
        thought = (
            f"{count} word(s) of the vocabulary fit the feedback so far; "
            f'"{spaced(guess)}" is one of them and leaves the fewest on average.'
        )
        return format_react(thought, spaced(guess))
