"""BabyAI (AgentGym's text version): 40 grid-world levels of minigrid, played in words.

The agent is told a mission ("Your goal: put the red box next to a grey door") and sees,
each turn, a description of what is in its view: every door, key, ball and box with an id
(``red ball 1``: colour, type, and a number counting that colour and type from the
nearest), where it is relative to the agent, what lies straight ahead, what the agent
carries, and the list of actions available right now.

Actions (AgentGym's BabyAI set; each one is one turn):

* ``turn left``, ``turn right``, ``move forward``;
* ``go to <color> <type> <n>`` -- walk to face the object;
* ``pick up <color> <type> <n>`` -- walk to it and pick it up (keys, balls, boxes);
* ``go through <color> door <n>`` -- walk into the doorway of an open door;
* ``toggle and go through <color> door <n>`` -- walk to a closed door (or a locked one,
  carrying the key of its colour), open it and step into the doorway;
* ``toggle``, ``drop``, ``pick up`` -- act on the cell right in front;
* ``check available actions``.

High-level actions are compiled into minigrid's primitive moves by a breadth-first search
over ``(x, y, direction)`` through the cells the agent has seen since the reset (empty floor
and open doors). AgentGym's spellings are accepted too (``pickup``, ``red closed door 1``).
Actions that do not apply now, or name no object in view, are reported in the observation
(the episode goes on); output without an ``Action:`` line is an
:class:`~gymux.env_plugins.ActionParseError`.

Tasks. Task id ``i`` is level ``AGENTGYM_LEVELS[i % 40]`` with ``env.reset(seed=i // 40)``,
AgentGym's formula (its ``data_idx % 40 + 1`` level number). The 40 levels are AgentGym's
list, in its order; minigrid 3.2.0 registers 96 BabyAI ids (pinned by a fingerprint in the
tests) and AgentGym's ``BabyAI-GoToObjS6-v0`` (under AgentGym's ``minigrid<2.5.0`` a
room of size 4; minigrid 3 renamed the fixed size-6 level ``-v1``) is served by
``BabyAI-GoToObjS4-v0``, the same level, so task id ``i`` is AgentGym's ``data_idx`` ``i``
(AgentEval's ``babyai_i``): same mission, start pose and grid for every test id (only
train ids 155, 156 and 2994 of the 4000 get another mission from minigrid 3.2.0). Splits:
``test`` = ids ``0..89`` (AgentGym's BabyAI test set has 90 tasks; this covers every level
with seeds 0 and 1, and the first ten levels with seed 2), ``train`` = ids ``90..3999``.
The ids depend on minigrid 3.2.0 and on numpy's PCG64 bit stream (the levels are generated
by ``env.reset(seed=...)``).

Reward and success, as minigrid and AgentGym define them: completing the mission gives
minigrid's reward ``1 - 0.9 * (steps / max_steps)`` (``steps`` counts primitive moves) and
ends the episode; that reward is the score, and success is any reward above 0. Running out
of minigrid's ``max_steps`` ends the episode with reward 0. A minigrid "failure" verdict
(strict levels: the wrong door opened, or the steps of an ordered mission done out of order)
does not end the episode -- as in AgentGym, play goes on. Differences from AgentGym: the
mission text is minigrid's own (AgentGym rewrites "then" and "after you" to "and", which
loses the order), and every success ends the episode (AgentGym keeps slow successes with
reward <= 0.5 running).

The spec's turn cap is 40 (``MAX_TURNS``), enough for the oracle to finish every test task;
AgentGym's evaluation budget of 20 turns (``AGENTGYM_TURNS``) is what the
``agenteval-offline`` suite applies, as AgentGym does.

:class:`BabyAIOracle` (:mod:`.oracle`) plays with minigrid's BabyAI bot
(``minigrid.utils.baby_ai_bot``) and the gold map. Each turn it replays the conversation's
actions on a private copy of the level with the bot following along (the bot's advising
mode, told every primitive move), and costs every available action by the bot's complete
plan from the state that action leads to (roughly how many env actions, then primitive
moves, remain); it looks one action further for the three best and takes the best pair's
first action. So one turn usually covers many of the bot's primitive moves. Gold knowledge
makes the bot's plans short: it is shown every cell reachable without unlocking a door (no
exploring), may path through closed doors (opening them on the way), heads for a locked door
when nothing else is left, and drops the key of a door it just unlocked at the first free
cell instead of walking to a "non-blocking" spot. Two bot gaps are filled: KeyInBox (the
oracle opens the box hiding the key first) and the PutNext...Carrying levels (the bot is
told the object is already in hand). On the test split it succeeds on all 90 tasks within
the spec's 40 turns, and on 86 of 90 (95.6%) within AgentGym's 20: the four that need more
are the longest multi-part missions (BossLevel, BossLevelNoUnlock and SynthSeq share one
4-part mission at seed 0; MiniBossLevel at seed 1), which the oracle finishes in 22-30
high-level actions. Replays are cached (a bounded LRU keyed by task id and the exact actions
so far, together with the ranking the previous turn's look-ahead already computed), so a
turn extends the last one's work instead of starting over; the answers are the same as
without the cache.

Upstream: minigrid 3.2.0 (Apache-2.0), gymnasium 1.4.0 (MIT); no data files.
"""

from __future__ import annotations

from typing import Any

from gymux.env_plugins.builtin.babyai.actions import (
    BabyAIGame,
    load_minigrid,
    normalise_action,
    parse_babyai_action,
)
from gymux.env_plugins.builtin.babyai.oracle import BabyAIOracle, oracle_action
from gymux.env_plugins.builtin.babyai.text import LEVEL_COUNT, level_and_seed
from gymux.env_plugins.protocol import Observation, StepResult, Task
from gymux.errors import EnvError

__all__ = [
    "AGENTGYM_TURNS",
    "MAX_TURNS",
    "TEST_SIZE",
    "TRAIN_END",
    "BabyAIEnv",
    "BabyAIOracle",
    "oracle_action",
    "parse_babyai_action",
]

#: Number of tasks in the ``test`` split (ids ``0 .. TEST_SIZE - 1``), as in AgentGym.
TEST_SIZE = 90
#: The ``train`` split is ids ``TEST_SIZE .. TRAIN_END - 1`` (seeds up to 99 per level).
TRAIN_END = 100 * LEVEL_COUNT
#: The spec's turn cap: the oracle finishes every test task within it.
MAX_TURNS = 40
#: AgentGym's evaluation budget for BabyAI (applied by the ``agenteval-offline`` suite).
AGENTGYM_TURNS = 20

# --------------------------------------------------------------------------- the env


class BabyAIEnv:
    """One BabyAI level at a time; blocking (:class:`SyncEnv`), reused across episodes."""

    def __init__(self) -> None:
        load_minigrid()  # fail early, with the install hint, if the extra is missing
        self._game: BabyAIGame | None = None
        self._closed = False

    def reset(self, task: Task) -> Observation:
        if self._closed:
            raise EnvError("babyai env is closed; create a new instance")
        try:
            level, seed = level_and_seed(task.id)
        except ValueError as exc:
            raise EnvError(str(exc)) from None
        self._game = game = BabyAIGame(level, seed)
        text = game.observation_text(f"Your goal: {game.mission}")
        return Observation(text=text, admissible_actions=game.action_names())

    def step(self, action: str) -> StepResult:
        if self._closed:
            raise EnvError("babyai env is closed; create a new instance")
        game = self._game
        if game is None:
            raise EnvError("babyai env: step() called before reset()")
        if game.ended:
            raise EnvError("babyai env: step() called after the episode ended; reset first")
        outcome = game.execute(action)
        info: dict[str, Any] = {
            "valid": outcome.valid,
            "primitive_steps": game.steps,
            "max_steps": int(game.env.max_steps),
            "level": game.level,
            "seed": game.seed,
        }
        if outcome.done:
            info["success"] = outcome.success
            return StepResult(
                observation=Observation(text=outcome.message, admissible_actions=[]),
                reward=outcome.reward,
                done=True,
                info=info,
            )
        if normalise_action(action).startswith("check"):
            text = outcome.message
        else:
            text = game.observation_text(outcome.message)
        return StepResult(
            observation=Observation(text=text, admissible_actions=game.action_names()),
            reward=0.0,
            done=False,
            info=info,
        )

    def close(self) -> None:
        self._closed = True
        self._game = None


# --------------------------------------------------------------------------- the spec
