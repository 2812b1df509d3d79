"""The rules of LMRL-Gym's Wordle, the game AgentGym's wordle server runs.

Written for gymux from the behaviour of LMRL-Gym's ``llm_rl_scripts/wordle/env/game.py`` and
``env.py`` (github.com/abdulhaim/LMRL-Gym @ 83abeedb) and AgentGym's
``agentenv-lmrlgym/agentenv_lmrlgym/wordle/environment.py``. The game is not the usual
Wordle:

* There is no fixed secret. The game keeps a *knowledge state*: for every letter and every
  position, "not here", "possible" or "here". On every valid guess a target is drawn with
  ``rng.choice`` from the *filtered vocabulary* (the words consistent with the knowledge
  state, in vocabulary-file order), and the knowledge state is updated from the guess and
  that target. ``reset(seed)`` makes the generator ``random.Random(seed)``, so a seed fixes
  the whole game: AgentGym's item ``N`` is seed ``N``.
* The feedback of a guess is read back from the updated knowledge state, per position:
  ``g`` (the letter is known to be here), ``b`` (the letter is known to be nowhere), ``y``
  (the letter is known not to be here).
* A guess that is not five letters ``a``-``z`` from the vocabulary is invalid: it still uses
  one of the six tries, and its feedback is empty (AgentGym's server answers "invalid word").
* The game is solved when the filtered vocabulary is exactly one word and that word has been
  guessed; it ends when solved or after six tries (valid or not).

Rewards are AgentGym's: LMRL-Gym gives ``-1`` per unsolved step and ``0`` on the solving
guess (``bad_word_reward = -1.0`` for an invalid one), and AgentGym's server adds 1 to any
reward ``<= 0``, so a step is worth 1 when it solves the game and 0 otherwise.
"""

from __future__ import annotations

import functools
import importlib.resources
import random
from collections.abc import Iterable, Sequence

__all__ = [
    "INVALID_WORD",
    "N_CHARS",
    "N_TRIES",
    "START",
    "GuessOutcome",
    "Knowledge",
    "LmrlWordleGame",
    "deformat",
    "feedback_of",
    "filter_vocab",
    "initial_knowledge",
    "knowledge_from_feedback",
    "spaced",
    "transition",
    "vocabulary",
]

N_CHARS = 5
N_TRIES = 6
#: AgentGym's reply to ``/reset`` (its client shows its own prompt instead).
START = "Let's start Wordle!"
#: AgentGym's observation for a guess with empty feedback (an invalid word).
INVALID_WORD = "invalid word"

_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_LETTERS = frozenset(_ALPHABET)
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}

# What is known of one letter at one position.
NOT_HERE = 0
POSSIBLE = 1
HERE = 2

#: Per letter ``a``..``z``, per position: ``NOT_HERE``, ``POSSIBLE`` or ``HERE``.
Knowledge = tuple[tuple[int, ...], ...]

_UNKNOWN = (POSSIBLE,) * N_CHARS
_ABSENT = (NOT_HERE,) * N_CHARS


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """LMRL-Gym's ``tweet_words.txt`` in file order (the order ``rng.choice`` draws from)."""
    resource = importlib.resources.files(__package__ or "") / "data" / "tweet_words.txt"
    words = []
    for line in resource.read_text(encoding="utf-8").splitlines():
        word = line.strip()
        if word.startswith("#"):
            continue
        if len(word) == N_CHARS:  # upstream keeps every 5-character line
            words.append(word)
    return tuple(words)


@functools.cache
def _vocabulary_set() -> frozenset[str]:
    return frozenset(vocabulary())


def initial_knowledge() -> Knowledge:
    return (_UNKNOWN,) * len(_ALPHABET)


def deformat(action: str) -> str:
    """The guess LMRL-Gym reads from an action: stripped, every space removed
    (``"s h i r e"`` and ``"shire"`` are the same guess; ``"SHIRE"`` stays invalid)."""
    return action.strip().replace(" ", "")


def spaced(word: str) -> str:
    """A guess as AgentGym's prompt spells it: ``"shire"`` -> ``"s h i r e"``."""
    return " ".join(word)


def is_valid(word: str) -> bool:
    """Five letters ``a``-``z`` and in the vocabulary."""
    return len(word) == N_CHARS and set(word) <= _LETTERS and word in _vocabulary_set()


def _satisfies(letter: str, mask: tuple[int, ...], word: str) -> bool:
    if mask == _UNKNOWN:
        return True
    if mask == _ABSENT:
        return letter not in word
    for i, known in enumerate(mask):
        if known == HERE and word[i] != letter:
            return False
        if known == NOT_HERE and word[i] == letter:
            return False
    return letter in word


def consistent(knowledge: Knowledge, word: str) -> bool:
    """Whether ``word`` satisfies everything known."""
    return all(_satisfies(c, knowledge[i], word) for i, c in enumerate(_ALPHABET))


def filter_vocab(knowledge: Knowledge, words: Iterable[str] | None = None) -> list[str]:
    """The words (the vocabulary by default) consistent with ``knowledge``, in order."""
    return [w for w in (vocabulary() if words is None else words) if consistent(knowledge, w)]


def _set(mask: tuple[int, ...], pos: int, value: int) -> tuple[int, ...]:
    return (*mask[:pos], value, *mask[pos + 1 :])


def transition(knowledge: Knowledge, guess: str, target: str) -> Knowledge:
    """The knowledge after ``guess`` when the drawn target is ``target``.

    Position by position, in order: the letter is here (it is the target's letter there),
    not here (it is elsewhere in the target), or nowhere (every position of that letter
    becomes "not here", whatever was known of it).
    """
    state = list(knowledge)
    for i, c in enumerate(guess):
        k = _INDEX[c]
        if c == target[i]:
            state[k] = _set(state[k], i, HERE)
        elif c in target:
            state[k] = _set(state[k], i, NOT_HERE)
        else:
            state[k] = _ABSENT
    return tuple(state)


def feedback_of(knowledge: Knowledge, guess: str) -> list[str]:
    """The feedback letters of ``guess`` read from ``knowledge`` (``g``, ``b``, ``y``).

    A position whose letter is still "possible" there gives no letter at all (upstream
    does the same; it cannot happen right after that guess).
    """
    letters = []
    for i, c in enumerate(guess):
        mask = knowledge[_INDEX[c]]
        if mask[i] == HERE:
            letters.append("g")
        elif mask == _ABSENT:
            letters.append("b")
        elif mask[i] == NOT_HERE:
            letters.append("y")
    return letters


def knowledge_from_feedback(knowledge: Knowledge, guess: str, feedback: Sequence[str]) -> Knowledge:
    """Replay one guess's feedback letters onto ``knowledge`` (what a player can know).

    ``g`` marks the letter here, ``y`` not here, ``b`` nowhere: the same state the game
    holds, so a player that replays every feedback knows the game's filtered vocabulary.
    """
    if len(feedback) != len(guess):
        raise ValueError(f"{len(feedback)} feedback letters for the {len(guess)} of {guess!r}")
    state = list(knowledge)
    for i, (c, mark) in enumerate(zip(guess, feedback, strict=True)):
        k = _INDEX[c]
        if mark == "g":
            state[k] = _set(state[k], i, HERE)
        elif mark == "y":
            state[k] = _set(state[k], i, NOT_HERE)
        elif mark == "b":
            state[k] = _ABSENT
        else:
            raise ValueError(f"unknown feedback letter {mark!r}")
    return tuple(state)


class GuessOutcome:
    """One step of the game: the observation AgentGym's server answers, its reward (1 on
    the solving guess, else 0), whether the game is over, and whether the guess was valid."""

    __slots__ = ("done", "observation", "reward", "valid")

    def __init__(self, observation: str, reward: int, done: bool, valid: bool) -> None:
        self.observation = observation
        self.reward = reward
        self.done = done
        self.valid = valid


class LmrlWordleGame:
    """One game, as AgentGym's server holds it for an instance.

    Before the first :meth:`reset` the game is in its initial state with an unseeded
    generator (upstream builds it with ``reset()`` at creation); :meth:`filtered` then lists
    the whole vocabulary, which AgentGym's client reads into its prompt.
    """

    __slots__ = ("_filtered", "_knowledge", "_rng", "history")

    def __init__(self) -> None:
        self._rng = random.Random()
        self._knowledge = initial_knowledge()
        self._filtered: list[str] = list(vocabulary())
        #: Every guess so far, as read (``deformat``), valid or not.
        self.history: list[str] = []

    def reset(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._knowledge = initial_knowledge()
        self._filtered = list(vocabulary())
        self.history = []

    @property
    def filtered(self) -> list[str]:
        """The words still consistent with the knowledge state, in vocabulary order."""
        return list(self._filtered)

    @property
    def tries(self) -> int:
        return len(self.history)

    @property
    def solved(self) -> bool:
        return len(self._filtered) == 1 and self._filtered[0] in self.history

    def guess(self, action: str) -> GuessOutcome:
        """Play ``action`` (the text AgentGym's server receives)."""
        word = deformat(action)
        self.history.append(word)
        if not is_valid(word):
            return GuessOutcome(INVALID_WORD, 0, self.tries >= N_TRIES, valid=False)
        target = self._rng.choice(self._filtered)
        self._knowledge = transition(self._knowledge, word, target)
        self._filtered = filter_vocab(self._knowledge)
        solved = self.solved
        letters = feedback_of(self._knowledge, word)
        text = " ".join(letters) + "\n" if letters else INVALID_WORD
        return GuessOutcome(text, int(solved), solved or self.tries >= N_TRIES, valid=True)
