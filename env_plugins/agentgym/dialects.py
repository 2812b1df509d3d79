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
  ``{observation, reward, score, done}`` and the client takes ``score`` as the reward; no
  ``/close``. The client sends the text after ``Action:``.
* ``babyai`` -- ``agentenv-babyai/agentenv_babyai/server.py``, ``envs/babyai.py``: ``{"id"}``;
  ``data_idx``; reset and step answer ``{observation, reward, score, done}``, ``score`` is the
  reward; the server has neither ``/observation`` nor ``/close``. Text after ``Action:``.
* ``textcraft`` -- ``agentenv-textcraft/agentenv_textcraft/server.py``, ``envs/textcraft.py``:
  ``/create`` takes ``{commands, goal}`` (both may be null) and answers ``{id, observation}``;
  ``data_idx``; ``/step`` answers ``{observation, reward, done}``; no ``/close`` in the
  server. The client takes the line after ``Action:``.
* ``maze`` and ``wordle`` -- ``agentenv-lmrlgym/agentenv_lmrlgym/server.py``,
  ``maze/environment.py``, ``envs/lmrlgym.py``: one server, the routes under ``/maze/`` and
  ``/wordle/``; ``{"id"}``; maze resets with ``game``, wordle with ``seed``; ``/step`` answers
  ``{observation, reward, done}``; no ``/close``; failures (unknown id, stepping a finished
  episode, a bad game index) arrive as **HTTP 200** with ``{"error": "..."}``. Text after
  ``Action:``.
* ``sqlgym`` -- ``agentenv-sqlgym/agentenv_sqlgym/server.py``, ``envs/sqlgym.py``: bare
  integer from ``/create``; ``env_idx``; ``/reset`` takes ``item_id`` and answers
  ``[observation, null]``; ``/step`` answers ``{state, reward, done, info}``; no ``/close``. The
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
    "dialect_for",
    "extract_action",
]

#: How the reply to ``/create`` carries the new instance id.
CreateReply = Literal["object", "bare"]
#: How the reply to ``/reset`` carries the first observation.
ResetReply = Literal["object", "pair", "text"]
#: What the client sends as the action: the ReAct action, the SQL in a ```sql fence, or
#: the model's whole output (the server parses it).
ActionMode = Literal["react", "sql", "raw"]


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
            max_turns=30,
            reward_range=(-100.0, 100.0),
        ),
        Dialect(
            name="babyai",
            reward_key="score",
            has_observation=False,
            max_turns=20,
        ),
        Dialect(
            name="textcraft",
            create_body={"commands": None, "goal": None},
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
    return parse_react_action(text)
