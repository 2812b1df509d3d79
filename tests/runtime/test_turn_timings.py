"""Per-turn timings: ``queue_s`` (waiting for an env instance or a paused policy),
``policy_s`` and ``env_s`` add up to the episode's wall time (within 1%), and a turn whose
generation was aborted by a weight update says so (``Turn.abort``)."""

from __future__ import annotations

import anyio
import pytest

from gymux.config import Workload
from gymux.env_plugins import Observation, StepResult, Task
from gymux.env_plugins.registry import Registry
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy, react
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason, Trajectory

from doubles import envs as E

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

#: Simulated costs (the work an env and a model do), not waits for readiness.
RESET_S, STEP_S, POLICY_S = 0.002, 0.003, 0.004


class SlowProbe(E.AsyncProbe):
    async def reset(self, task: Task) -> Observation:
        await anyio.sleep(RESET_S)
        return await super().reset(task)

    async def step(self, action: str) -> StepResult:
        await anyio.sleep(STEP_S)
        return await super().step(action)


class SlowPolicy(SimplePolicy):
    """Says "go" after ``POLICY_S``; ``hold()`` makes calls wait for ``release()``."""

    name = "slow"

    def __init__(self) -> None:
        self.released = anyio.Event()
        self.released.set()
        self.waiting = 0

    def hold(self) -> None:
        self.released = anyio.Event()

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        self.waiting += 1
        try:
            await self.released.wait()
        finally:
            self.waiting -= 1
        await anyio.sleep(POLICY_S)
        return PolicyResponse(text=react("go", "go"))


def registry(plugin) -> Registry:
    return E.registry_of(plugin)


def tiled(t: Trajectory) -> float:
    return sum(turn.queue_s + turn.policy_s + turn.env_s for turn in t.turns)


def assert_tiles(t: Trajectory) -> None:
    assert t.finish_reason is FinishReason.DONE
    total = tiled(t)
    assert abs(total - t.wall_s) <= 0.01 * t.wall_s, (total, t.wall_s)


async def test_timings_sum_to_the_wall_time_with_instance_waits() -> None:
    # Four episodes share one env instance: all but the first wait for it (queue_s).
    plugin = E.plugin(SlowProbe, max_instances=1)
    config = E.runtime_config((10.0, 10.0, 60.0, 3.0), max_concurrent_episodes=4)
    async with Runtime(config, registry=registry(plugin)) as rt:
        result = await rt.run(Workload(env="probe", tasks=[0, 1, 2, 3]), policy=SlowPolicy())
    assert len(result.trajectories) == 4
    for t in result.trajectories:
        assert_tiles(t)
        assert len(t.turns) == 3
        # reset + three steps of env time, three policy calls
        assert sum(turn.env_s for turn in t.turns) >= RESET_S + 3 * STEP_S
        assert all(turn.policy_s >= POLICY_S for turn in t.turns)
        assert all(turn.abort is None for turn in t.turns)
    # The run's summary sums the same timings (episode-seconds per kind).
    for key in ("queue_s", "policy_s", "env_s"):
        want = sum(t.timings[key] for t in result.trajectories)
        assert result.summary.time_s[key] == pytest.approx(want)
    assert result.summary.time_s["queue_s"] > 0
    # Whoever got the instance last waited for the other three episodes.
    waits = sorted(t.turns[0].queue_s for t in result.trajectories)
    assert waits[-1] >= 3 * (RESET_S + 3 * STEP_S + 3 * POLICY_S)
    assert all(turn.queue_s < waits[-1] for t in result.trajectories for turn in t.turns[1:])


async def test_timings_sum_with_an_aborting_weight_update() -> None:
    policy = SlowPolicy()
    policy.hold()
    plugin = E.plugin(SlowProbe, max_instances=4)
    config = E.runtime_config((10.0, 10.0, 60.0, 3.0), max_concurrent_episodes=4)
    async with Runtime(config, registry=registry(plugin)) as rt:
        handle = await rt.submit(Workload(env="probe", tasks=[0, 1]), policy=policy)
        with anyio.fail_after(20):
            while policy.waiting < 2:
                await anyio.sleep(0.001)  # readiness poll: both first calls in flight
        policy.released.set()
        policy.hold()  # the redone calls wait again, until after the update
        await rt.update_policy(policy, version="v1", mode="abort")
        policy.released.set()
        result = await handle.wait()
    for t in result.trajectories:
        assert_tiles(t)
        first = t.turns[0]
        assert first.abort == "weight_update" and first.weight_version == "v1"
        # the aborted call's time counts as policy time of the turn
        assert first.policy_s >= POLICY_S
