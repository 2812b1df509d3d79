"""Wordle: guess a secret 5-letter word in six tries from per-letter colour feedback.

The environment is blocking (:class:`WordleEnv` implements :class:`SyncEnv`) and runs in a
worker thread. Each guess is answered with one colour per letter:

* ``green`` -- right letter in the right place;
* ``yellow`` -- the letter is in the word, elsewhere (duplicates are honoured: greens are
  assigned first, then yellows left to right while the secret still has unmatched copies);
* ``gray`` -- no (further) copy of the letter in the word.

Guesses that are not 5 letters or not in the word list are reported and do not consume a
guess. Solving gives reward 1.0; six wrong guesses end the episode with reward 0.0 and reveal
the word.

Tasks are target words in a fixed, machine-independent order: the word list sorted by
``sha256("gymux-wordle-v1:<word>")``. Task id ``i`` is the ``i``-th word of that order; the
``test`` split is ids ``0..99`` and ``train`` the rest.

The words, the task order and the feedback rule are in :mod:`.words`; :class:`WordleOracle`
(:mod:`.oracle`, re-exported here) is a consistent-candidate solver that reads only the
feedback lines of the conversation (it never sees the secret), so it plays like a real player.
"""

from __future__ import annotations

import re

from gymux.env_plugins.builtin.wordle.oracle import WordleOracle
from gymux.env_plugins.builtin.wordle.words import (
    MAX_GUESSES,
    OPENING_GUESS,
    SOLVED,
    TEST_SIZE,
    WORD_LENGTH,
    format_feedback,
    is_lower_ascii,
    target_words,
    word_list,
    word_set,
    wordle_feedback,
)
from gymux.env_plugins.parsing import parse_react_action
from gymux.env_plugins.protocol import Observation, StepResult, Task
from gymux.errors import ActionParseError, EnvError

__all__ = [
    "MAX_GUESSES",
    "OPENING_GUESS",
    "TEST_SIZE",
    "WORD_LENGTH",
    "WordleEnv",
    "WordleOracle",
    "format_feedback",
    "parse_wordle_action",
    "target_words",
    "word_list",
    "wordle_feedback",
]


def _secret_for(task_id: int) -> str:
    words = target_words()
    if not 0 <= task_id < len(words):
        raise EnvError(f"unknown wordle task id {task_id}: valid ids are 0..{len(words) - 1}")
    return words[task_id]


def _guesses_left_text(n: int) -> str:
    return f"You have {n} guess{'' if n == 1 else 'es'} left."


# --------------------------------------------------------------------------- action parsing

_GUESS_RE = re.compile(
    r"""^(?:guess\b\s*[:=]?\s*)?      # optional "guess" / "guess:" prefix
        [\[(<{"'`]*\s*                 # optional opening brackets or quotes
        ([^\s\[\](){}<>"'`.!]+)        # the word
        \s*[\])>}"'`]*\s*[.!]?$        # optional closing brackets, quotes, final stop
    """,
    re.IGNORECASE | re.VERBOSE,
)


def _normalise_guess(action: str) -> str:
    """``"guess [Crane]"`` -> ``"crane"``; raise :class:`ActionParseError` if no guess."""
    text = action.strip()
    match = _GUESS_RE.match(text)
    if match is None:
        raise ActionParseError(
            f"could not read a guess from {text!r}. Write the action as "
            '"guess <word>", e.g. "guess crane" (one 5-letter word).'
        )
    word = match.group(1).lower()
    if not is_lower_ascii(word):
        raise ActionParseError(
            f"{word!r} is not a word of letters a-z. Write the action as "
            '"guess <word>" with a 5-letter word, e.g. "guess crane".'
        )
    if len(word) != WORD_LENGTH:
        raise ActionParseError(
            f"{word!r} has {len(word)} letters; a guess must be exactly {WORD_LENGTH} letters "
            'a-z. Write the action as "guess <word>", e.g. "guess crane".'
        )
    return word


def parse_wordle_action(text: str) -> str:
    """Parse ReAct output into a lowercase 5-letter guess.

    Accepts ``Action: guess crane``, ``Action: crane``, ``Action: [CRANE]`` and similar.
    A well-formed 5-letter word that is not in the word list is *not* a parse error: the
    environment reports it without consuming a guess.
    """
    return _normalise_guess(parse_react_action(text))


# --------------------------------------------------------------------------- the environment


class WordleEnv:
    """One Wordle game at a time; blocking (:class:`SyncEnv`), reused across episodes."""

    def __init__(self) -> None:
        self._secret: str | None = None
        self._guesses_left = 0
        self._done = False
        self._closed = False
        self._history: list[tuple[str, str]] = []

    def reset(self, task: Task) -> Observation:
        if self._closed:
            raise EnvError("wordle env is closed; create a new instance")
        secret = _secret_for(task.id)
        self._secret = secret
        self._guesses_left = MAX_GUESSES
        self._done = False
        self._history = []
        return Observation(
            text=(
                f"A new game has started: guess the secret {WORD_LENGTH}-letter word. "
                f"{_guesses_left_text(MAX_GUESSES)}"
            )
        )

    def step(self, action: str) -> StepResult:
        if self._closed:
            raise EnvError("wordle env is closed; create a new instance")
        if self._secret is None:
            raise EnvError("wordle env: step() called before reset()")
        if self._done:
            raise EnvError("wordle env: step() called after the game ended; call reset() first")
        secret = self._secret
        try:
            guess = _normalise_guess(action)
        except ActionParseError:
            guess = action.strip()
        if guess not in word_set():
            return StepResult(
                observation=Observation(
                    text=(
                        f"{guess!r} is not a valid {WORD_LENGTH}-letter word in the word list; "
                        f"the guess does not count. {_guesses_left_text(self._guesses_left)}"
                    )
                ),
                reward=0.0,
                done=False,
                info={"guesses_left": self._guesses_left, "valid": False},
            )
        pattern = wordle_feedback(guess, secret)
        self._history.append((guess, pattern))
        self._guesses_left -= 1
        feedback = f"Feedback: {format_feedback(guess, pattern)}."
        if pattern == SOLVED:
            self._done = True
            text = f'{feedback} You solved it: the word is "{secret}".'
            reward, done = 1.0, True
        elif self._guesses_left == 0:
            self._done = True
            text = f'{feedback} You have no guesses left. The word was "{secret}".'
            reward, done = 0.0, True
        else:
            text = f"{feedback} {_guesses_left_text(self._guesses_left)}"
            reward, done = 0.0, False
        return StepResult(
            observation=Observation(text=text),
            reward=reward,
            done=done,
            info={"guesses_left": self._guesses_left, "feedback": pattern, "valid": True},
        )

    def close(self) -> None:
        self._closed = True
        self._secret = None
        self._history = []


# --------------------------------------------------------------------------- the spec
