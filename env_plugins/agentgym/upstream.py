"""What AgentGym's own servers do, family by family, where ``gymux serve-env`` copies it.

:mod:`.dialects` holds the wire format both ends share (routes, field names, reply keys);
this module holds the server-side behaviour of each family's upstream server that the
wire format does not say: what an empty action answers, what stepping a finished episode
answers, the shape of ``GET /observation`` and of ``POST /close``, and the LMRL-Gym wordle
game's own text format. :class:`~gymux.env_plugins.agentgym.server.EnvServer` reads
:func:`upstream_for` instead of testing family names.

Where each fact comes from (WooooDyy/AgentGym; ``<x>`` is ``agentenv-<x>/agentenv_<x>``):

* **maze** (``lmrlgym/maze/environment.py``, LMRL-Gym's ``llm_rl_scripts/maze/env/env.py``):
  an action that is not one of the four moves leaves the agent where it is, reward 0, not
  done (gymux answers with the env's feedback instead of repeating the position). Every
  call on a finished episode (``step``, ``observation``) answers HTTP 200
  ``{"error": "The task with environment <id> has finished."}`` (``_check_id``).
  ``GET /maze/observation`` is the last observation as a bare JSON string.
* **wordle** (``lmrlgym/wordle/environment.py``, LMRL-Gym's ``llm_rl_scripts/wordle/env/
  env.py`` and ``game.py``): ``POST /wordle/create`` builds the game, ``GET
  /wordle/filtered_vocab?id=`` lists the words still possible (the whole vocabulary before
  the first guess; AgentGym's client puts it in its prompt); ``/reset`` answers ``{id,
  observation: "Let's start Wordle!"}``. A guess is the letters with the spaces removed
  (``"s h i r e"`` and ``"shire"`` are the same guess); one that is not five letters
  ``a``-``z`` from the vocabulary answers ``"invalid word"`` and still uses one of the six
  tries; a valid one answers one letter per position, space-separated, with a newline:
  ``"b y g g b\\n"`` (``g`` right place, ``y`` elsewhere in the word, ``b`` not in it). The
  reward is 1 for the solving guess and 0 otherwise (the server adds 1 to LMRL-Gym's
  ``-1``/``0``); the game ends when solved or after six tries. A finished game answers
  ``{"error": ...finished}`` like maze. Serving gymux's ``wordle`` this way keeps its game:
  its secret is fixed per task (LMRL-Gym re-draws it among the still-consistent words at
  every guess), and feedback follows the usual Wordle rule for repeated letters. The
  ``lmrl-wordle`` env *is* LMRL-Gym's game (:data:`LMRL_GAMES`): the server relays it, and a
  seed gives the game AgentGym's server gives.
* **textcraft** (``textcraft/environment.py``, ``env_wrapper.py``): an action matching no
  command answers ``"Could not execute <action>"`` (so ``""`` gives ``"Could not execute "``),
  reward 0; ``/create`` answers ``{id, observation, done, reward}``; the wrapper never
  checks ``done``, so stepping a finished episode keeps answering 200 (gymux's env does
  not step on: the server repeats the final observation, reward 0, done); ``/close``
  answers a bare ``true``; ``/observation`` is a bare string.
* **babyai** (``babyai/environment.py``): ``""`` answers ``"No change in state."`` and any
  other unknown action ``"The action is not recognized. Please check valid actions."``;
  every observation ends with ``\\nAvailable actions: ["a", "b", ...]``; a finished episode
  answers ``{"error": ...finished}``; ``GET /observation`` answers an object ``{observation:
  "Your goal: <goal>\\n<observation>", reward, score, done, deleted}``; ``/close`` answers
  ``true``.
* **sciworld** (``sciworld/environment.py``): ``/reset`` answers the task description and
  the first look around apart (``task_description``, ``observation``; the client joins
  them with a newline); ScienceWorld answers ``""`` and any unknown action with ``"No known
  action matches that input."``; a finished episode answers ``{"error": ...finished}``;
  ``/observation`` is a bare string; ``/close`` answers ``true``.
* **sqlgym** (``sqlgym/environment.py``, the ``sqlgym`` package's ``SqlGymEnv.step``): every
  step runs the SQL and answers ``done: true``, also after the episode ended (gymux's env
  does not run a second query: the server repeats the final observation, reward 0);
  ``GET /observation?env_idx=`` answers ``SqlGymEnv.observation``, the item's question set
  by ``reset`` (a step does not change it).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

__all__ = [
    "EVALUATOR_CLIENTS",
    "FINISHED",
    "INVALID_WORD",
    "LMRL_GAMES",
    "WORDLE_START",
    "WORDLE_TRIES",
    "Upstream",
    "WordleGame",
    "available_actions_line",
    "finished_error",
    "split_task_description",
    "upstream_for",
    "wordle_guess",
    "wordle_vocabulary",
]

#: Live instances AgentGym's default evaluator holds: ``agentenv/examples/basic/
#: openai_eval_multiprocessing.py`` runs ``processes=20`` pool workers, each building one
#: client (one instance) in its initializer and never closing it.
EVALUATOR_CLIENTS = 20

#: gymux envs that are an AgentGym family's own LMRL-Gym game, and that family: ``gymux
#: serve-env`` serves them in it by default and relays their observations unchanged.
LMRL_GAMES: dict[str, str] = {"lmrl-wordle": "wordle"}

#: What a finished (or unknown) instance answers in the families that check it (HTTP 200).
FINISHED = "The task with environment {id} has finished."

#: What stepping a finished episode does: answer ``{"error": FINISHED}`` with HTTP 200
#: (``error``), repeat the final observation with ``done`` (``final``), or 409 (``refuse``,
#: gymux's own dialect).
AfterDone = Literal["error", "final", "refuse"]
#: ``GET /observation``: the latest text, BabyAI's object, or the reset observation (SQLGym's
#: question, which a step does not change).
ObservationShape = Literal["text", "babyai", "reset"]
#: ``POST /close``: gymux's ``{closed, id}`` object, or the bare ``true`` of AgentGym's servers.
CloseReply = Literal["object", "true"]


class Upstream(msgspec.Struct, frozen=True, kw_only=True):
    """One family's server behaviour (see the module docstring for the sources)."""

    family: str
    #: The observation an empty action answers (reward 0, not done); ``None``: the action
    #: goes to the env like any other.
    empty_observation: str | None = None
    #: Follow texts the server makes itself with ``\nAvailable actions: [...]`` (BabyAI).
    lists_actions: bool = False
    after_done: AfterDone = "refuse"
    observation_shape: ObservationShape = "text"
    close_reply: CloseReply = "object"
    #: ``/reset`` answers the first line as ``task_description`` and the rest as
    #: ``observation`` (SciWorld).
    splits_task_description: bool = False
    #: LMRL-Gym's wordle game format (spaced letters, ``b y g g b``, six tries).
    wordle: bool = False


_UPSTREAM: dict[str, Upstream] = {
    u.family: u
    for u in (
        Upstream(family="maze", after_done="error"),
        Upstream(family="wordle", after_done="error", wordle=True),
        Upstream(
            family="textcraft",
            empty_observation="Could not execute ",
            after_done="final",
            close_reply="true",
        ),
        Upstream(
            family="babyai",
            empty_observation="No change in state.",
            lists_actions=True,
            after_done="error",
            observation_shape="babyai",
            close_reply="true",
        ),
        Upstream(
            family="sciworld",
            empty_observation="No known action matches that input.",
            after_done="error",
            close_reply="true",
            splits_task_description=True,
        ),
        Upstream(family="sqlgym", after_done="final", observation_shape="reset"),
    )
}


def upstream_for(family: str) -> Upstream:
    """The behaviour of AgentGym's ``family`` server; gymux's own (409s, JSON objects) else."""
    return _UPSTREAM.get(family) or Upstream(family=family)


def finished_error(instance: int) -> dict[str, str]:
    """The HTTP-200 body AgentGym's servers answer for a finished episode."""
    return {"error": FINISHED.format(id=instance)}


def available_actions_line(actions: Sequence[str]) -> str:
    """BabyAI's suffix: ``\\nAvailable actions: ["turn left", "turn right"]``.

    Built as ``babyai/environment.py`` builds it (each action in double quotes, joined by
    ``", "``; an empty list leaves the bracket open, as upstream does).
    """
    line = "\nAvailable actions: ["
    if actions:
        line += ", ".join(f'"{a}"' for a in actions) + "]"
    return line


def split_task_description(text: str) -> tuple[str, str]:
    """SciWorld's reset reply parts: ``(first line, the rest)``; one line is all observation."""
    first, sep, rest = text.partition("\n")
    return (first, rest) if sep else ("", text)


# --------------------------------------------------------------------------- wordle

WORDLE_START = "Let's start Wordle!"
INVALID_WORD = "invalid word"
WORDLE_TRIES = 6
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")


def wordle_guess(action: str, vocabulary: frozenset[str]) -> str | None:
    """The guess LMRL-Gym reads from ``action`` (spaces removed), ``None`` if it is invalid.

    Valid: five letters ``a``-``z`` (lowercase: LMRL-Gym rejects ``"SHIRE"``) and, when a
    vocabulary is known, in it.
    """
    word = action.strip().replace(" ", "")
    if len(word) != 5 or not set(word) <= _LETTERS:
        return None
    if vocabulary and word not in vocabulary:
        return None
    return word


def _pattern(guess: str, secret: str) -> str:
    """Wordle feedback of ``guess`` for ``secret`` as ``g``/``y``/``b`` letters."""
    result = ["b"] * len(guess)
    left: dict[str, int] = {}
    for i, (g, s) in enumerate(zip(guess, secret, strict=True)):
        if g == s:
            result[i] = "g"
        else:
            left[s] = left.get(s, 0) + 1
    for i, g in enumerate(guess):
        if result[i] == "b" and left.get(g, 0) > 0:
            result[i] = "y"
            left[g] -= 1
    return "".join(result)


class WordleGame:
    """One instance's wordle game as LMRL-Gym's server keeps it: tries and feedback so far."""

    __slots__ = ("history", "tries")

    def __init__(self) -> None:
        self.tries = 0
        self.history: list[tuple[str, str]] = []

    def reset(self) -> None:
        self.tries = 0
        self.history = []

    def invalid(self) -> tuple[str, bool]:
        """An invalid word: it uses a try. ``(observation, done)``."""
        self.tries += 1
        return INVALID_WORD, self.tries >= WORDLE_TRIES

    def scored(self, guess: str, pattern: str, env_done: bool) -> tuple[str, bool]:
        """A valid guess with the env's feedback ``pattern``. ``(observation, done)``."""
        self.tries += 1
        self.history.append((guess, pattern))
        done = env_done or set(pattern) == {"g"} or self.tries >= WORDLE_TRIES
        return " ".join(pattern) + "\n", done

    def passed(self, text: str, env_done: bool) -> tuple[str, bool]:
        """A guess the env judged without a ``g``/``y``/``b`` pattern: its text, one try."""
        self.tries += 1
        return text, env_done or self.tries >= WORDLE_TRIES

    def filtered(self, vocabulary: Sequence[str]) -> list[str]:
        """The words of ``vocabulary`` every feedback so far allows (all before a guess)."""
        return [w for w in vocabulary if all(_pattern(g, w) == p for g, p in self.history)]


def wordle_vocabulary(factory: Any) -> tuple[str, ...]:
    """The word list of a wordle env: ``word_list()`` of the module defining its factory.

    gymux's wordle env module exports ``word_list``; an env without one has no known
    vocabulary (``filtered_vocab`` then answers ``[]`` and every 5-letter guess goes to the
    env, which judges it).
    """
    name = getattr(factory, "__module__", None)
    if not isinstance(name, str):
        return ()
    module = sys.modules.get(name)
    if module is None:
        try:
            module = importlib.import_module(name)
        except ImportError:
            return ()
    words = getattr(module, "word_list", None)
    if not callable(words):
        return ()
    try:
        return tuple(str(w) for w in words())
    except Exception:  # a third-party env's word_list that fails: no vocabulary
        return ()
