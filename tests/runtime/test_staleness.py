"""The staleness bound (``Workload.max_staleness``): an episode with a turn older than S
weight versions when it finishes is discarded or restarted, and counted; a randomised
property test checks that nothing handed to the sinks is older than S."""

from __future__ import annotations

import random
from collections.abc import Sequence

import anyio
import pytest

from gymux.config import Workload
from gymux.env_plugins.registry import Registry
from gymux.events import Event, TurnFinished
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy, react
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason, Trajectory

from doubles import envs as E

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def registry(plugin) -> Registry:
    return E.registry_of(plugin)


config = E.rl_config


async def until(predicate) -> None:
    """Wait (yielding to the loop) until ``predicate()``; a readiness poll, not a delay."""
    with anyio.fail_after(20):
        while not predicate():
            await anyio.sleep(0.001)


class HeldPolicy(SimplePolicy):
    """Says "go"; the first call of each episode waits for :meth:`release`."""

    name = "held"

    def __init__(self) -> None:
        self.released = anyio.Event()
        self.waiting = 0

    def release(self) -> None:
        self.released.set()

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        if request.turn == 0 and not self.released.is_set():
            self.waiting += 1
            try:
                await self.released.wait()
            finally:
                self.waiting -= 1
        return PolicyResponse(text=react("go", "go"))


async def stale_run(stale: str, max_staleness: int = 0):
    """Two episodes whose first turn spans one update (mode ``continue``: the turn keeps
    the version it started under)."""
    policy = HeldPolicy()
    plugin = E.plugin(E.AsyncProbe, max_instances=4)
    async with Runtime(config(), registry=registry(plugin)) as rt:
        handle = await rt.submit(
            Workload(env="probe", tasks=[0, 1], max_staleness=max_staleness, stale=stale),
            policy=policy,
        )
        await until(lambda: policy.waiting == 2)
        await rt.update_policy(policy, version="v1", mode="continue")
        policy.release()
        return await handle.wait()


async def test_stale_episodes_are_discarded_and_counted() -> None:
    result = await stale_run("discard")
    assert result.trajectories == []
    assert result.rollout.stale_discarded == 2
    assert result.rollout.stale_restarted == 0


async def test_stale_episodes_are_restarted_under_the_new_version() -> None:
    result = await stale_run("restart")
    assert result.rollout.stale_restarted == 2 and result.rollout.stale_discarded == 0
    assert len(result.trajectories) == 2
    for t in result.trajectories:
        assert t.finish_reason is FinishReason.DONE
        assert t.policy_step == 1
        assert {turn.weight_version for turn in t.turns} == {"v1"}


async def test_within_the_bound_nothing_is_dropped() -> None:
    result = await stale_run("discard", max_staleness=1)
    assert len(result.trajectories) == 2
    assert all(t.policy_step == 0 for t in result.trajectories)
    assert result.rollout.stale_discarded == 0


class AgeSink:
    """Records how old each trajectory is (in versions) at the moment it is handed over."""

    def __init__(self) -> None:
        self.gate = None
        self.ages: list[int] = []
        self.trajectories: list[Trajectory] = []

    def _seen(self, trajectory: Trajectory) -> None:
        assert self.gate is not None
        # policy_step is None when the episode finished before the first update (step 0)
        self.ages.append(self.gate.step - (trajectory.policy_step or 0))
        self.trajectories.append(trajectory)

    async def open(self) -> None:
        return None

    async def write(self, trajectory: Trajectory) -> None:
        self._seen(trajectory)

    async def write_group(self, trajectories: Sequence[Trajectory]) -> None:
        for t in trajectories:
            self._seen(t)

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class JitterPolicy(SimplePolicy):
    """Says "go" after 0-2 event-loop yields (seeded), so episodes interleave with updates."""

    name = "jitter"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        for _ in range(self.rng.randrange(3)):
            await anyio.lowlevel.checkpoint()
        return PolicyResponse(text=react("go", "go"))


@pytest.mark.parametrize("seed", range(8))
async def test_property_no_consumed_sample_is_older_than_the_bound(seed: int) -> None:
    rng = random.Random(seed)
    bound = rng.randrange(3)
    stale = rng.choice(["discard", "restart"])
    group = rng.choice([None, 2])
    updates = rng.randrange(1, 6)
    sink = AgeSink()
    policy = JitterPolicy(seed)
    turns = 0

    def count(event: Event) -> None:
        nonlocal turns
        turns += isinstance(event, TurnFinished)

    plugin = E.plugin(E.AsyncProbe, max_instances=8)
    async with Runtime(
        config(max_concurrent_episodes=8), registry=registry(plugin), sinks=[sink]
    ) as rt:
        rt.subscribe(count)
        workload = Workload(
            env="probe",
            tasks=list(range(10)),
            samples=2,
            group_size=group,
            max_staleness=bound,
            stale=stale,  # type: ignore[arg-type]
        )
        handle = await rt.submit(workload, policy=policy)
        sink.gate = rt.gate(policy)
        marks = sorted(rng.randrange(1, 50) for _ in range(updates))
        for i, mark in enumerate(marks):
            await until(lambda mark=mark: turns >= mark or handle.done)
            if handle.done:
                break
            mode = rng.choice(["abort", "wait", "continue"])
            await rt.update_policy(policy, version=f"v{i + 1}", mode=mode)  # type: ignore[arg-type]
        result = await handle.wait()
    assert all(age <= bound for age in sink.ages), (bound, sink.ages)
    stats = result.rollout
    handed = len(sink.trajectories)
    assert handed == len(result.trajectories)
    if group is None:
        assert handed + stats.stale_discarded == 20
    else:
        assert handed == 2 * stats.groups_kept
        assert stats.groups_kept + stats.groups_incomplete + stats.groups_stale == 20
    if stale == "restart":
        assert stats.stale_discarded == 0 or stats.stale_restarted > 0


class SecondWaits(SimplePolicy):
    """Says "go"; sample 1's calls wait for :meth:`release` (sample 0 runs freely)."""

    name = "second-waits"

    def __init__(self) -> None:
        self.released = anyio.Event()
        self.waiting = 0

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        if request.sample == 1 and not self.released.is_set():
            self.waiting += 1
            try:
                await self.released.wait()
            finally:
                self.waiting -= 1
        return PolicyResponse(text=react("go", "go"))


@pytest.mark.parametrize("stale", ["discard", "restart"])
async def test_a_group_member_that_aged_while_waiting_is_restarted_or_the_group_dropped(
    stale: str,
) -> None:
    # Sample 0 finishes under version 0; sample 1 is in flight when the update aborts and
    # redoes its call under v1. At commit, sample 0 is one version old (> 0).
    policy = SecondWaits()
    sink = AgeSink()
    plugin = E.plugin(E.AsyncProbe, max_instances=4)
    async with Runtime(config(), registry=registry(plugin), sinks=[sink]) as rt:
        handle = await rt.submit(
            Workload(env="probe", tasks=[0], group_size=2, max_staleness=0, stale=stale),  # type: ignore[arg-type]
            policy=policy,
        )
        sink.gate = rt.gate(policy)
        # sample 0 has ended (its member task is gone), sample 1 waits in its first call
        await until(lambda: policy.waiting == 1 and rt.scheduler.running == 1)
        await rt.update_policy(policy, version="v1", mode="abort")
        policy.released.set()
        result = await handle.wait()
    stats = result.rollout
    if stale == "discard":
        assert stats.groups_stale == 1 and result.trajectories == []
        return
    assert stats.stale_restarted == 1 and stats.groups_kept == 1
    assert sorted(t.sample for t in result.trajectories) == [0, 1]
    assert all(t.policy_step == 1 for t in result.trajectories)
    assert sink.ages == [0, 0]
