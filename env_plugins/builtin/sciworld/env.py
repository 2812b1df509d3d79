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
(:data:`TASK_TYPES` pins the counts of 1.2.3). Task ids are AgentGym's: its sciworld server
enumerates ``ScienceWorldEnv.tasks`` in ScienceWorld's order (task ids ``1-1`` boil, ``1-2``
melt, ... ``8-2``), skips the seven long-horizon types it excludes
(:data:`AGENTGYM_EXCLUDED`: ``grow-plant``, ``grow-fruit``, the three ``inclined-plane-*``
and the two ``mendelian-genetics-*`` types) and lists every variation of each type::

    id = sum(n_variations of the types before `name` in that order) + variation

so task id ``n`` in ``0 .. 4638`` is AgentGym's ``data_idx`` ``n`` (AgentEval's
``sciworld_n``). The excluded types follow, in the same order, as ids ``4639 .. 7206``
(gymux's own; :data:`ID_ORDER`, :func:`task_of` / :func:`task_id_of` map both ways). The
ids depend only on ScienceWorld's task list and variation counts, which are the same in
scienceworld 1.1.3 and 1.2.3.

The splits leave out the excluded types, like AgentGym; over the other 23 task types:

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
it starts on first use and kills in ``aclose()``. Replayed in the env, the gold sequences
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
import re
import threading
from collections.abc import Iterator

from gymux.env_plugins.builtin.sciworld.jvm import require_java
from gymux.env_plugins.builtin.sciworld.oracle import (
    SciWorldOracle,
    generate_gold,
    load_gold,
    write_gold_file,
)
from gymux.env_plugins.builtin.sciworld.simulator import Simulator, scienceworld_module
from gymux.env_plugins.builtin.sciworld.tasks import (
    AGENTGYM_EXCLUDED,
    AGENTGYM_ITEMS,
    GOLD_FILE,
    ID_ORDER,
    MAX_ACTION_CHARS,
    SCIENCEWORLD_VERSION,
    SIMPLIFICATIONS,
    TASK_TYPES,
    TEST_VARIATIONS_PER_TYPE,
    TaskType,
    task_id_of,
    task_of,
)
from gymux.env_plugins.parsing import parse_react_action
from gymux.env_plugins.protocol import (
    Observation,
    StepResult,
    Task,
)
from gymux.errors import ActionParseError, EnvError, TransientEnvError

__all__ = [
    "AGENTGYM_EXCLUDED",
    "AGENTGYM_ITEMS",
    "GOLD_FILE",
    "ID_ORDER",
    "MAX_ACTION_CHARS",
    "SCIENCEWORLD_VERSION",
    "SIMPLIFICATIONS",
    "TASK_TYPES",
    "TEST_VARIATIONS_PER_TYPE",
    "SciWorldEnv",
    "SciWorldOracle",
    "TaskType",
    "generate_gold",
    "load_gold",
    "parse_sciworld_action",
    "task_id_of",
    "task_of",
    "write_gold_file",
]

_UNKNOWN_ACTION = "No known action matches that input."


# --------------------------------------------------------------------------- the environment


class SciWorldEnv:
    """One ScienceWorld game at a time in one warm JVM; blocking (:class:`SyncEnv`).

    The JVM starts on the first :meth:`reset` (so an abandoned factory call leaks nothing)
    and is killed by :meth:`close`.
    """

    def __init__(self) -> None:
        scienceworld_module()
        require_java()
        self._lock = threading.Lock()
        self._sim: Simulator | None = None
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

    def _simulator(self) -> Simulator:
        with self._lock:
            self._check_usable()
            if self._sim is not None:
                return self._sim
        sim = Simulator.start()  # slow: outside the lock, so close() never waits for it
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
    def _calling(self, sim: Simulator) -> Iterator[None]:
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

ACTION_TEMPLATES = (
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


# --------------------------------------------------------------------------- the plugin
