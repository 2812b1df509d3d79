"""The environment protocol: what a gymux environment is and what it publishes.

An environment is anything with ``reset(task)``, ``step(action)`` and ``close()``.
Two flavours are first-class:

* :class:`Env` -- ``async`` methods, run on the event loop (must never block it).
* :class:`SyncEnv` -- ordinary blocking methods; the runtime runs them in a worker
  thread or in a dedicated worker process (see :class:`Execution`).

Each plugin publishes one :class:`EnvPlugin`: its :class:`EnvSpec` (id, version,
task splits, instruction, action format, turn budget, reward range and success rule),
a factory that makes fresh instances, the action parser, and optionally an
:class:`Oracle` factory: a gold solver that the ``oracle`` policy wraps.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import msgspec

from gymux.errors import ActionParseError, EnvError, TransientEnvError, UnknownSplitError
from gymux.messages import PolicyRequest

__all__ = [
    "ActionParseError",
    "Env",
    "EnvError",
    "EnvPlugin",
    "EnvSpec",
    "Execution",
    "Observation",
    "Oracle",
    "StepResult",
    "SuccessRule",
    "SyncEnv",
    "Task",
    "TaskSplit",
    "TransientEnvError",
    "assistant_turn",
    "splits_from",
]

#: JSON-compatible scalar values allowed in ``info`` mappings.
InfoValue = str | int | float | bool | None | list[Any] | dict[str, Any]


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """What the agent sees after ``reset`` or ``step``."""

    text: str
    #: Actions the environment accepts right now, where it can enumerate them.
    admissible_actions: list[str] | None = None


class StepResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one ``step``."""

    observation: Observation
    reward: float
    done: bool
    info: dict[str, InfoValue] = msgspec.field(default_factory=dict)


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """One task of an environment: an integer id, unique within the env, and its split."""

    id: int
    split: str = ""


class TaskSplit(msgspec.Struct, frozen=True, kw_only=True):
    """A named set of task ids (``train``, ``test``, ...)."""

    name: str
    ids: list[int]

    @property
    def count(self) -> int:
        return len(self.ids)


class SuccessRule(msgspec.Struct, frozen=True, kw_only=True):
    """How an episode's final reward becomes success: ``reward >= threshold``."""

    threshold: float = 1.0

    def is_success(self, reward: float) -> bool:
        return reward >= self.threshold


class Execution(enum.StrEnum):
    """Where an environment's methods run."""

    #: ``async`` env, awaited on the event loop.
    ASYNC = "async"
    #: blocking env, each call in a worker thread.
    THREAD = "thread"
    #: blocking env, each instance in its own worker process (CPU-bound or crash-prone code).
    PROCESS = "process"


class EnvSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the runtime and a policy need to know about an environment."""

    id: str
    version: str
    #: Opening instruction of an episode (AgentGym style: instruction turn, then observation).
    instruction: str
    #: Human-readable description of the action format, e.g. ``"Action: move <dir>"``.
    action_format: str
    splits: dict[str, TaskSplit]
    max_turns: int
    reward_range: tuple[float, float] = (0.0, 1.0)
    success: SuccessRule = msgspec.field(default_factory=SuccessRule)
    #: A few valid actions; the random policy samples from them when the env gives none.
    example_actions: list[str] = msgspec.field(default_factory=list)
    description: str = ""
    #: How task ids line up with AgentGym's item ids (the ``data_idx`` its env servers take,
    #: AgentEval's ``<env>_<n>``): ``"same"`` when task id ``n`` is AgentGym's item ``n`` for
    #: every id AgentGym has; otherwise a short note on why not. Empty: no AgentGym
    #: counterpart, or not stated.
    agentgym_ids: str = ""

    def split(self, name: str) -> TaskSplit:
        try:
            return self.splits[name]
        except KeyError:
            known = ", ".join(sorted(self.splits)) or "none"
            raise UnknownSplitError(
                f"env {self.id!r} has no split {name!r} (known: {known})"
            ) from None


@runtime_checkable
class Env(Protocol):
    """An asynchronous environment instance. Instances are reused across episodes."""

    async def reset(self, task: Task) -> Observation: ...

    async def step(self, action: str) -> StepResult: ...

    async def close(self) -> None: ...


@runtime_checkable
class SyncEnv(Protocol):
    """A blocking environment instance; the runtime keeps its calls off the event loop."""

    def reset(self, task: Task) -> Observation: ...

    def step(self, action: str) -> StepResult: ...

    def close(self) -> None: ...


@runtime_checkable
class Oracle(Protocol):
    """A gold solver: answers an episode's turns from the env's gold information.

    ``solve`` gets the turn's request (episode id, ``task_id``, the conversation so far,
    admissible actions) and returns the answer text, e.g.
    ``gymux.react.format_react(thought, action)``. One instance serves many concurrent
    episodes: keep no per-episode state, derive everything from the request. ``version`` is
    recorded on trajectories as the version of the ``oracle`` policy.

    An oracle that holds resources (a process, a JVM) also defines ``async def aclose()``;
    it is called once, when the policy wrapping the oracle is closed, and may be called again.
    """

    version: str

    async def solve(self, request: PolicyRequest) -> str: ...


def assistant_turn(request: PolicyRequest) -> int:
    """Which answer of the episode ``request`` asks for, counting from 0: the number of
    assistant messages after the opening ``OK``. Replaying oracles play gold step k here."""
    return max(0, sum(1 for m in request.messages if m.role == "assistant") - 1)


def _default_parser(text: str) -> str:
    from gymux.env_plugins.parsing import parse_react_action

    return parse_react_action(text)


class EnvPlugin:
    """What a plugin's ``gymux.envs`` entry point resolves to.

    Args:
        spec: the environment's :class:`EnvSpec`.
        factory: zero-argument callable returning a fresh :class:`Env` or :class:`SyncEnv`.
            For :attr:`Execution.PROCESS` it must be importable as ``module:qualname``.
        execution: where the instance's methods run.
        parse_action: turns the model's raw output into an action string, raising
            :class:`ActionParseError` if there is none. Defaults to ReAct
            ``Thought: ... Action: ...`` parsing.
        oracle: zero-argument callable returning an :class:`Oracle` (a gold solver; the
            ``oracle`` policy wraps it), or ``None``. A callable returning a ready
            ``gymux.policies.Policy`` is accepted too and used as it is.
        max_instances: default cap on live instances of this env (the runtime config can
            lower or raise it).
        prepare: optional blocking callable taking a list of task ids that fetches,
            generates or builds what those tasks need (games, databases, indexes), so their
            first ``reset`` is fast. ``gymux prepare ENV --tasks ...`` calls it.
        requires: optional dependencies the env's instances import lazily, as
            ``{module: install hint}`` (``{"minigrid": "pip install 'gymux[babyai]'"}``).
            :meth:`missing` lists the hints of those not installed; ``gymux envs`` shows
            them and a run refuses to start without them.
    """

    __slots__ = (
        "execution",
        "factory",
        "max_instances",
        "oracle",
        "parse_action",
        "prepare",
        "requires",
        "spec",
    )

    def __init__(
        self,
        spec: EnvSpec,
        factory: Callable[[], Env | SyncEnv],
        *,
        execution: Execution | str = Execution.ASYNC,
        parse_action: Callable[[str], str] | None = None,
        oracle: Callable[[], Oracle] | Callable[[], object] | None = None,
        max_instances: int = 64,
        prepare: Callable[[list[int]], object] | None = None,
        requires: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(spec, EnvSpec):
            raise TypeError(f"spec must be an EnvSpec, got {type(spec).__name__}")
        if not callable(factory):
            raise TypeError("factory must be callable")
        if max_instances < 1:
            raise ValueError("max_instances must be >= 1")
        self.spec = spec
        self.factory = factory
        try:
            self.execution = Execution(execution)
        except ValueError:
            choices = ", ".join(e.value for e in Execution)
            raise ValueError(f"execution must be one of {choices}; got {execution!r}") from None
        self.parse_action = parse_action or _default_parser
        self.oracle = oracle
        self.max_instances = max_instances
        if prepare is not None and not callable(prepare):
            raise TypeError("prepare must be callable or None")
        self.prepare = prepare
        self.requires = dict(requires or {})

    @property
    def id(self) -> str:
        return self.spec.id

    def missing(self) -> list[str]:
        """``"<module> (<install hint>)"`` for each required module that is not installed."""
        import importlib.util

        absent = []
        for module, hint in self.requires.items():
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a parent package is missing or broken
                found = False
            if not found:
                absent.append(f"{module} ({hint})")
        return absent

    def __repr__(self) -> str:
        return f"EnvPlugin({self.spec.id!r}, version={self.spec.version!r}, {self.execution.value})"


def splits_from(mapping: Mapping[str, list[int] | range]) -> dict[str, TaskSplit]:
    """Build the ``splits`` field of an :class:`EnvSpec` from ``{"test": range(0, 26)}``."""
    return {name: TaskSplit(name=name, ids=list(ids)) for name, ids in mapping.items()}
