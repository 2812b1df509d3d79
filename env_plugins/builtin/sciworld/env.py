"""SciWorld: ScienceWorld's text-based science experiments (AgentGym's ``sciworld`` env).

Upstream
--------
The simulator is the ``scienceworld`` package, **pinned to 1.2.3** (``pip install
'gymux[sciworld]'``; Apache-2.0 licence). Its wheel ships ``scienceworld.jar``, a Scala
simulator that runs in a JVM (Java >= 11; CI and this project use OpenJDK 17) and is
driven through py4j. This module talks to the jar's ``PythonInterface`` directly (the same
calls ``scienceworld.ScienceWorldEnv`` makes, without its per-step enumeration of every
valid action, which costs tens of milliseconds a step).

Tasks and ids
-------------
ScienceWorld has 30 task types, each with a fixed number of *variations* (objects,
substances, rooms) split by upstream into contiguous train / dev / test ranges
(:data:`TASK_TYPES` pins the counts of 1.2.3). Task ids enumerate every (task type,
variation) pair: task types sorted by name, then variations in order::

    id = sum(n_variations of the task types sorting before `name`) + variation

so ids ``0 .. 7206`` cover all 7207 pairs (:func:`task_of` / :func:`task_id_of` map both
ways). The ids depend only on scienceworld 1.2.3's task list and variation counts.

Like AgentGym, the splits leave out the seven long-horizon task types AgentGym excludes
(:data:`AGENTGYM_EXCLUDED`: ``grow-plant``, ``grow-fruit``, the three ``inclined-plane-*``
and the two ``mendelian-genetics-*`` types); their ids stay valid for explicit use. Over the
other 23 task types:

* ``test`` -- the first :data:`TEST_VARIATIONS_PER_TYPE` (10) upstream *test* variations of
  each type (fewer where a type has fewer): 201 tasks, close to AgentGym's ~200-item test set.
* ``train`` -- every upstream *train* variation of each type: 2312 tasks.

The dev variations are in no split.

Episodes
--------
``reset`` loads the task's variation in the instance's warm JVM with no simplifications
(as AgentGym's server does: no teleport, doors start closed), takes the free first move
``look around`` and returns the task description, a newline, and that observation (as
AgentGym's client shows it). Each ``step`` sends the action text to the simulator and
returns its observation unchanged. Text the simulator cannot parse is answered with ``No
known action matches that input.`` (``info["valid"] = False``), and the episode goes on.

Reward is AgentGym's: the simulator's task score, 0..100, after every step (not a delta).
ScienceWorld scores a *failed* task (e.g. focusing on the wrong object) as -100 and ends it;
here the reward is clamped to 0 (``reward_range = (0, 100)``), the raw score is kept in
``info["score"]``, and the episode ends (``done``) exactly when the simulator marks the task
completed or the score is negative (what ``ScienceWorldEnv.step`` does). Success = score 100.
``max_turns`` (200) covers the longest gold sequence of the test split (180 actions);
AgentGym evaluates with a budget of 30 turns, which the eval suite applies.

Actions are free text (ScienceWorld's parser is case-insensitive). The parser takes the
text after the last ``Action:``, collapses whitespace and drops a trailing full stop.
Admissible actions are not enumerated (the valid action/object combinations run into the
hundreds or thousands per state); ``example_actions`` holds always-valid actions.

Determinism
-----------
ScienceWorld lists a room's objects in the iteration order of Java hash sets keyed by
identity hash codes, which depend on everything the JVM allocated before: with default JVM
settings the same variation, loaded after other tasks, lists its objects in another order
(about one test task in ten). The simulator JVMs therefore run with
``-XX:+UnlockExperimentalVMOptions -XX:hashCode=2`` (:data:`JAVA_OPTIONS`: every identity
hash is the same constant, so those sets iterate in an order fixed by how the variation
builds its objects). Measured: the first observation of all 201 test tasks is identical in
a fresh JVM and in one that ran every other test task before (180/201 with default
settings). The price is slower hashing inside the simulator: about 18 ms instead of 11 ms
per step (gold replays, one JVM). HotSpot's ``hashCode`` flag exists in JDK 8 to 21+.

Instances and JVMs
------------------
One :class:`SciWorldEnv` instance owns one JVM (~100 MB at start, ~250 MB warm, ~1-3 s to
start), started on the first ``reset`` and reused for every later episode; ``close()`` kills
it by pid, even while a call into it is stuck (see :mod:`.jvm`). The
runtime's pool bounds and reuses instances, hence JVMs: ``max_instances=4`` (~1 GB of JVMs)
by default; raise it with ``RuntimeConfig.env_instances={"sciworld": n}`` for higher
concurrency. The first ``reset`` of an instance includes the JVM start, so
``RuntimeConfig.step_timeout_s`` must stay well above a few seconds (the default is 60 s); a
call that times out has its instance discarded and its JVM killed. A JVM that dies
mid-episode raises :class:`TransientEnvError` (the runtime reruns the episode on a fresh
instance); a Java exception raises :class:`EnvError`.

Oracle
------
:class:`SciWorldOracle` plays ScienceWorld's gold action sequence for the task: its k-th
answer (k = number of assistant messages after the opening ``OK``) is gold action k. Gold
sequences of the test split ship in ``data/sciworld_gold.json.gz`` (regenerate with
``python -c "from gymux.env_plugins.builtin.sciworld.env import write_gold_file;
write_gold_file()"``,
two to three minutes); for any other id the oracle computes the sequence in a private JVM that
it starts on first use and kills in ``__aexit__``. Replayed in the env, the gold sequences
reach score 100 on all 201 test tasks (measured with scienceworld 1.2.3 through the runtime,
two instances: 201/201). Gold lengths on the test split: min 4, median 19, upper quartile
39, max 180 actions; 64 of the 201 are longer than AgentGym's 30-turn budget (mostly the
boil/melt/freeze/change-state and measure-melting-point types). Outside the splits, gold
sequences of the first three test variations of each of the seven excluded types also reach
100 (21/21; 69 to 194 actions, all within ``max_turns``).

ScienceWorld's gold-path generator is not deterministic: asked twice for the same variation
it may explore the rooms in another order (same length class, equally valid). The shipped
file freezes one run, so the oracle is reproducible on the test split; regenerating the
file gives different but equally successful sequences.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.resources
import json
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import anyio
import anyio.to_thread

from gymux.env_plugins.builtin.sciworld.jvm import JavaProcess, require_java
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
    TransientEnvError,
    splits_from,
)
from gymux.errors import PolicyError
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import react

__all__ = [
    "AGENTGYM_EXCLUDED",
    "GOLD_FILE",
    "MAX_ACTION_CHARS",
    "SCIENCEWORLD_VERSION",
    "SCIWORLD_SPEC",
    "SIMPLIFICATIONS",
    "TASK_TYPES",
    "TEST_VARIATIONS_PER_TYPE",
    "SciWorldEnv",
    "SciWorldOracle",
    "TaskType",
    "generate_gold",
    "load_gold",
    "parse_sciworld_action",
    "plugin",
    "task_id_of",
    "task_of",
    "write_gold_file",
]

#: The upstream version the task ids, splits and gold data are pinned to.
SCIENCEWORLD_VERSION = "1.2.3"
#: ScienceWorld simplification string used for every task (AgentGym loads with none).
SIMPLIFICATIONS = ""
#: Test tasks per task type: the first this-many upstream test variations.
TEST_VARIATIONS_PER_TYPE = 10
#: Longest action text accepted by the parser.
MAX_ACTION_CHARS = 200
#: Name of the shipped gold-sequence file in ``gymux.env_plugins.data``.
GOLD_FILE = "sciworld_gold.json.gz"

#: JVM options for the simulator (see the module docstring: deterministic object order).
JAVA_OPTIONS: tuple[str, ...] = ("-XX:+UnlockExperimentalVMOptions", "-XX:hashCode=2")

_INSTALL_HINT = "pip install 'gymux[sciworld]'"
_UNKNOWN_ACTION = "No known action matches that input."


class TaskType(NamedTuple):
    """One ScienceWorld task type and its upstream variation split (contiguous ranges)."""

    name: str
    variations: int
    train: int
    dev: int
    test: int

    @property
    def train_variations(self) -> range:
        return range(0, self.train)

    @property
    def test_variations(self) -> range:
        return range(self.train + self.dev, self.variations)


#: The 30 task types of scienceworld 1.2.3, sorted by name: (name, variations, train, dev,
#: test). Read from the jar (``getTaskMaxVariations``, ``getVariationsTrain/Dev/Test``).
TASK_TYPES: tuple[TaskType, ...] = tuple(
    TaskType(*row)
    for row in (
        ("boil", 30, 14, 7, 9),
        ("change-the-state-of-matter-of", 30, 14, 7, 9),
        ("chemistry-mix", 32, 16, 8, 8),
        ("chemistry-mix-paint-secondary-color", 36, 18, 9, 9),
        ("chemistry-mix-paint-tertiary-color", 36, 18, 9, 9),
        ("find-animal", 300, 150, 75, 75),
        ("find-living-thing", 300, 150, 75, 75),
        ("find-non-living-thing", 300, 150, 75, 75),
        ("find-plant", 300, 150, 75, 75),
        ("freeze", 30, 14, 7, 9),
        ("grow-fruit", 126, 62, 31, 33),
        ("grow-plant", 126, 62, 31, 33),
        ("identify-life-stages-1", 14, 6, 3, 5),
        ("identify-life-stages-2", 10, 4, 2, 4),
        ("inclined-plane-determine-angle", 168, 84, 42, 42),
        ("inclined-plane-friction-named-surfaces", 1386, 692, 346, 348),
        ("inclined-plane-friction-unnamed-surfaces", 162, 80, 40, 42),
        ("lifespan-longest-lived", 125, 62, 31, 32),
        ("lifespan-longest-lived-then-shortest-lived", 125, 62, 31, 32),
        ("lifespan-shortest-lived", 125, 62, 31, 32),
        ("measure-melting-point-known-substance", 436, 218, 109, 109),
        ("measure-melting-point-unknown-substance", 300, 150, 75, 75),
        ("melt", 30, 14, 7, 9),
        ("mendelian-genetics-known-plant", 120, 60, 30, 30),
        ("mendelian-genetics-unknown-plant", 480, 240, 120, 120),
        ("power-component", 20, 10, 5, 5),
        ("power-component-renewable-vs-nonrenewable-energy", 20, 10, 5, 5),
        ("test-conductivity", 900, 450, 225, 225),
        ("test-conductivity-of-unknown-substances", 600, 300, 150, 150),
        ("use-thermometer", 540, 270, 135, 135),
    )
)

#: Task types AgentGym leaves out (its ids 5-1, 5-2, 9-1..9-3, 10-1, 10-2); not in any split.
AGENTGYM_EXCLUDED = frozenset(
    {
        "grow-plant",
        "grow-fruit",
        "inclined-plane-determine-angle",
        "inclined-plane-friction-named-surfaces",
        "inclined-plane-friction-unnamed-surfaces",
        "mendelian-genetics-known-plant",
        "mendelian-genetics-unknown-plant",
    }
)


# --------------------------------------------------------------------------- task ids


@functools.cache
def _offsets() -> dict[str, int]:
    offsets: dict[str, int] = {}
    total = 0
    for task_type in TASK_TYPES:
        offsets[task_type.name] = total
        total += task_type.variations
    return offsets


_TYPES_BY_NAME = {t.name: t for t in TASK_TYPES}
_TASK_COUNT = sum(t.variations for t in TASK_TYPES)


def task_id_of(name: str, variation: int) -> int:
    """The task id of variation ``variation`` of task type ``name``."""
    task_type = _TYPES_BY_NAME.get(name)
    if task_type is None:
        raise KeyError(f"unknown ScienceWorld task type {name!r}")
    if not 0 <= variation < task_type.variations:
        raise KeyError(f"{name!r} has variations 0..{task_type.variations - 1}, not {variation}")
    return _offsets()[name] + variation


def task_of(task_id: int) -> tuple[str, int]:
    """``(task type name, variation)`` of a task id; :class:`EnvError` if out of range."""
    if not 0 <= task_id < _TASK_COUNT:
        raise EnvError(f"unknown sciworld task id {task_id}: valid ids are 0..{_TASK_COUNT - 1}")
    for task_type in TASK_TYPES:
        offset = _offsets()[task_type.name]
        if task_id < offset + task_type.variations:
            return task_type.name, task_id - offset
    raise AssertionError("unreachable")  # pragma: no cover


def _split_ids(which: str) -> list[int]:
    ids: list[int] = []
    for task_type in TASK_TYPES:
        if task_type.name in AGENTGYM_EXCLUDED:
            continue
        if which == "test":
            variations: Sequence[int] = task_type.test_variations[:TEST_VARIATIONS_PER_TYPE]
        else:
            variations = task_type.train_variations
        ids += [_offsets()[task_type.name] + v for v in variations]
    return ids


# --------------------------------------------------------------------------- the simulator


def _scienceworld() -> Any:
    """The ``scienceworld`` module, checked for the pinned version."""
    try:
        import scienceworld  # type: ignore[import-untyped]
    except ImportError as exc:
        raise EnvError(f"the sciworld env needs the scienceworld package: {_INSTALL_HINT}") from exc
    version = getattr(scienceworld, "__version__", "?")
    if version != SCIENCEWORLD_VERSION:
        raise EnvError(
            f"sciworld task ids are pinned to scienceworld=={SCIENCEWORLD_VERSION}, found "
            f"{version}: {_INSTALL_HINT}"
        )
    return scienceworld


class _Simulator:
    """One JVM running ScienceWorld, and the jar's ``PythonInterface`` in it."""

    def __init__(self, java: JavaProcess, server: Any) -> None:
        self.java = java
        self.server = server

    @classmethod
    def start(cls) -> _Simulator:
        _scienceworld()
        from scienceworld.constants import BASEPATH, JAR_PATH  # type: ignore[import-untyped]

        java = JavaProcess.start(JAR_PATH, cwd=BASEPATH, java_options=JAVA_OPTIONS)
        try:
            server = java.jvm.scienceworld.runtime.pythonapi.PythonInterface()
        except BaseException:
            java.close()
            raise
        return cls(java, server)

    def load(self, name: str, variation: int, *, gold: bool = False) -> None:
        self.server.load(name, variation, SIMPLIFICATIONS, gold)

    def gold_actions(self, name: str, variation: int) -> list[str]:
        self.load(name, variation, gold=True)
        return [str(a) for a in self.server.getGoldActionSequence()]

    def close(self) -> None:
        self.java.close()


# --------------------------------------------------------------------------- the environment


class SciWorldEnv:
    """One ScienceWorld game at a time in one warm JVM; blocking (:class:`SyncEnv`).

    The JVM starts on the first :meth:`reset` (so an abandoned factory call leaks nothing)
    and is killed by :meth:`close`.
    """

    def __init__(self) -> None:
        _scienceworld()
        require_java()
        self._lock = threading.Lock()
        self._sim: _Simulator | None = None
        self._closed = False
        self._broken: str | None = None
        self._task: tuple[str, int] | None = None
        self._done = False

    # -- lifecycle

    @property
    def pid(self) -> int | None:
        """Pid of this instance's JVM, once started."""
        sim = self._sim
        return None if sim is None else sim.java.pid

    def _simulator(self) -> _Simulator:
        with self._lock:
            self._check_usable()
            if self._sim is not None:
                return self._sim
        sim = _Simulator.start()  # slow: outside the lock, so close() never waits for it
        with self._lock:
            if not self._closed:
                self._sim = sim
                return sim
        sim.close()
        raise EnvError("sciworld env was closed while its JVM was starting")

    def _check_usable(self) -> None:
        if self._closed:
            raise EnvError("sciworld env is closed; create a new instance")
        if self._broken is not None:
            raise EnvError(f"sciworld env is unusable: {self._broken}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sim, self._sim = self._sim, None
        self._task = None
        if sim is not None:
            sim.close()

    @contextlib.contextmanager
    def _calling(self, sim: _Simulator) -> Iterator[None]:
        """Translate failures of calls into the JVM into EnvError / TransientEnvError."""
        try:
            yield
        except Exception as exc:
            self._task = None
            if self._closed:
                raise EnvError("sciworld env was closed during a call") from exc
            exit_code = sim.java.exit_code()
            if exit_code is not None:
                self._broken = f"its JVM (pid {sim.java.pid}) died with exit code {exit_code}"
                raise TransientEnvError(f"ScienceWorld {self._broken}") from exc
            java_message = getattr(exc, "java_exception", None)
            detail = str(java_message) if java_message is not None else repr(exc)
            raise EnvError(f"ScienceWorld failed: {detail}") from exc

    # -- the episode

    def reset(self, task: Task) -> Observation:
        name, variation = task_of(task.id)
        sim = self._simulator()
        self._task = None
        with self._calling(sim):
            sim.load(name, variation)
            description = str(sim.server.getTaskDescription())
            look = str(sim.server.step("look around"))
        self._task = (name, variation)
        self._done = False
        return Observation(text=f"{description}\n{look}")

    def step(self, action: str) -> StepResult:
        with self._lock:
            self._check_usable()
            sim = self._sim
        if sim is None or self._task is None:
            raise EnvError("sciworld env: step() called before reset()")
        if self._done:
            raise EnvError("sciworld env: step() called after the episode ended; reset() first")
        name, variation = self._task
        with self._calling(sim):
            text = str(sim.server.step(action))
            score = round(100 * float(sim.server.getScore()))
            completed = bool(sim.server.getCompleted())
            moves = int(sim.server.getNumMoves())
        done = completed or score < 0
        self._done = done
        return StepResult(
            observation=Observation(text=text),
            reward=float(min(max(score, 0), 100)),
            done=done,
            info={
                "score": score,
                "moves": moves,
                "valid": text.strip() != _UNKNOWN_ACTION,
                "task_name": name,
                "variation": variation,
            },
        )


# --------------------------------------------------------------------------- action parsing

_TRAILING_STOP_RE = re.compile(r"[.!]+$")


def parse_sciworld_action(text: str) -> str:
    """The action after the last ``Action:``, whitespace collapsed, trailing ``.`` dropped."""
    action = " ".join(parse_react_action(text).split())
    action = _TRAILING_STOP_RE.sub("", action).strip()
    if not action:
        raise ActionParseError('"Action:" is empty. Write one action, e.g. "look around".')
    if len(action) > MAX_ACTION_CHARS:
        raise ActionParseError(
            f"the action is {len(action)} characters long; write one short action "
            f'(at most {MAX_ACTION_CHARS} characters), e.g. "open door to kitchen".'
        )
    return action


# --------------------------------------------------------------------------- the spec

_ACTIONS = (
    ("open OBJ / close OBJ", "open or close a container or a door"),
    ("activate OBJ / deactivate OBJ", "turn a device on or off"),
    ("connect OBJ to OBJ", "connect two electrical components"),
    ("disconnect OBJ", "disconnect an electrical component"),
    ("use OBJ [on OBJ]", "use a device or an item, optionally on something"),
    ("look around", "describe the room you are in"),
    ("look at OBJ", "describe an object in detail"),
    ("look in OBJ", "describe what a container holds"),
    ("read OBJ", "read a book or a note"),
    ("move OBJ to OBJ", "put an object into a container or onto a surface"),
    ("pick up OBJ", "put an object into your inventory"),
    ("put down OBJ", "drop an object from your inventory"),
    ("pour OBJ into OBJ", "pour a liquid into a container"),
    ("dunk OBJ into OBJ", "dunk a container into a liquid"),
    ("mix OBJ", "chemically mix what a container holds"),
    ("go to LOC", "walk to a neighbouring location (its door must be open)"),
    ("eat OBJ", "eat a food"),
    ("flush OBJ", "flush a toilet"),
    ("focus on OBJ", "declare the object the task is about (focusing on a wrong one fails)"),
    ("wait", "do nothing for 10 time steps"),
    ("wait1", "do nothing for 1 time step"),
    ("task", "repeat the task description"),
    ("inventory", "list what you carry"),
)

_INSTRUCTION = (
    "You are an agent in ScienceWorld, a text simulation of a house with a kitchen, a "
    "workshop, a greenhouse and other rooms, where you carry out elementary science "
    "experiments. Each turn you receive an observation and answer with exactly one action "
    "that brings you closer to completing the task. The actions you can take (OBJ and LOC "
    "are objects and locations named in the observations):\n"
    + "\n".join(f"- {template}: {meaning}" for template, meaning in _ACTIONS)
    + "\n\nIf the simulator asks which of several matching actions you mean, answer with the "
    "number of the one you intend.\n\n"
    "Answer in this format every turn:\n\n"
    "Thought:\nyour reasoning about what to do next\n\n"
    "Action:\nyour next action\n\n"
    "For example:\n\n"
    "Thought:\nI need to find a thermometer first; the kitchen may have one.\n\n"
    "Action:\nopen door to kitchen"
)

SCIWORLD_SPEC = EnvSpec(
    id="sciworld",
    version="1",
    instruction=_INSTRUCTION,
    action_format="Action: <one ScienceWorld action, e.g. open door to kitchen>",
    splits=splits_from({"test": _split_ids("test"), "train": _split_ids("train")}),
    max_turns=200,
    reward_range=(0.0, 100.0),
    success=SuccessRule(threshold=100.0),
    example_actions=["look around", "inventory", "task", "wait1"],
    description=(
        "ScienceWorld (scienceworld 1.2.3): elementary science experiments in a text "
        "simulator; reward = task score 0..100, success = 100."
    ),
)


# --------------------------------------------------------------------------- gold sequences


@functools.cache
def load_gold() -> dict[int, tuple[str, ...]]:
    """The shipped gold action sequences (task id -> actions); empty if the file is absent."""
    resource = importlib.resources.files(__package__ or "") / "data" / GOLD_FILE
    try:
        raw = resource.read_bytes()
    except FileNotFoundError:
        return {}
    data = json.loads(gzip.decompress(raw))
    gold: dict[int, tuple[str, ...]] = {}
    for key, entry in data["tasks"].items():
        task_id = int(key)
        if task_of(task_id) != (entry["task"], entry["variation"]):
            raise EnvError(f"{GOLD_FILE}: task {task_id} does not match its task id")
        gold[task_id] = tuple(entry["actions"])
    return gold


def generate_gold(task_ids: Iterable[int]) -> dict[int, list[str]]:
    """Gold action sequences of ``task_ids``, computed by ScienceWorld in a private JVM."""
    sim = _Simulator.start()
    try:
        return {task_id: sim.gold_actions(*task_of(task_id)) for task_id in task_ids}
    finally:
        sim.close()


def write_gold_file(path: str | Path | None = None, task_ids: Iterable[int] | None = None) -> Path:
    """Write the gold sequences of ``task_ids`` (default: the test split) as gzipped JSON.

    ``path`` defaults to ``data/sciworld_gold.json.gz`` next to this module.
    The output is byte-for-byte reproducible (sorted keys, gzip mtime 0).
    """
    ids = list(SCIWORLD_SPEC.split("test").ids if task_ids is None else task_ids)
    gold = generate_gold(ids)
    tasks = {}
    for task_id in ids:
        name, variation = task_of(task_id)
        tasks[str(task_id)] = {"task": name, "variation": variation, "actions": gold[task_id]}
    payload = {
        "scienceworld": SCIENCEWORLD_VERSION,
        "simplifications": SIMPLIFICATIONS,
        "tasks": tasks,
    }
    target = Path(path) if path is not None else Path(__file__).parent / "data" / GOLD_FILE
    text = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    target.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    load_gold.cache_clear()
    return target


# --------------------------------------------------------------------------- the oracle


class SciWorldOracle:
    """Plays the gold action sequence of the task: gold action k at assistant turn k.

    Keeps no per-episode state: the position in the sequence is the number of assistant
    messages after the opening ``OK``. Gold sequences come from the shipped file; others are
    computed in a private JVM (started on first need, killed on exit) and cached per task id.
    After the sequence ends it answers ``look around``.
    """

    name = "oracle"
    version = "sciworld-gold-1"

    def __init__(self) -> None:
        self._cache: dict[int, tuple[str, ...]] = {}
        self._sim: _Simulator | None = None
        self._sim_lock = threading.Lock()
        self._closed = False

    async def __aenter__(self) -> Self:
        self._closed = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Kill the private JVM, if one was started (also one still starting)."""
        self._closed = True
        sim, self._sim = self._sim, None
        if sim is not None:
            await anyio.to_thread.run_sync(sim.close)

    @property
    def jvm_pid(self) -> int | None:
        sim = self._sim
        return None if sim is None else sim.java.pid

    def _compute(self, task_id: int) -> tuple[str, ...]:
        name, variation = task_of(task_id)
        with self._sim_lock:  # one call into the private JVM at a time
            sim = self._sim
            if sim is None:
                sim = _Simulator.start()
                self._sim = sim
                if self._closed:  # closed while the JVM was starting
                    self._sim = None
                    sim.close()
                    raise EnvError("the oracle was closed")
            actions = tuple(sim.gold_actions(name, variation))
        self._cache[task_id] = actions
        return actions

    async def gold(self, task_id: int) -> tuple[str, ...]:
        """The gold action sequence of ``task_id``."""
        shipped = load_gold().get(task_id)
        if shipped is not None:
            return shipped
        cached = self._cache.get(task_id)
        if cached is not None:
            return cached
        try:
            return await anyio.to_thread.run_sync(self._compute, task_id)
        except EnvError as exc:
            raise PolicyError(f"no gold sequence for sciworld task {task_id}: {exc}") from exc
        except Exception as exc:
            raise PolicyError(
                f"ScienceWorld failed to give the gold sequence of task {task_id}: {exc!r}"
            ) from exc

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        gold = await self.gold(request.task_id)
        step = max(0, sum(1 for m in request.messages if m.role == "assistant") - 1)
        if step < len(gold):
            thought = f"Step {step + 1} of {len(gold)} of the reference solution."
            action = gold[step]
        else:
            thought = "The reference solution is finished; I look around."
            action = "look around"
        return PolicyResponse(text=react(thought, action))


# --------------------------------------------------------------------------- the plugin

plugin = EnvPlugin(
    SCIWORLD_SPEC,
    SciWorldEnv,
    execution="thread",
    parse_action=parse_sciworld_action,
    oracle=SciWorldOracle,
    max_instances=4,
    requires={"scienceworld": _INSTALL_HINT},
)
