"""Misbehaving environments for runtime tests (and a helper resolving env entry points).

Behaviour is chosen by task id, so one workload can mix healthy and failing episodes:

====  ============================================================
id    behaviour
====  ============================================================
0-9   healthy: "go" three times -> reward 1, done
10    step hangs (never returns)
11    step raises RuntimeError
12    reset raises TransientEnvError on its first 2 calls per instance set, then healthy
13    reset always raises TransientEnvError
14    reset returns a wrong type
15    step returns a wrong type
16    worker process exits abruptly in step (process mode only; else RuntimeError)
17    worker process segfaults in step (process mode only; else RuntimeError)
18    prints junk to stdout in reset and step, otherwise healthy
19    reset hangs
====  ============================================================
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from gymux.config import RuntimeConfig
from gymux.env_plugins import EnvPlugin, EnvSpec, Observation, StepResult, Task, splits_from
from gymux.env_plugins.registry import Registry
from gymux.errors import TransientEnvError
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy, react
from gymux.react import format_react

HEALTHY = list(range(10))
HANG_STEP, STEP_RAISES, FLAKY_RESET, ALWAYS_TRANSIENT = 10, 11, 12, 13
BAD_RESET_TYPE, BAD_STEP_TYPE, EXIT_IN_STEP, SEGFAULT_IN_STEP = 14, 15, 16, 17
NOISY, HANG_RESET = 18, 19

SPEC = EnvSpec(
    id="probe",
    version="1",
    instruction="Say go three times.",
    action_format="Action: go",
    splits=splits_from({"test": range(0, 20)}),
    max_turns=6,
    example_actions=["go"],
)


class Stats:
    """Process-wide counters of in-process instances (thread and async modes)."""

    lock = threading.Lock()
    live = 0
    max_live = 0
    created = 0
    closed = 0
    resets: Counter[int] = Counter()

    @classmethod
    def reset_all(cls) -> None:
        with cls.lock:
            cls.live = cls.max_live = cls.created = cls.closed = 0
            cls.resets = Counter()


class _Core:
    """The shared state machine, with blocking behaviour."""

    def __init__(self, *, in_process_worker: bool = False) -> None:
        self.task = -1
        self.steps = 0
        self.in_worker = in_process_worker
        with Stats.lock:
            Stats.live += 1
            Stats.created += 1
            Stats.max_live = max(Stats.max_live, Stats.live)

    def reset(self, task: Task) -> Observation:
        with Stats.lock:
            Stats.resets[task.id] += 1
            count = Stats.resets[task.id]
        if task.id == FLAKY_RESET and count <= 2:
            raise TransientEnvError(f"backend busy (try {count})")
        if task.id == ALWAYS_TRANSIENT:
            raise TransientEnvError("backend down")
        if task.id == BAD_RESET_TYPE:
            return "not an observation"  # type: ignore[return-value]
        if task.id == NOISY:
            sys.stdout.write("junk on stdout\n")
            sys.stdout.flush()
        self.task = task.id
        self.steps = 0
        return Observation(
            text=f"task {task.id} pid {os.getpid()}: say go", admissible_actions=["go"]
        )

    def step(self, action: str) -> StepResult:
        if self.task == STEP_RAISES:
            raise RuntimeError("env exploded")
        if self.task == BAD_STEP_TYPE:
            return {"reward": 1}  # type: ignore[return-value]
        if self.task == EXIT_IN_STEP:
            if self.in_worker:
                os._exit(3)
            raise RuntimeError("would exit")
        if self.task == SEGFAULT_IN_STEP:
            if self.in_worker:
                os.kill(os.getpid(), signal.SIGSEGV)
            raise RuntimeError("would segfault")
        if self.task == NOISY:
            print("more junk")
        self.steps += 1 if action == "go" else 0
        done = self.steps >= 3
        return StepResult(
            observation=Observation(text=f"said go {self.steps} times"),
            reward=1.0 if done else 0.0,
            done=done,
        )

    def close(self) -> None:
        with Stats.lock:
            Stats.live -= 1
            Stats.closed += 1


class SyncProbe:
    """Blocking flavour (thread execution)."""

    def __init__(self) -> None:
        self._core = _Core()

    def reset(self, task: Task) -> Observation:
        if task.id == HANG_RESET:
            time.sleep(30)
        return self._core.reset(task)

    def step(self, action: str) -> StepResult:
        if self._core.task == HANG_STEP:
            time.sleep(30)
        return self._core.step(action)

    def close(self) -> None:
        self._core.close()


class ProcessProbe(SyncProbe):
    """Blocking flavour for process execution (may crash its worker)."""

    def __init__(self) -> None:
        self._core = _Core(in_process_worker=True)


class AsyncProbe:
    """Async flavour."""

    def __init__(self) -> None:
        self._core = _Core()

    async def reset(self, task: Task) -> Observation:
        if task.id == HANG_RESET:
            await anyio.sleep_forever()
        return self._core.reset(task)

    async def step(self, action: str) -> StepResult:
        if self._core.task == HANG_STEP:
            await anyio.sleep_forever()
        return self._core.step(action)

    async def close(self) -> None:
        self._core.close()


class CloseRaises(AsyncProbe):
    async def close(self) -> None:
        await super().close()
        raise RuntimeError("close failed")


class NoStep:
    """Violates the protocol: no step()."""

    async def reset(self, task: Task) -> Observation:
        return Observation(text="x")

    async def close(self) -> None:
        return None


class SaysGo(SimplePolicy):
    """An oracle written as a policy (the pre-``Oracle`` plugin API, still accepted)."""

    name = "says-go"
    version = "1"

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        return PolicyResponse(text=react("go", "go"))


class GoOracle:
    """An :class:`~gymux.env_plugins.Oracle` answering "go"; counts its ``aclose`` calls."""

    version = "go-1"

    def __init__(self) -> None:
        self.closed = 0

    async def solve(self, request: PolicyRequest) -> str:
        return format_react("go", "go")

    async def aclose(self) -> None:
        self.closed += 1


async def play_concurrently(
    play: Callable[[int], Awaitable[list[str]]], task_ids: list[int]
) -> dict[int, list[str]]:
    """``play(task_id)`` for every task at once (one task group); each task's result."""
    results: dict[int, list[str]] = {}

    async def run(task_id: int) -> None:
        results[task_id] = await play(task_id)

    async with anyio.create_task_group() as tg:
        for task_id in task_ids:
            tg.start_soon(run, task_id)
    return results


def runtime_config(timeouts: tuple[float, float, float, float], **kw: Any) -> RuntimeConfig:
    """A RuntimeConfig for tests: the step, policy, episode and close timeouts, quick retries
    (10 ms backoff, 50 ms at most); ``kw`` overrides any field."""
    step, policy, episode, close = timeouts
    fields: dict[str, Any] = dict(
        step_timeout_s=step,
        policy_timeout_s=policy,
        episode_timeout_s=episode,
        close_timeout_s=close,
        retry_backoff_s=0.01,
        retry_backoff_max_s=0.05,
    )
    fields.update(kw)
    return RuntimeConfig(**fields)


def registry_of(*plugins: EnvPlugin) -> Registry:
    """A registry holding only ``plugins`` (no installed entry points)."""
    reg = Registry(entry_points_group=None)
    for p in plugins:
        reg.register(p)
    return reg


def rl_config(**kw: Any) -> RuntimeConfig:
    """The RL tests' runtime config: 10 s steps and policy calls, 60 s episodes."""
    return runtime_config((10.0, 10.0, 60.0, 3.0), **kw)


def plugin(
    factory: object, execution: str = "async", *, env_id: str = "probe", max_instances: int = 8
) -> EnvPlugin:
    spec = SPEC if env_id == "probe" else EnvSpec(**{**_spec_fields(), "id": env_id})
    return EnvPlugin(
        spec,
        factory,
        execution=execution,
        max_instances=max_instances,  # type: ignore[arg-type]
        oracle=SaysGo,
    )


def _spec_fields() -> dict[str, object]:
    import msgspec

    return msgspec.structs.asdict(SPEC)


def load_entry_point(name: str) -> object:
    """The object the ``gymux.envs`` entry point ``name`` resolves to (exactly one such)."""
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="gymux.envs") if ep.name == name]
    return ep.load()
