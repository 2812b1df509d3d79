"""The deadline watchdog (``gymux.episode.Watchdog``): one task enforces every episode's
policy, env and episode time limits by cancelling the episode's scope, which the episode
ends as ``timeout`` with the same messages as a per-call timer would. It scans only when a
deadline can be due."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from gymux.config import Workload
from gymux.env_plugins.registry import Registry
from gymux.episode import EpisodeJob, PolicyGate, Watchdog, run_episode
from gymux.events import EpisodeError, EventBus
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy, react
from gymux.pool import EnvPool
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason, Trajectory

from doubles import envs as E

pytestmark = pytest.mark.anyio

#: The policy and step limits: tiny, so that a hung call ends quickly, yet far above what
#: an instant call takes even on a loaded machine (a bound, not a speed assertion).
TINY_S = 0.2
#: Thread mode (a thread per step, instance creation in a thread): more room.
THREAD_STEP_S = 1.0


@pytest.fixture(autouse=True)
def _clean_stats():
    E.Stats.reset_all()
    yield


def config(**kw):
    # step, policy, episode, close
    return E.runtime_config((TINY_S, TINY_S, 30.0, 3.0), **kw)


class HangsOn(SimplePolicy):
    """Answers "go" at once, except for the episodes (by sample) it hangs on for ever."""

    def __init__(self, samples: set[int]) -> None:
        self.samples = samples

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        if request.sample in self.samples:
            await anyio.sleep_forever()
        return PolicyResponse(text=react("go", "go"))


async def run(plugin, workload, policy, cfg=None, *, errors=None):
    reg = Registry(entry_points_group=None)
    reg.register(plugin)
    async with Runtime(cfg or config(), registry=reg) as rt:
        if errors is not None:
            rt.subscribe(lambda e: errors.append(e) if isinstance(e, EpisodeError) else None)
        result = await rt.run(workload, policy=policy)
        scheduler = rt.scheduler
        pool = scheduler.pools[plugin.id]
    # The watchdog watches nothing once the run is over, and no scanning task is left.
    assert scheduler.watchdog.watched == 0
    assert scheduler._watchers == 0
    return result, pool


async def test_one_hung_policy_call_among_many_ends_timeout_alone():
    plugin = E.plugin(E.AsyncProbe, max_instances=8)
    errors: list[EpisodeError] = []
    result, pool = await run(
        plugin,
        Workload(env="probe", tasks=[0], samples=40),
        HangsOn({7}),
        config(max_concurrent_episodes=16),
        errors=errors,
    )
    by_sample = {t.sample: t for t in result.trajectories}
    assert len(by_sample) == 40
    hung = by_sample.pop(7)
    assert hung.finish_reason is FinishReason.TIMEOUT
    assert hung.error == f"policy call exceeded {TINY_S}s"
    assert hung.truncated and not hung.terminal
    assert all(t.finish_reason is FinishReason.DONE and t.success for t in by_sample.values())
    # Reported like any other ending of an attempt, and the instance is not reused.
    assert [(e.reason, e.message, e.will_retry) for e in errors] == [
        (FinishReason.TIMEOUT, f"policy call exceeded {TINY_S}s", False)
    ]
    assert pool.live == 0


@pytest.mark.parametrize("mode", ["async", "thread"])
async def test_hung_env_step_ends_timeout_and_the_instance_is_dropped(mode):
    factory = E.AsyncProbe if mode == "async" else E.SyncProbe
    step_s = TINY_S if mode == "async" else THREAD_STEP_S
    plugin = E.plugin(factory, mode, max_instances=4)
    tasks = [*E.HEALTHY, E.HANG_STEP]
    workload = Workload(env="probe", tasks=tasks)
    result, pool = await run(plugin, workload, SimplePolicyGo(), config(step_timeout_s=step_s))
    t = {t.task_id: t for t in result.trajectories}
    hung = t.pop(E.HANG_STEP)
    assert hung.finish_reason is FinishReason.TIMEOUT
    assert hung.error == f"env step exceeded {step_s}s"
    assert len(hung.turns) == 1 and hung.turns[0].action == "go"  # the step's turn is kept
    assert all(x.finish_reason is FinishReason.DONE for x in t.values())
    assert pool.live == 0


async def test_hung_reset_ends_timeout_with_its_message():
    plugin = E.plugin(E.AsyncProbe)
    result, _ = await run(plugin, Workload(env="probe", tasks=[0, E.HANG_RESET]), SimplePolicyGo())
    t = {t.task_id: t for t in result.trajectories}
    assert t[E.HANG_RESET].finish_reason is FinishReason.TIMEOUT
    assert t[E.HANG_RESET].error == f"env reset exceeded {TINY_S}s"
    assert t[0].finish_reason is FinishReason.DONE


async def test_episode_deadline_is_enforced_between_calls():
    """The episode's own limit holds even when no single call exceeds its own."""
    plugin = E.plugin(E.AsyncProbe)

    class Slowish(SimplePolicy):
        async def act(self, request: PolicyRequest) -> PolicyResponse:
            await anyio.sleep(0.02)  # well under the 1 s policy limit
            return PolicyResponse(text=react("hm", "wait"))  # never "go": never done

    cfg = E.runtime_config((1.0, 1.0, 0.1, 3.0))
    result, _ = await run(
        plugin, Workload(env="probe", tasks=[0], max_turns=10_000), Slowish(), cfg
    )
    (traj,) = result.trajectories
    assert traj.finish_reason is FinishReason.TIMEOUT
    assert traj.error == "episode exceeded 0.1s"
    assert 1 <= len(traj.turns) < 10_000


class SimplePolicyGo(SimplePolicy):
    async def act(self, request: PolicyRequest) -> PolicyResponse:
        return PolicyResponse(text=react("go", "go"))


def job(task_id: int = 0) -> EpisodeJob:
    return EpisodeJob(
        run_id="r",
        episode_id=f"r:probe:{task_id}:0",
        env_id="probe",
        task_id=task_id,
        split="test",
        sample=0,
        max_turns=6,
    )


async def test_run_episode_without_a_watchdog_runs_a_private_one():
    plugin = E.plugin(E.AsyncProbe)
    pool = EnvPool(plugin, 2, close_timeout_s=3.0)
    recorded: list[Trajectory] = []

    async def record(t: Trajectory) -> None:
        recorded.append(t)

    before = set(asyncio.all_tasks())
    traj = await run_episode(
        job(),
        plugin=plugin,
        pool=pool,
        policy=HangsOn({0}),
        bus=EventBus(),
        config=config(),
        record=record,
    )
    assert set(asyncio.all_tasks()) <= before, "the private watchdog outlived its episode"
    assert recorded == [traj]
    assert traj.finish_reason is FinishReason.TIMEOUT
    assert traj.error == f"policy call exceeded {TINY_S}s"
    await pool.aclose()


async def test_a_gate_abort_redoes_the_call_and_is_not_a_timeout():
    """An abort cancels only the call (redone, turn marked); the watchdog is not involved
    and a later timeout still ends the episode as one."""
    plugin = E.plugin(E.AsyncProbe)
    pool = EnvPool(plugin, 2, close_timeout_s=3.0)
    gate = PolicyGate()
    acting = anyio.Event()
    watchdog = Watchdog(config(policy_timeout_s=10.0))
    calls: list[int] = []

    class FirstCallHangs(SimplePolicy):
        async def act(self, request: PolicyRequest) -> PolicyResponse:
            calls.append(request.turn)
            if len(calls) == 1:
                acting.set()
                await anyio.sleep_forever()
            return PolicyResponse(text=react("go", "go"))

    async def record(t: Trajectory) -> None:
        return None

    out: list[Trajectory] = []

    async def episode() -> None:
        out.append(
            await run_episode(
                job(),
                plugin=plugin,
                pool=pool,
                policy=FirstCallHangs(),
                bus=EventBus(),
                config=config(policy_timeout_s=10.0),
                record=record,
                gate=gate,
                watchdog=watchdog,
            )
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(watchdog.run)
        async with anyio.create_task_group() as episodes:
            episodes.start_soon(episode)
            await acting.wait()
            assert watchdog.watched == 1
            assert gate.abort_inflight("weight update") == 1
        tg.cancel_scope.cancel()
    (traj,) = out
    assert traj.finish_reason is FinishReason.DONE and traj.error is None
    assert traj.turns[0].abort == "weight update"
    assert calls[:2] == [0, 0]  # the aborted call was redone
    assert watchdog.watched == 0
    await pool.aclose()


async def test_an_abort_that_lands_after_the_answer_keeps_it_and_spares_the_env_step():
    """The gate aborts a call whose answer is already in (the abort lands before the episode
    awaits again): the answer is kept, the turn is not marked, nothing is redone, and the
    env step that follows (which awaits) is not cancelled by the abort."""
    steps: list[str] = []

    class AwaitingStep(E.AsyncProbe):
        async def step(self, action: str):  # type: ignore[no-untyped-def]
            await anyio.sleep(0)
            steps.append(action)
            return await super().step(action)

    plugin = E.plugin(AwaitingStep)
    pool = EnvPool(plugin, 1, close_timeout_s=3.0)
    gate = PolicyGate()
    calls: list[int] = []

    class AbortsItsOwnFirstCall(SimplePolicy):
        async def act(self, request: PolicyRequest) -> PolicyResponse:
            calls.append(request.turn)
            if len(calls) == 1:
                assert gate.abort_inflight("late") == 1  # this very call, still in flight
            return PolicyResponse(text=react("go", "go"))

    async def record(t: Trajectory) -> None:
        return None

    traj = await run_episode(
        job(),
        plugin=plugin,
        pool=pool,
        policy=AbortsItsOwnFirstCall(),
        bus=EventBus(),
        config=config(),
        record=record,
        gate=gate,
    )
    assert traj.finish_reason in (FinishReason.DONE, FinishReason.MAX_TURNS), traj.error
    assert calls == list(range(len(traj.turns)))  # one call per turn: nothing redone
    assert len(steps) == len(traj.turns) > 1
    assert [t.abort for t in traj.turns] == [None] * len(traj.turns)
    await pool.aclose()


async def test_cancelling_a_run_with_hung_episodes_is_clean():
    plugin = E.plugin(E.AsyncProbe, max_instances=4)
    reg = Registry(entry_points_group=None)
    reg.register(plugin)
    acting = anyio.Event()
    hung: list[int] = []

    class AllHang(SimplePolicy):
        async def act(self, request: PolicyRequest) -> PolicyResponse:
            hung.append(request.sample)
            if len(hung) == 4:
                acting.set()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    policy = AllHang()
    before = set(asyncio.all_tasks())
    # Limits far away: the run's cancellation, not the watchdog, ends the episodes.
    cfg = E.runtime_config((30.0, 30.0, 60.0, 3.0), max_concurrent_episodes=4)
    async with Runtime(cfg, registry=reg) as rt:
        handle = await rt.submit(Workload(env="probe", tasks=[0], samples=4), policy=policy)
        watchdog = rt.scheduler.watchdog
        await acting.wait()
        assert watchdog.watched == 4
        handle.cancel()
        result = await handle.wait()
        assert watchdog.watched == 0 and rt.scheduler._watchers == 0
        pool = rt.scheduler.pools["probe"]
    assert len(result.trajectories) == 4
    assert all(t.finish_reason is FinishReason.CANCELLED for t in result.trajectories)
    assert all(t.error == "run cancelled" for t in result.trajectories)
    assert pool.live == 0
    assert set(asyncio.all_tasks()) <= before, "orphan tasks left behind"


async def test_two_runs_share_one_scanning_task():
    plugin = E.plugin(E.AsyncProbe, max_instances=8)
    reg = Registry(entry_points_group=None)
    reg.register(plugin)
    async with Runtime(config(max_concurrent_episodes=8), registry=reg) as rt:
        a = await rt.submit(Workload(env="probe", tasks=[0], samples=3), policy=HangsOn({1}))
        b = await rt.submit(Workload(env="probe", tasks=[1], samples=3), policy=HangsOn({2}))
        ra, rb = await a.wait(), await b.wait()
        assert rt.scheduler._watchers == 0
    for result, hung in ((ra, 1), (rb, 2)):
        t = {t.sample: t for t in result.trajectories}
        assert t[hung].finish_reason is FinishReason.TIMEOUT
        assert t[hung].error == f"policy call exceeded {TINY_S}s"
        assert all(t[s].finish_reason is FinishReason.DONE for s in t if s != hung)


async def test_no_episode_limit_still_enforces_the_call_limits():
    plugin = E.plugin(E.AsyncProbe)
    pool = EnvPool(plugin, 2, close_timeout_s=3.0)
    cfg = config(episode_timeout_s=None)
    assert Watchdog(cfg).min_limit_s == pytest.approx(TINY_S)

    async def record(t: Trajectory) -> None:
        return None

    traj = await run_episode(
        job(E.HANG_STEP),
        plugin=plugin,
        pool=pool,
        policy=SimplePolicyGo(),
        bus=EventBus(),
        config=cfg,
        record=record,
    )
    assert traj.finish_reason is FinishReason.TIMEOUT
    assert traj.error == f"env step exceeded {TINY_S}s"
    await pool.aclose()


async def test_a_later_run_takes_the_scanning_over_when_the_first_ends():
    from gymux.scheduler import Scheduler

    scheduler = Scheduler(config(), EventBus())
    plugin = E.plugin(E.AsyncProbe)
    pool = scheduler.pool_for(plugin)
    first_in, first_out, second_in = anyio.Event(), anyio.Event(), anyio.Event()
    out: list[Trajectory] = []

    async def record(t: Trajectory) -> None:
        return None

    async def first() -> None:
        async with scheduler._watched():
            first_in.set()
            await first_out.wait()

    async def second() -> None:
        async with scheduler._watched():
            second_in.set()
            await first_out.wait()
            await anyio.lowlevel.checkpoint()
            # The first run is over: its scanning task is gone, this run's took over.
            out.append(
                await run_episode(
                    job(),
                    plugin=plugin,
                    pool=pool,
                    policy=HangsOn({0}),
                    bus=scheduler.bus,
                    config=scheduler.config,
                    record=record,
                    watchdog=scheduler.watchdog,
                )
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await first_in.wait()
        tg.start_soon(second)
        await second_in.wait()
        await anyio.lowlevel.checkpoint()
        assert scheduler._watchers == 1  # one scanning task for both runs
        first_out.set()
    (traj,) = out
    assert traj.finish_reason is FinishReason.TIMEOUT
    assert traj.error == f"policy call exceeded {TINY_S}s"
    assert scheduler._watchers == 0
    await scheduler.aclose()


async def test_turns_far_from_any_deadline_cost_no_scan():
    """Hundreds of turns armed and cleared with limits far away: the watchdog scanned once
    (when it started), not once per tick; before, it woke at least once a second and
    looked at every watched episode each time."""
    plugin = E.plugin(E.AsyncProbe, max_instances=16)
    reg = Registry(entry_points_group=None)
    reg.register(plugin)
    cfg = E.runtime_config((300.0, 300.0, 3600.0, 3.0), max_concurrent_episodes=16)
    async with Runtime(cfg, registry=reg) as rt:
        result = await rt.run(
            Workload(env="probe", tasks=list(range(8)), samples=4, max_turns=5),
            policy=SimplePolicyGo(),
        )
        watchdog = rt.scheduler.watchdog
    turns = sum(len(t.turns) for t in result.trajectories)
    assert len(result.trajectories) == 32 and turns >= 32 * 2
    assert watchdog.min_limit_s == 300.0
    assert watchdog.scans == 1


async def test_a_deadline_sooner_than_the_shortest_limit_wakes_the_watchdog():
    """A call armed with a limit shorter than any of the config's (the watchdog would
    otherwise sleep for the config's shortest, 300 s) still ends on time."""
    from gymux.episode import _Context

    cfg = E.runtime_config((300.0, 300.0, 3600.0, 3.0))
    watchdog = Watchdog(cfg)
    plugin = E.plugin(E.AsyncProbe)
    pool = EnvPool(plugin, 1, close_timeout_s=3.0)
    ctx = _Context(job(), plugin, pool, SimplePolicyGo(), EventBus(), cfg, PolicyGate())
    async with anyio.create_task_group() as tg:
        tg.start_soon(watchdog.run)
        await anyio.wait_all_tasks_blocked()
        assert watchdog.scans == 1  # asleep, for up to 300 s
        with anyio.fail_after(60):  # a bound for a loaded machine, not a speed target
            with anyio.CancelScope() as scope:
                ctx.scope = scope
                watchdog._add(ctx)
                assert ctx.watchdog is watchdog
                ctx.arm("policy call", 0.05)
                await anyio.sleep_forever()
        watchdog._discard(ctx)
        tg.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert ctx.expired == "policy call exceeded 0.05s"
    assert watchdog.scans >= 2
    await pool.aclose()
