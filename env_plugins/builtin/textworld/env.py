"""TextWorld household cooking games: an offline, ALFWorld-like text environment.

ALFWorld (used by AgentGym) plays household tasks on TextWorld's engine with scenes from
the ALFRED data set. This plugin keeps the engine and the kind of task but needs no data
download: its games are generated locally by TextWorld's own cooking-game generator
(``tw-make tw-cooking``, the generator of the First TextWorld Problems competition), in a
house of one to six rooms with a kitchen, a fridge, a counter, a stove, an oven, a knife
and a cookbook. The agent must read the recipe, fetch the ingredients, open containers and
doors, slice/dice/chop and fry/roast/grill them as told, prepare the meal and eat it.

Upstream: TextWorld 1.7.0 (MIT licence, Microsoft), pinned: task ids are defined by its
generator, and the game cache is keyed by its version. Games are generated on first use and
cached on disk (see :mod:`gymux.env_plugins.builtin.textworld.games`); nothing is downloaded.

Task ids (fixed, deterministic; ``level = id % 4``, ``tw-make --seed id``):

===== =============================================================== ===========
level ``tw-make tw-cooking`` settings                                 walkthrough
===== =============================================================== ===========
0     ``--recipe 1 --take 1 --go 1`` (everything in the kitchen)      5 steps
1     ``--recipe 1 --take 1 --go 6 --open`` (six rooms, closed doors) 7-10 steps
2     ``--recipe 2 --take 2 --go 6 --open --cut``                     14-17 steps
3     ``--recipe 2 --take 2 --go 6 --open --cook --cut``              15-19 steps
===== =============================================================== ===========

(walkthrough lengths as measured on the test split.)

* ``test``: ids ``0..49`` (50 games, ``--split test``: TextWorld's held-out foods and
  preparations, 13/13/12/12 games per level);
* ``train``: ids ``1000..4999`` (4000 games, ``--split train``), generated lazily when a
  task is first reset -- nothing is generated up front.

Observations are the game's text without its ASCII-art banner, prompt and status line,
followed by ``AVAILABLE ACTIONS: ...`` (the admissible commands, as ALFWorld lists them in
AgentGym); :attr:`Observation.admissible_actions` holds the same list. Any command may be
played: one the game does not understand gets the game's own answer ("That's not a verb I
recognise.", "You can't see any such thing.") with ``done=False``.

Reward and success as for ALFWorld in AgentGym: reward 1.0 when the game is won (the meal
is eaten), else 0.0; the episode ends when the game is won or lost (e.g. an ingredient is
burned or the wrong thing is eaten); success = won (reward >= 1). The default turn budget is
30, AgentGym's budget for ALFWorld; every test walkthrough is shorter (at most 19 steps).

The task ids' settings are in :mod:`.tasks`. The oracle (:mod:`.oracle`) plays the game's
walkthrough (TextWorld's gold command sequence, stored with the game in the cache): the k-th
assistant turn plays step k. It shares nothing with the env instance: it reads the
walkthrough from the cache entry (generating the game if needed) in a worker thread.

The env is blocking (TextWorld's Z-machine interpreter and state tracking, and game
generation on a cache miss) and runs each instance in its own worker process. A generation
takes a few seconds on an idle core (much longer on a busy machine), inside ``reset``; warm
the cache before large runs with :func:`pregenerate`, e.g. ``pregenerate(range(50))``.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

from gymux.env_plugins.builtin.textworld.games import (
    INSTALL_HINT,
    TEXTWORLD_VERSION,
    ensure_game,
)
from gymux.env_plugins.builtin.textworld.oracle import TextWorldOracle
from gymux.env_plugins.builtin.textworld.tasks import (
    MAX_TURNS,
    TEST_IDS,
    TRAIN_IDS,
    params_for_task,
    pregenerate,
    walkthrough_for,
)
from gymux.env_plugins.parsing import parse_react_action
from gymux.env_plugins.protocol import Observation, StepResult, Task
from gymux.errors import EnvError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "MAX_TURNS",
    "TEST_IDS",
    "TRAIN_IDS",
    "TextWorldEnv",
    "TextWorldOracle",
    "clean_feedback",
    "params_for_task",
    "parse_textworld_action",
    "pregenerate",
    "walkthrough_for",
]

# --------------------------------------------------------------------------- text


# A line made only of the banner's drawing characters (and at least one of them).
_BANNER_LINE = re.compile(r"^[ _|\\/$<>]*[_|\\/$][ _|\\/$<>]*$")
# The command prompt, followed on the same line by the status bar ("-= Kitchen =-3/12").
_PROMPT_LINE = re.compile(r"^>.*$")
_RESTART_LINE = re.compile(r"^\s*Would you like to RESTART, RESTORE a saved game.*$")


def clean_feedback(text: str) -> str:
    """The game's text without banner, prompt, status bar and restart question."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if _BANNER_LINE.match(line) or _PROMPT_LINE.match(line) or _RESTART_LINE.match(line):
            continue
        if line.startswith(" " * 8):  # centred lines such as "*** The End ***"
            line = line.strip()
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _with_actions(text: str, actions: list[str] | None) -> str:
    if not actions:
        return text
    return f"{text}\n\nAVAILABLE ACTIONS: {', '.join(actions)}"


def _normalise(command: str) -> str:
    return " ".join(command.split()).lower()


def parse_textworld_action(text: str) -> str:
    """ReAct ``Action:`` extraction; the command is lower-cased with single spaces."""
    return _normalise(parse_react_action(text))


# --------------------------------------------------------------------------- the environment


def _import_textworld() -> ModuleType:
    try:
        import textworld  # type: ignore[import-untyped]
    except ImportError as exc:
        raise EnvError(f"the textworld env needs TextWorld: {INSTALL_HINT} ({exc})") from None
    module: ModuleType = textworld
    version = getattr(module, "__version__", "?")
    if version != TEXTWORLD_VERSION:
        raise EnvError(
            f"the textworld env needs TextWorld {TEXTWORLD_VERSION} (found {version}); "
            f"{INSTALL_HINT}"
        )
    return module


class TextWorldEnv:
    """One TextWorld game at a time; blocking (:class:`SyncEnv`), reused across episodes."""

    def __init__(self) -> None:
        self._tw = _import_textworld()
        self._infos = self._tw.EnvInfos(
            admissible_commands=True, won=True, lost=True, score=True, max_score=True, moves=True
        )
        self._game: Any = None
        self._gamefile: str | None = None
        self._admissible: list[str] = []
        self._done = True
        self._started = False
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise EnvError("textworld env is closed; create a new instance")

    def reset(self, task: Task) -> Observation:
        self._check_open()
        params = params_for_task(task.id)
        entry = ensure_game(params)
        if self._game is None or self._gamefile != entry.gamefile:
            self._stop_game()
            with warnings.catch_warnings():
                # Jericho does not know generated games; TextWorld tracks score itself.
                warnings.filterwarnings("ignore", message=r".*is not fully supported")
                self._game = self._tw.start(entry.gamefile, request_infos=self._infos)
            self._gamefile = entry.gamefile
        state = self._game.reset()
        self._admissible = list(state["admissible_commands"] or [])
        self._done = False
        self._started = True
        return Observation(
            text=_with_actions(clean_feedback(state.feedback), self._admissible),
            admissible_actions=list(self._admissible),
        )

    def step(self, action: str) -> StepResult:
        self._check_open()
        if not self._started:
            raise EnvError("textworld env: step() called before reset()")
        if self._done:
            raise EnvError("textworld env: step() called after the game ended; call reset() first")
        command = _normalise(action)
        admissible = command in self._admissible
        state, _score, _game_over = self._game.step(command)
        won, lost = bool(state["won"]), bool(state["lost"])
        self._done = won or lost
        self._admissible = [] if self._done else list(state["admissible_commands"] or [])
        text = clean_feedback(state.feedback) or "Nothing happens."
        return StepResult(
            observation=Observation(
                text=_with_actions(text, self._admissible),
                admissible_actions=None if self._done else list(self._admissible),
            ),
            reward=1.0 if won else 0.0,
            done=self._done,
            info={
                "won": won,
                "lost": lost,
                "score": int(state["score"]),
                "max_score": int(state["max_score"]),
                "moves": int(state["moves"]),
                "admissible": admissible,
            },
        )

    def _stop_game(self) -> None:
        game, self._game, self._gamefile = self._game, None, None
        if game is not None:
            game.close()

    def close(self) -> None:
        self._closed = True
        self._started = False
        self._admissible = []
        self._stop_game()


# --------------------------------------------------------------------------- the spec
