"""AgentGym's Wordle (LMRL-Gym's game), with AgentGym's item ids: task id N is seed N.

The rules are in :mod:`.game`. This module is the gymux environment around them:

* :class:`LmrlWordleEnv` -- ``reset(Task(id=N))`` starts the game AgentGym's server starts
  for ``POST /wordle/reset {"seed": N}`` and answers its ``"Let's start Wordle!"``; ``step``
  takes the text AgentGym's server receives (``"s h i r e"`` or ``"shire"``) and answers
  exactly what it answers: ``"b y g g b\\n"``-style feedback or ``"invalid word"``, reward 1
  for the solving guess and 0 otherwise, done when solved or after six tries. ``info``
  carries ``valid``, ``tries`` and ``filtered_vocab`` (the words still possible, what
  ``GET /wordle/filtered_vocab`` lists). Cheap pure Python: an async env on the event loop.
* :func:`parse_lmrl_wordle_action` -- the ReAct ``Action:`` (AgentGym's prompt asks for
  ``Thought: ... Action: s h i r e``), with the spaces removed; a word that is not a valid
  guess is not a parse error: the game answers ``"invalid word"`` and the try is used, as
  upstream.
* :func:`word_list` -- the vocabulary in file order (``gymux serve-env`` reads it).
"""

from __future__ import annotations

from gymux.env_plugins.builtin.lmrl_wordle.game import (
    START,
    LmrlWordleGame,
    deformat,
    spaced,
    vocabulary,
)
from gymux.env_plugins.parsing import parse_react_action
from gymux.env_plugins.protocol import Observation, StepResult, Task
from gymux.errors import EnvError

__all__ = ["LmrlWordleEnv", "parse_lmrl_wordle_action", "word_list"]


def word_list() -> tuple[str, ...]:
    """The game's vocabulary, in LMRL-Gym's file order."""
    return vocabulary()


def _actions() -> list[str]:
    return [spaced(w) for w in vocabulary()]


def parse_lmrl_wordle_action(text: str) -> str:
    """The guess in ReAct output: ``Action: s h i r e`` and ``Action: shire`` -> ``"shire"``.

    Raises :class:`~gymux.errors.ActionParseError` when there is no ``Action:``.
    """
    return deformat(parse_react_action(text))


class LmrlWordleEnv:
    """One game at a time; reused across episodes (async :class:`~gymux.env_plugins.Env`)."""

    def __init__(self) -> None:
        self._game = LmrlWordleGame()
        self._started = False
        self._done = False
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise EnvError("lmrl-wordle env is closed; create a new instance")

    async def reset(self, task: Task) -> Observation:
        self._check()
        self._game.reset(task.id)
        self._started = True
        self._done = False
        return Observation(text=START, admissible_actions=_actions())

    async def step(self, action: str) -> StepResult:
        self._check()
        if not self._started:
            raise EnvError("lmrl-wordle env: step() called before reset()")
        if self._done:
            raise EnvError("lmrl-wordle env: step() called after the game ended; reset first")
        outcome = self._game.guess(action)
        self._done = outcome.done
        return StepResult(
            observation=Observation(text=outcome.observation, admissible_actions=_actions()),
            reward=float(outcome.reward),
            done=outcome.done,
            info={
                "valid": outcome.valid,
                "tries": self._game.tries,
                "filtered_vocab": self._game.filtered,
            },
        )

    async def close(self) -> None:
        self._closed = True
