"""The Wordle oracle: a consistent-candidate solver that reads only the feedback lines.

It never sees the secret, so it plays like a real player.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import anyio.to_thread

from gymux.env_plugins.builtin.wordle.words import (
    CODES,
    MAX_GUESSES,
    OPENING_GUESS,
    SOLVED,
    WORD_LENGTH,
    word_list,
    wordle_feedback,
)
from gymux.errors import PolicyError
from gymux.messages import PolicyRequest
from gymux.react import format_react

__all__ = ["WordleOracle"]

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
            pattern = "".join(CODES[colour] for _, colour in items)
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
        pattern == SOLVED or _separator(tuple(words)) is not None
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


class WordleOracle:
    """A solver that reads only the feedback in the conversation, never the secret.

    It keeps no per-episode state: each call rebuilds the candidate set from the feedback
    lines of the user messages, so one instance can serve many concurrent episodes. It opens
    with :data:`OPENING_GUESS`, then follows :func:`_choose`; its choices are deterministic.
    Work that is not cached and not trivial runs in a worker thread (that includes every
    choice among more than 50 candidates), so the event loop never waits on it.
    Raises :class:`PolicyError` when no word fits the feedback.
    """

    version = "wordle-solver-1"

    async def solve(self, request: PolicyRequest) -> str:
        history = _read_history(request)
        if not history:
            thought = (
                f"No feedback yet; {OPENING_GUESS} splits the word list into the most classes."
            )
            return format_react(thought, f"guess {OPENING_GUESS}")
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
        return format_react(thought, f"guess {guess}")
