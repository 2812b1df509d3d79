"""Wordle's words and rules: the word list, the task order and the colour feedback.

Shared by the environment (:mod:`.env`) and its oracle (:mod:`.oracle`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources

__all__ = [
    "CODES",
    "COLOURS",
    "MAX_GUESSES",
    "OPENING_GUESS",
    "SOLVED",
    "TEST_SIZE",
    "WORD_LENGTH",
    "format_feedback",
    "is_lower_ascii",
    "target_words",
    "word_list",
    "word_set",
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
COLOURS = {"g": "green", "y": "yellow", "b": "gray"}
CODES = {name: code for code, name in COLOURS.items()}
SOLVED = "g" * WORD_LENGTH


# --------------------------------------------------------------------------- word list


@functools.cache
def word_list() -> tuple[str, ...]:
    """The allowed guesses (and possible secrets), alphabetically sorted; loaded once."""
    resource = importlib.resources.files(__package__ or "") / "data" / "wordle_words.txt"
    words = {line.strip() for line in resource.read_text(encoding="utf-8").splitlines()}
    return tuple(sorted(w for w in words if len(w) == WORD_LENGTH and is_lower_ascii(w)))


@functools.cache
def word_set() -> frozenset[str]:
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


def is_lower_ascii(text: str) -> bool:
    return text.isascii() and text.isalpha() and text.islower()


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
    return " ".join(f"{ch}({COLOURS[code]})" for ch, code in zip(guess, pattern, strict=True))
