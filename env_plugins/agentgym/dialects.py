"""The AgentGym HTTP dialects: one table entry per environment-server family.

AgentGym (WooooDyy/AgentGym) runs every environment as its own HTTP server. They share a
shape -- ``POST /create``, ``POST /reset``, ``POST /step``, ``GET /observation`` -- but differ
in the details, so each family gets one :class:`Dialect` here, and both the client plugin
(:mod:`.client`) and the server (:mod:`.server`) read the table
instead of scattering ``if env == ...`` through their code.

Where each fact comes from (paths in WooooDyy/AgentGym; the client files are
``agentenv/agentenv/envs/<name>.py``, the servers ``agentenv-<name>/agentenv_<name>/server.py``):

* ``webshop`` -- ``agentenv-webshop/agentenv_webshop/server.py`` and ``envs/webshop.py``:
  ``/create`` answers a bare integer; the instance field is ``env_idx``; ``/reset`` takes
  ``session_id`` and answers ``[observation, null]`` (the client then reads
  ``GET /observation?env_idx=``); ``/step`` answers ``{state, reward, done, info}``;
  ``/close`` exists (``{closed}``). The client extracts ``search[...]``/``click[...]`` from the
  model's ReAct output before stepping; it retries a 503 (0.1 s apart).
* ``alfworld`` -- ``agentenv-alfworld/agentenv_alfworld/server.py``, ``envs/alfworld.py``:
  ``/create`` answers ``{"id"}``; ``/reset`` takes ``game`` and ``world_type`` (``"Text"``) and
  answers ``{observation, available_actions, ...}``; ``/step`` answers ``{observation, reward,
  done, available_actions}``; the server has no ``/close``. Extracted actions.
* ``sciworld`` -- ``agentenv-sciworld/agentenv_sciworld/server.py``, ``envs/sciworld.py``:
  ``{"id"}``; ``/reset`` takes ``data_idx`` and answers ``{observation, task_description,
  ...}`` (the client shows ``task_description + "\\n" + observation``); ``/step`` answers
  ``{observation, reward, score, done}`` and the client takes ``score`` as the reward;
  ``POST /close {"id"}`` exists (``environment.py`` ``close()``: marks the instance deleted
  and closes its JVM). AgentGym's success is ``score == 100`` (``controller/utils.py``:
  ``rewards == 1 or rewards == 100``). The client sends the text after ``Action:``.
* ``babyai`` -- ``agentenv-babyai/agentenv_babyai/server.py``, ``environment.py``,
  ``envs/babyai.py``: ``{"id"}``; ``data_idx``; reset and step answer ``{observation,
  reward, score, done}``, ``score`` is the reward; every observation ends with
  ``\\nAvailable actions: ["turn left", ...]`` (``BabyAIEnv.step``/``reset``), the admissible
  actions; ``GET /observation?id=`` and ``POST /close {"id"}`` exist. The minigrid reward of
  a solved level is ``1 - 0.9 * steps / max_steps``: below 1, so AgentGym's trainers'
  ``reward == 1`` success rule (``trainer/agentevol_trainer.py``) almost never counts it;
  gymux's rule is ``reward > 0`` (threshold 0.05, as gymux's own babyai). Text after
  ``Action:``.
* ``textcraft`` -- ``agentenv-textcraft/agentenv_textcraft/server.py``, ``env_wrapper.py``,
  ``environment.py``, ``envs/textcraft.py``: ``/create`` takes ``{commands, goal}`` (both may
  be null) and answers ``{id, observation}``; ``data_idx``; ``/reset`` answers ``{id,
  observation, done, reward}``; ``/step`` answers ``{observation, reward, done}``;
  ``POST /close {"id"}`` exists. The reset observation lists ``Crafting commands:`` (``craft
  <n> <item> using <n> <item>, ...``); the actions are those commands, ``get <n> <item>``
  and ``inventory`` (``TextCraftEnv.action_regexes``). The client takes the line after
  ``Action:`` and keeps only ``[A-Za-z0-9, ]`` (``re.sub(r"[^A-Za-z0-9, ]+", "", action)``).
* ``maze`` and ``wordle`` -- ``agentenv-lmrlgym/agentenv_lmrlgym/server.py``,
  ``maze/environment.py``, ``wordle/environment.py``, ``envs/lmrlgym.py``: one server, the
  routes under ``/maze/`` and ``/wordle/``; ``{"id"}``; maze resets with ``game``, wordle
  with ``seed``; ``/step`` answers ``{observation, reward, done}``; **no** ``/close`` (an
  LMRL-Gym instance lives as long as the server); failures (unknown id, stepping a finished
  episode, a bad game index) arrive as **HTTP 200** with ``{"error": "..."}``. Wordle's
  guesses are the words of ``GET /wordle/filtered_vocab?id=`` (AgentGym's client puts them
  in its first observation), spelled with spaces (``s h i r e``). Text after ``Action:``.
* ``sqlgym`` -- ``agentenv-sqlgym/agentenv_sqlgym/server.py``, ``environment.py``,
  ``envs/sqlgym.py``: bare integer from ``/create``; ``env_idx``; ``/reset`` takes
  ``item_id`` and answers ``[observation, null]``; ``/step`` answers ``{state, reward, done,
  info}``; ``GET /observation?env_idx=`` answers the current item's question; no
  ``/close``. ``SqlGymEnvServer`` holds at most ``sz = 8`` instances: the ninth ``/create``
  and every later one answer an id **already handed out** (round robin over the eight), so
  more than 8 clients at once share instances and overwrite each other's episodes. The
  client sends the SQL inside the ```` ```sql ```` fence.
* ``tool`` (weather, movie, academia, todo, sheet) -- ``agentenv-tool/agentenv_weather/
  weather_server.py``, ``envs/weather.py`` (the other four are built the same way):
  ``/create`` takes ``{"id": 0}`` and answers a bare integer; ``env_idx``; ``/reset`` takes
  ``id`` (the task) and answers the observation as a bare JSON string; ``/step`` answers
  ``{observation, reward, done}``; no ``/close``. The client sends the model's **whole output**
  (``Action: name with Action Input: {...}`` is parsed by the server).
* ``webarena`` -- ``agentenv-webarena/agentenv_webarena/server.py``, ``envs/webarena.py``
  (Flask): ``/create`` answers ``{"env_idx"}``; ``/reset`` takes ``{seed: 0, idx}`` and answers
  ``{observation}``; ``/step`` answers ``{observation, reward, terminated, truncated, info}``;
  ``/close`` answers the plain text ``closed``. The whole model output is sent.
* ``searchqa`` -- ``agentenv-searchqa/agentenv_searchqa/server.py`` (brick-pid/AgentGym
  fork, the one AgentGym-RL documents): instance field ``env_id``; ``/create`` answers
  ``{"env_id"}``; ``/reset`` takes ``task_id`` and answers ``{observation, info}``; ``/step``
  answers ``{observation, reward, done, info}``; ``/close`` answers ``{closed, env_id}``;
  ``GET /health``. The whole model output (``<search>``/``<answer>`` tags) is sent.
* ``gymux`` -- not AgentGym's: the default dialect of ``gymux serve-env`` for envs with no
  AgentGym family. ``{"id"}``, ``data_idx``, ``/step`` answers ``{observation, reward, done,
  info, available_actions}``, ``/close`` and ``/health`` exist, errors use real status codes.

Capacity: ``capacity`` is the most instances a family's server holds apart (sqlgym 8); the
bridge caps its instances per server at it and never runs two of its episodes on one server
instance (see :mod:`.client`). Success: ``agentgym_success`` is the reward(s) AgentGym's
trainers and ``controller/utils.py`` count as a success (``reward == 1``, sciworld's score
``100``); ``success_threshold`` is gymux's rule (``reward >= threshold``).

Turn budgets (``max_turns``) are AgentGym's where gymux records them (maze 15, wordle 8,
textcraft 20, babyai 20, sciworld 30, sqlgym 1); the others are gymux defaults meant to be
overridden per suite.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from gymux.env_plugins.parsing import parse_react_action
from gymux.env_plugins.protocol import ActionParseError

__all__ = [
    "AGENTGYM_ENVS",
    "DIALECTS",
    "Dialect",
    "actions_in",
    "dialect_for",
    "extract_action",
    "spaced_word",
]

#: How the reply to ``/create`` carries the new instance id.
CreateReply = Literal["object", "bare"]
#: How the reply to ``/reset`` carries the first observation.
ResetReply = Literal["object", "pair", "text"]
#: What the client sends as the action: the ReAct action, the SQL in a ```sql fence, or
#: the model's whole output (the server parses it).
ActionMode = Literal["react", "sql", "raw"]
#: Where a family's admissible actions are when it has no list key: babyai's
#: ``Available actions: [...]`` line, textcraft's crafting commands, wordle's vocabulary.
ActionsFrom = Literal["babyai", "textcraft", "wordle"]


class Dialect(msgspec.Struct, frozen=True, kw_only=True):
    """One AgentGym server family's wire format."""

    name: str
    #: Route prefix: ``""`` or e.g. ``"/maze"``.
    prefix: str = ""
    #: The instance field in request bodies and query strings: ``id``, ``env_idx``, ``env_id``.
    id_field: str = "id"
    #: JSON body of ``/create`` (``None``: no body).
    create_body: dict[str, Any] | None = None
    create_reply: CreateReply = "object"
    #: The reset field naming the task: ``data_idx``, ``game``, ``seed``, ``session_id`` ...
    reset_field: str = "data_idx"
    #: Further constant fields of the reset body.
    reset_extra: dict[str, Any] = msgspec.field(default_factory=dict)
    reset_reply: ResetReply = "object"
    #: Reset reply keys joined (non-empty parts, newline-separated) into the observation.
    reset_obs_keys: tuple[str, ...] = ("observation",)
    #: After reset, read the observation with ``GET /observation`` instead (webshop).
    reset_refetch: bool = False
    #: Step reply key of the observation text (``observation`` or ``state``).
    step_obs_key: str = "observation"
    #: Step reply key of the reward AgentGym's client reports (``reward`` or ``score``).
    reward_key: str = "reward"
    #: Step reply keys any of which being true ends the episode.
    done_keys: tuple[str, ...] = ("done",)
    #: Reply key listing admissible actions (reset and step), if the family sends them.
    actions_key: str | None = None
    has_observation: bool = True
    has_close: bool = False
    #: The close reply is plain text, not JSON (webarena).
    close_reply_text: bool = False
    action_mode: ActionMode = "react"
    #: For ``raw`` mode: output without a match is rejected before it reaches the server.
    raw_marker: str = ""
    #: Default turn budget of a bridged env of this family.
    max_turns: int = 30
    #: Lowest and highest reward the family reports.
    reward_range: tuple[float, float] = (0.0, 1.0)
    #: A few valid actions (the random policy's fallback when the server lists none).
    example_actions: tuple[str, ...] = ()
    #: Admissible actions parsed from the observations (families with no list key).
    actions_from: ActionsFrom | None = None
    #: What the client keeps of an action: a regex of characters dropped (textcraft).
    action_drop: str = ""
    #: The most instances the server holds apart (``None``: no limit known).
    capacity: int | None = None
    #: After each step, ``GET /observation`` must still show the episode's own task: a
    #: server that can hand one instance to two clients (sqlgym) is caught sharing it.
    verify_observation: bool = False
    #: Rewards AgentGym counts as a success (``reward == 1``; sciworld's score 100).
    agentgym_success: tuple[float, ...] = (1.0,)
    #: gymux's success rule: ``reward >= success_threshold``.
    success_threshold: float = 1.0
    #: One-line action format shown in the plugin's instruction.
    action_format: str = "Thought:\n<reasoning>\n\nAction:\n<action>"

    def path(self, route: str) -> str:
        """``"/create"`` -> ``"/maze/create"`` for prefixed families."""
        return f"{self.prefix}{route}"


_RAW_REACT = "Thought: <reasoning>\n\nAction: <the tool call>"

DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect(
            name="webshop",
            id_field="env_idx",
            create_reply="bare",
            reset_field="session_id",
            reset_reply="pair",
            reset_refetch=True,
            step_obs_key="state",
            has_close=True,
            max_turns=10,
            action_format="Thought:\n<reasoning>\n\nAction:\nsearch[<keywords>] or click[<value>]",
        ),
        Dialect(
            name="alfworld",
            reset_field="game",
            reset_extra={"world_type": "Text"},
            actions_key="available_actions",
            max_turns=30,
        ),
        Dialect(
            name="sciworld",
            reset_obs_keys=("task_description", "observation"),
            reward_key="score",
            has_close=True,
            example_actions=("look around", "inventory"),
            max_turns=30,
            reward_range=(-100.0, 100.0),
            agentgym_success=(100.0,),
            success_threshold=100.0,
        ),
        Dialect(
            name="babyai",
            reward_key="score",
            has_close=True,
            actions_from="babyai",
            max_turns=20,
            success_threshold=0.05,
        ),
        Dialect(
            name="textcraft",
            create_body={"commands": None, "goal": None},
            has_close=True,
            actions_from="textcraft",
            action_drop=r"[^A-Za-z0-9, ]+",
            max_turns=20,
        ),
        Dialect(
            name="maze",
            prefix="/maze",
            reset_field="game",
            example_actions=("move up", "move down", "move left", "move right"),
            max_turns=15,
            reward_range=(-100.0, 1.0),
        ),
        Dialect(
            name="wordle",
            prefix="/wordle",
            reset_field="seed",
            actions_from="wordle",
            max_turns=8,
            reward_range=(-100.0, 1.0),
        ),
        Dialect(
            name="sqlgym",
            id_field="env_idx",
            create_reply="bare",
            reset_field="item_id",
            reset_reply="pair",
            step_obs_key="state",
            action_mode="sql",
            capacity=8,
            verify_observation=True,
            example_actions=(
                "SELECT name FROM sqlite_master WHERE type = 'table'",
                "SELECT count(*) FROM sqlite_master",
            ),
            max_turns=1,
            action_format="Thought: <reasoning>\n\nAction: ```sql\n<one SQL statement>\n```",
        ),
        Dialect(
            name="tool",
            id_field="env_idx",
            create_body={"id": 0},
            create_reply="bare",
            reset_field="id",
            reset_reply="text",
            action_mode="raw",
            raw_marker=r"(?im)^\s*action\s*:",
            max_turns=15,
            action_format=_RAW_REACT,
        ),
        Dialect(
            name="webarena",
            id_field="env_idx",
            reset_field="idx",
            reset_extra={"seed": 0},
            done_keys=("terminated", "truncated"),
            has_close=True,
            close_reply_text=True,
            action_mode="raw",
            raw_marker=r"```",
            max_turns=25,
            action_format=(
                "<reasoning> In summary, the next action I will perform is ```<action>```"
            ),
        ),
        Dialect(
            name="searchqa",
            id_field="env_id",
            reset_field="task_id",
            has_observation=False,
            has_close=True,
            action_mode="raw",
            raw_marker=r"<(search|answer)>",
            max_turns=5,
            action_format="<think>...</think> then <search>query</search> or <answer>...</answer>",
        ),
        Dialect(
            name="gymux",
            actions_key="available_actions",
            has_close=True,
        ),
    )
}

#: AgentGym environment name -> dialect name.
AGENTGYM_ENVS: dict[str, str] = {
    "webshop": "webshop",
    "alfworld": "alfworld",
    "sciworld": "sciworld",
    "babyai": "babyai",
    "textcraft": "textcraft",
    "maze": "maze",
    "wordle": "wordle",
    "sqlgym": "sqlgym",
    "weather": "tool",
    "movie": "tool",
    "academia": "tool",
    "todo": "tool",
    "sheet": "tool",
    "webarena": "webarena",
    "searchqa": "searchqa",
}


def dialect_for(env: str, dialect: str | None = None) -> Dialect:
    """The dialect named ``dialect``, else the one of AgentGym env ``env``, else ``gymux``."""
    name = dialect or AGENTGYM_ENVS.get(env, "gymux")
    try:
        return DIALECTS[name]
    except KeyError:
        known = ", ".join(sorted(DIALECTS))
        raise ValueError(f"unknown AgentGym dialect {name!r} (known: {known})") from None


_SQL_FENCE = re.compile(r"```sql\s*(.*?)```", re.DOTALL | re.IGNORECASE)

#: Where gymux's server lists admissible actions for families that have no key of their
#: own (an extra field: AgentGym's clients ignore it).
GYMUX_ACTIONS_KEY = "available_actions"


def extract_action(dialect: Dialect, text: str) -> str:
    """What the client sends for the model output ``text`` (ActionParseError if nothing)."""
    if dialect.action_mode == "sql":
        found = _SQL_FENCE.findall(text)
        if found and found[-1].strip():
            sql: str = found[-1]
            return sql.strip()
        # AgentGym's SQLGym prompt asks for a ```sql block; a ReAct "Action: SELECT ..."
        # answer (gymux's sqlgym prompt) is accepted too.
        try:
            return parse_react_action(text)
        except ActionParseError:
            raise ActionParseError(
                "no SQL found. Put one SQL statement in a ```sql ... ``` block after Action:."
            ) from None
    if dialect.action_mode == "raw":
        if "\x00" in text or not re.search(dialect.raw_marker, text):
            raise ActionParseError(f"no action found. Answer as: {dialect.action_format}")
        return text
    action = parse_react_action(text)
    if dialect.action_drop:
        # As AgentGym's client does (textcraft): drop the characters it drops, squeeze spaces.
        action = " ".join(re.sub(dialect.action_drop, "", action).split())
        if not action:
            raise ActionParseError(f"no action found. Answer as: {dialect.action_format}")
    return action


#: babyai's observations end with ``\nAvailable actions: ["turn left", "turn right", ...]``.
_BABYAI_ACTIONS = re.compile(r"Available actions: \[([^\]\n]*)\]\s*$")
_QUOTED = re.compile(r'"([^"]*)"')
#: A textcraft crafting command: ``craft 4 oak planks using 1 oak log``.
_CRAFT = re.compile(r"^craft (\d+ [a-z0-9 ]+?) using (\d+ [a-z0-9 ]+(?:, \d+ [a-z0-9 ]+)*)$")


def actions_in(dialect: Dialect, text: str) -> list[str] | None:
    """The admissible actions an observation of ``dialect``'s family lists, or ``None``.

    babyai: the ``Available actions: [...]`` line (``BabyAIEnv.step``); textcraft: the
    reset observation's crafting commands, ``get <n> <ingredient>`` for each ingredient they
    use and ``inventory`` (``TextCraftEnv.action_regexes``). Other families: ``None``.
    """
    if dialect.actions_from == "babyai":
        found = _BABYAI_ACTIONS.search(text)
        return _QUOTED.findall(found.group(1)) if found else None
    if dialect.actions_from == "textcraft":
        crafts: list[str] = []
        gets: dict[str, None] = {}
        for line in text.splitlines():
            match = _CRAFT.match(line.strip())
            if match is None:
                continue
            crafts.append(match.group(0))
            for part in match.group(2).split(", "):
                gets[f"get {part}"] = None
        if not crafts:
            return None
        return [*crafts, *gets, "inventory"]
    return None


def spaced_word(word: str) -> str:
    """A wordle guess as AgentGym spells it: ``"shire"`` -> ``"s h i r e"``."""
    return " ".join(word.strip())
