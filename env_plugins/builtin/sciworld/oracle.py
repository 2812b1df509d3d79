"""The ScienceWorld oracle and its gold action sequences (shipped for the test split)."""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
import threading
from collections.abc import Iterable
from pathlib import Path

import anyio
import anyio.to_thread

from gymux.env_plugins.builtin.sciworld.simulator import Simulator
from gymux.env_plugins.builtin.sciworld.tasks import (
    GOLD_FILE,
    SCIENCEWORLD_VERSION,
    SIMPLIFICATIONS,
    split_ids,
    task_of,
)
from gymux.env_plugins.protocol import EnvError, assistant_turn
from gymux.errors import PolicyError
from gymux.messages import PolicyRequest
from gymux.react import format_react

__all__ = ["SciWorldOracle", "generate_gold", "load_gold", "write_gold_file"]

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
    sim = Simulator.start()
    try:
        return {task_id: sim.gold_actions(*task_of(task_id)) for task_id in task_ids}
    finally:
        sim.close()


def write_gold_file(path: str | Path | None = None, task_ids: Iterable[int] | None = None) -> Path:
    """Write the gold sequences of ``task_ids`` (default: the test split) as gzipped JSON.

    ``path`` defaults to ``data/sciworld_gold.json.gz`` next to this module.
    The output is byte-for-byte reproducible (sorted keys, gzip mtime 0).
    """
    ids = list(split_ids("test") if task_ids is None else task_ids)
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
    computed in a private JVM (started on first need, killed by :meth:`aclose`) and cached
    per task id.
    After the sequence ends it answers ``look around``.
    """

    version = "sciworld-gold-1"

    def __init__(self) -> None:
        self._cache: dict[int, tuple[str, ...]] = {}
        self._sim: Simulator | None = None
        self._sim_lock = threading.Lock()
        #: Bumped by :meth:`aclose`: a JVM started for an older generation is killed at once.
        self._generation = 0

    async def aclose(self) -> None:
        """Kill the private JVM, if one was started (also one still starting)."""
        self._generation += 1
        sim, self._sim = self._sim, None
        if sim is not None:
            await anyio.to_thread.run_sync(sim.close)

    @property
    def jvm_pid(self) -> int | None:
        sim = self._sim
        return None if sim is None else sim.java.pid

    def _compute(self, task_id: int, generation: int) -> tuple[str, ...]:
        name, variation = task_of(task_id)
        with self._sim_lock:  # one call into the private JVM at a time
            sim = self._sim
            if sim is None:
                sim = Simulator.start()
                self._sim = sim
                if self._generation != generation:  # closed while the JVM was starting
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
            return await anyio.to_thread.run_sync(self._compute, task_id, self._generation)
        except EnvError as exc:
            raise PolicyError(f"no gold sequence for sciworld task {task_id}: {exc}") from exc
        except Exception as exc:
            raise PolicyError(
                f"ScienceWorld failed to give the gold sequence of task {task_id}: {exc!r}"
            ) from exc

    async def solve(self, request: PolicyRequest) -> str:
        gold = await self.gold(request.task_id)
        step = assistant_turn(request)
        if step < len(gold):
            thought = f"Step {step + 1} of {len(gold)} of the reference solution."
            action = gold[step]
        else:
            thought = "The reference solution is finished; I look around."
            action = "look around"
        return format_react(thought, action)
