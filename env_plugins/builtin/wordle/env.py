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

:class:`WordleOracle` is a consistent-candidate solver that reads only the feedback lines of
the conversation (it never sees the secret), so it plays like a real player.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import re
from collections.abc import Sequence

import anyio.to_thread

from gymux.env_plugins.parsing import parse_react_action
from gymux.env_plugins.protocol import (
    ActionParseError,
    EnvError,
    EnvPlugin,
    EnvSpec,
    Observation,
    StepResult,
    SuccessRule,
    Task,
    splits_from,
)
from gymux.errors import PolicyError
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy, react

__all__ = [
    "MAX_GUESSES",
    "OPENING_GUESS",
    "TEST_SIZE",
    "WORDLE_SPEC",
    "WORD_LENGTH",
    "WordleEnv",
    "WordleOracle",
    "format_feedback",
    "parse_wordle_action",
    "plugin",
    "target_words",
    "word_list",
    "wordle_feedback",
]

WORD_LENGTH = 5
MAX_GUESSES = 6
#: Number of tasks in the ``test`` split (ids ``0 .. TEST_SIZE - 1``).
TEST_SIZE = 100
#: The oracle's first guess: the word that splits the whole list into the most feedback
#: classes (172 of them).
OPENING_GUESS = "tries"

_ORDER_SALT = "gymux-wordle-v1:"
_COLOURS = {"g": "green", "y": "yellow", "b": "gray"}
_CODES = {name: code for code, name in _COLOURS.items()}
_SOLVED = "g" * WORD_LENGTH


# --------------------------------------------------------------------------- word list


@functools.cache
def word_list() -> tuple[str, ...]:
    """The allowed guesses (and possible secrets), alphabetically sorted; loaded once."""
    resource = importlib.resources.files(__package__ or "") / "data" / "wordle_words.txt"
    words = {line.strip() for line in resource.read_text(encoding="utf-8").splitlines()}
    return tuple(sorted(w for w in words if len(w) == WORD_LENGTH and _is_lower_ascii(w)))


@functools.cache
def _word_set() -> frozenset[str]:
    return frozenset(word_list())


@functools.cache
def target_words() -> tuple[str, ...]:
    """The word list in task order: sorted by ``sha256("gymux-wordle-v1:<word>")``."""
    return tuple(
        sorted(
            word_list(),
            key=lambda w: hashlib.sha256(f"{_ORDER_SALT}{w}".encode()).hexdigest(),
        )
    )


def _is_lower_ascii(text: str) -> bool:
    return text.isascii() and text.isalpha() and text.islower()


def _secret_for(task_id: int) -> str:
    words = target_words()
    if not 0 <= task_id < len(words):
        raise EnvError(f"unknown wordle task id {task_id}: valid ids are 0..{len(words) - 1}")
    return words[task_id]


# --------------------------------------------------------------------------- feedback


def wordle_feedback(guess: str, secret: str) -> str:
    """Per-letter feedback of ``guess`` against ``secret`` as a ``g``/``y``/``b`` string.

    Greens are assigned first; then, left to right, a letter is yellow while the secret still
    has copies of it that are neither green nor already claimed by an earlier yellow.
    Works for any two strings of equal length.
    """
    if len(guess) != len(secret):
        raise ValueError(f"guess and secret differ in length: {guess!r} vs {secret!r}")
    result = ["b"] * len(guess)
    remaining: dict[str, int] = {}
    for i, (g, s) in enumerate(zip(guess, secret, strict=True)):
        if g == s:
            result[i] = "g"
        else:
            remaining[s] = remaining.get(s, 0) + 1
    for i, g in enumerate(guess):
        if result[i] != "g" and remaining.get(g, 0) > 0:
            result[i] = "y"
            remaining[g] -= 1
    return "".join(result)


def format_feedback(guess: str, pattern: str) -> str:
    """Render feedback as ``c(gray) r(yellow) a(green) n(gray) e(gray)``."""
    return " ".join(f"{ch}({_COLOURS[code]})" for ch, code in zip(guess, pattern, strict=True))


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
    if not _is_lower_ascii(word):
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
        if guess not in _word_set():
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
        if pattern == _SOLVED:
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
    description=(
        f"Wordle over a {len(word_list())}-word list: six guesses, green/yellow/gray letter "
        "feedback, reward 1.0 for solving."
    ),
)


# --------------------------------------------------------------------------- the oracle

_FEEDBACK_LINE_RE = re.compile(
    rf"^Feedback:\s*((?:[a-z]\((?:green|yellow|gray)\)\s*){{{WORD_LENGTH}}})", re.MULTILINE
)
_FEEDBACK_ITEM_RE = re.compile(r"([a-z])\((green|yellow|gray)\)")
#: How many non-candidate probe words (best letter coverage) are scored besides candidates.
_PROBE_POOL_SIZE = 300
#: How many top-scoring guesses the three-guesses-left look-ahead tries.
_LOOKAHEAD_WIDTH = 30
#: A single guess can produce at most this many different feedback patterns.
_MAX_PATTERNS = 3**WORD_LENGTH - WORD_LENGTH
_CHOICE_CACHE_SIZE = 16384

_PARTITION_CACHE: dict[str, dict[str, tuple[str, ...]]] = {}
_CHOICE_CACHE: dict[tuple[tuple[str, ...], int], str] = {}

History = list[tuple[str, str]]


def _read_history(request: PolicyRequest) -> History:
    """All ``(guess, pattern)`` pairs of the feedback lines in the user messages, in order."""
    history: History = []
    for message in request.messages:
        if message.role != "user":
            continue
        for line in _FEEDBACK_LINE_RE.finditer(message.content):
            items = _FEEDBACK_ITEM_RE.findall(line.group(1))
            guess = "".join(ch for ch, _ in items)
            pattern = "".join(_CODES[colour] for _, colour in items)
            history.append((guess, pattern))
    return history


def _partition(guess: str) -> dict[str, tuple[str, ...]]:
    """The whole word list split by the feedback ``guess`` would receive (cached)."""
    cached = _PARTITION_CACHE.get(guess)
    if cached is not None:
        return cached
    groups: dict[str, list[str]] = {}
    for word in word_list():
        groups.setdefault(wordle_feedback(guess, word), []).append(word)
    result = {pattern: tuple(words) for pattern, words in groups.items()}
    _PARTITION_CACHE[guess] = result
    return result


def _candidates(history: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The words consistent with every ``(guess, pattern)`` seen, alphabetically."""
    if not history:
        return word_list()
    first_guess, first_pattern = history[0]
    words = _partition(first_guess).get(first_pattern, ())
    for guess, pattern in history[1:]:
        words = tuple(w for w in words if wordle_feedback(guess, w) == pattern)
    return words


def _classes(guess: str, candidates: Sequence[str]) -> int:
    """Into how many feedback classes ``guess`` splits ``candidates``."""
    return len({wordle_feedback(guess, word) for word in candidates})


@functools.cache
def _letter_sets() -> tuple[frozenset[str], ...]:
    return tuple(frozenset(word) for word in word_list())


def _probe_pool(candidates: Sequence[str]) -> list[str]:
    """Words whose distinct letters best split the candidates (letter by letter).

    A letter found in ``k`` of ``n`` candidates is worth ``min(k, n - k)``; a word is worth
    the sum over its distinct letters. Returns the best :data:`_PROBE_POOL_SIZE` words.
    """
    n = len(candidates)
    counts: dict[str, int] = {}
    for word in candidates:
        for ch in set(word):
            counts[ch] = counts.get(ch, 0) + 1
    value = {ch: min(k, n - k) for ch, k in counts.items()}
    scored = sorted(
        (-sum(value.get(ch, 0) for ch in letters), word)
        for word, letters in zip(word_list(), _letter_sets(), strict=True)
    )
    return [word for _, word in scored[:_PROBE_POOL_SIZE]]


@functools.lru_cache(maxsize=65536)
def _separator(candidates: tuple[str, ...]) -> str | None:
    """A guess that gives every candidate a different feedback, if any (candidates first)."""
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > _MAX_PATTERNS:
        return None
    for guess in candidates:
        if _classes(guess, candidates) == len(candidates):
            return guess
    candidate_set = frozenset(candidates)
    for guess in word_list():
        if guess not in candidate_set and _classes(guess, candidates) == len(candidates):
            return guess
    return None


def _wins_within_two(guess: str, candidates: Sequence[str]) -> bool:
    """Whether after ``guess`` every possible answer is certain within two more guesses."""
    groups: dict[str, list[str]] = {}
    for word in candidates:
        groups.setdefault(wordle_feedback(guess, word), []).append(word)
    return all(
        pattern == _SOLVED or _separator(tuple(words)) is not None
        for pattern, words in sorted(groups.items(), key=lambda item: -len(item[1]))
    )


def _choose(candidates: tuple[str, ...], guesses_left: int) -> str:
    """Pick the next guess for ``candidates`` (alphabetical, non-empty); deterministic.

    The base rule: the candidate that splits the candidates into the most feedback classes,
    alphabetical on ties. A guess that separates every candidate is taken at once. Otherwise:

    * one guess left: that candidate (a guess that is not a candidate cannot win);
    * two left: a word from the whole list that separates every candidate, so the last guess
      is certain, else the base candidate;
    * three or more left: non-candidate probe words (the :func:`_probe_pool`) compete with
      the candidates on the number of classes (candidates win ties, then alphabetical);
      with exactly three left, the first of the top :data:`_LOOKAHEAD_WIDTH` guesses after
      which every answer is certain within two more guesses is preferred.
    """
    if len(candidates) <= 2:
        return candidates[0]
    # (classes, is_candidate, word): rank by most classes, candidates first, alphabetical.
    scored = [(_classes(guess, candidates), 1, guess) for guess in candidates]
    best_classes, _, best = min(scored, key=lambda item: (-item[0], item[2]))
    if best_classes == len(candidates) or guesses_left <= 1:
        return best
    if guesses_left == 2:
        return _separator(candidates) or best
    candidate_set = frozenset(candidates)
    scored.extend(
        (_classes(guess, candidates), 0, guess)
        for guess in _probe_pool(candidates)
        if guess not in candidate_set
    )
    scored.sort(key=lambda item: (-item[0], -item[1], item[2]))
    if guesses_left == 3:
        for _, _, guess in scored[:_LOOKAHEAD_WIDTH]:
            if _wins_within_two(guess, candidates):
                return guess
    return scored[0][2]


def _choose_cached(candidates: tuple[str, ...], guesses_left: int) -> str:
    key = (candidates, guesses_left)
    guess = _CHOICE_CACHE.get(key)
    if guess is None:
        guess = _choose(candidates, guesses_left)
        if len(_CHOICE_CACHE) >= _CHOICE_CACHE_SIZE:
            _CHOICE_CACHE.clear()
        _CHOICE_CACHE[key] = guess
    return guess


class WordleOracle(SimplePolicy):
    """A solver that reads only the feedback in the conversation, never the secret.

    It keeps no per-episode state: each call rebuilds the candidate set from the feedback
    lines of the user messages, so one instance can serve many concurrent episodes. It opens
    with :data:`OPENING_GUESS`, then follows :func:`_choose`; its choices are deterministic.
    Work that is not cached and not trivial runs in a worker thread (that includes every
    choice among more than 50 candidates), so the event loop never waits on it.
    Raises :class:`PolicyError` when no word fits the feedback.
    """

    name = "oracle"
    version = "wordle-solver-1"

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        history = _read_history(request)
        if not history:
            thought = (
                f"No feedback yet; {OPENING_GUESS} splits the word list into the most classes."
            )
            return PolicyResponse(text=react(thought, f"guess {OPENING_GUESS}"))
        if history[0][0] in _PARTITION_CACHE:
            candidates = _candidates(history)
        else:
            candidates = await anyio.to_thread.run_sync(_candidates, history)
        if not candidates:
            raise PolicyError(
                "wordle oracle: no word in the list is consistent with the feedback so far"
            )
        guesses_left = max(1, MAX_GUESSES - len(history))
        cached = _CHOICE_CACHE.get((candidates, guesses_left))
        if cached is not None:
            guess = cached
        elif len(candidates) <= 2:
            guess = _choose_cached(candidates, guesses_left)
        else:
            guess = await anyio.to_thread.run_sync(_choose_cached, candidates, guesses_left)
        shown = ", ".join(candidates[:5]) + (", ..." if len(candidates) > 5 else "")
        kind = "a candidate" if guess in candidates else "a probe word"
        thought = (
            f"{len(candidates)} word(s) fit the feedback so far ({shown}); "
            f"{guess} is {kind} that narrows them down best."
        )
        return PolicyResponse(text=react(thought, f"guess {guess}"))


plugin = EnvPlugin(
    WORDLE_SPEC,
    WordleEnv,
    execution="thread",
    parse_action=parse_wordle_action,
    oracle=WordleOracle,
    max_instances=256,
)
