"""The runtime against real misbehaving environments, in all three execution modes."""

from __future__ import annotations

import asyncio
import os

import anyio
import pytest

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.registry import PluginError, Registry
from gymux.errors import PolicyError
from gymux.events import EpisodeError, EpisodeFinished, EpisodeStarted, TurnFinished
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy, react
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason

from doubles import envs as E

pytestmark = pytest.mark.anyio

MODES = {
    "async": E.AsyncProbe,
    "thread": E.SyncProbe,
    "process": E.ProcessProbe,
}


@pytest.fixture(autouse=True)
def _clean_stats():
    E.Stats.reset_all()
    yield


def registry_with(*plugins) -> Registry:
    reg = Registry(entry_points_group=None)
    for p in plugins:
        reg.register(p)
    return reg


#: A step timeout for process-mode tests that expect a hung call to time out. It also bounds
#: creating a worker process (spawn + imports), which takes seconds on a busy machine, so it
#: is generous: a bound, not a speed assertion.
PROCESS_STEP_TIMEOUT_S = 10.0


def config(**kw) -> RuntimeConfig:
    # the step timeout bounds worker creation too: generous
    return E.runtime_config((PROCESS_STEP_TIMEOUT_S, 3.0, 30.0, 3.0), **kw)


async def run_tasks(plugin, tasks, *, policy=None, cfg=None, samples=1):
    reg = registry_with(plugin)
    async with Runtime(cfg or config(), registry=reg) as rt:
        result = await rt.run(
            Workload(env=plugin.id, tasks=list(tasks), samples=samples), policy=policy
        )
        pool = rt.scheduler.pools[plugin.id]
    return result, pool


def by_task(result):
    return {t.task_id: t for t in result.trajectories}


@pytest.mark.parametrize("mode", list(MODES))
async def test_healthy_episodes_succeed_and_instances_are_reused(mode):
    plugin = E.plugin(MODES[mode], mode, max_instances=3)
    result, pool = await run_tasks(plugin, E.HEALTHY, samples=2)
    assert len(result.trajectories) == 20
    assert all(t.finish_reason is FinishReason.DONE and t.success for t in result.trajectories)
    assert all(len(t.turns) == 3 for t in result.trajectories)
    assert pool.created <= 3, "per-env cap exceeded"
    assert pool.live == 0 and pool.closed_count == pool.created, "instances leaked"
    if mode != "process":
        assert E.Stats.max_live <= 3
        assert E.Stats.live == 0


@pytest.mark.parametrize("mode", list(MODES))
async def test_failures_are_isolated_per_episode(mode):
    plugin = E.plugin(MODES[mode], mode, max_instances=4)
    tasks = [0, 1, E.HANG_STEP, E.STEP_RAISES, E.BAD_RESET_TYPE, E.BAD_STEP_TYPE, 2, 3]
    timeout = 1.0 if mode != "process" else PROCESS_STEP_TIMEOUT_S
    result, pool = await run_tasks(plugin, tasks, cfg=config(step_timeout_s=timeout, env_retries=0))
    t = by_task(result)
    assert len(t) == len(tasks)
    for ok in (0, 1, 2, 3):
        assert t[ok].finish_reason is FinishReason.DONE and t[ok].success
    assert t[E.HANG_STEP].finish_reason is FinishReason.TIMEOUT
    assert "env step exceeded" in t[E.HANG_STEP].error
    assert t[E.STEP_RAISES].finish_reason is FinishReason.ENV_ERROR
    assert "env exploded" in t[E.STEP_RAISES].error
    assert t[E.BAD_RESET_TYPE].finish_reason is FinishReason.ENV_ERROR
    assert t[E.BAD_STEP_TYPE].finish_reason is FinishReason.ENV_ERROR
    if mode != "process":  # the worker rejects a bad type before it crosses the wire
        assert "protocol violation" in t[E.BAD_RESET_TYPE].error
    assert pool.live == 0 and pool.closed_count == pool.created


@pytest.mark.parametrize("mode", list(MODES))
async def test_hung_reset_times_out(mode):
    plugin = E.plugin(MODES[mode], mode)
    timeout = 0.5 if mode != "process" else PROCESS_STEP_TIMEOUT_S
    result, _ = await run_tasks(plugin, [E.HANG_RESET, 0], cfg=config(step_timeout_s=timeout))
    t = by_task(result)
    assert t[E.HANG_RESET].finish_reason is FinishReason.TIMEOUT
    assert "reset exceeded" in t[E.HANG_RESET].error
    assert t[0].success


@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_hung_env_instance_is_replaced_not_reused(mode):
    plugin = E.plugin(MODES[mode], mode, max_instances=1)
    timeout = 0.5 if mode == "thread" else PROCESS_STEP_TIMEOUT_S
    result, pool = await run_tasks(plugin, [E.HANG_STEP, 0, 1], cfg=config(step_timeout_s=timeout))
    t = by_task(result)
    assert t[E.HANG_STEP].finish_reason is FinishReason.TIMEOUT
    assert t[0].success and t[1].success
    assert pool.created == 2  # the hung one was discarded, one fresh instance served the rest


async def test_process_crash_and_segfault_are_env_errors_and_workers_are_reaped():
    plugin = E.plugin(E.ProcessProbe, "process", max_instances=2)
    result, pool = await run_tasks(plugin, [E.EXIT_IN_STEP, E.SEGFAULT_IN_STEP, 0, 1, E.NOISY])
    t = by_task(result)
    assert t[E.EXIT_IN_STEP].finish_reason is FinishReason.ENV_ERROR
    assert "exit code 3" in t[E.EXIT_IN_STEP].error
    assert t[E.SEGFAULT_IN_STEP].finish_reason is FinishReason.ENV_ERROR
    assert "exit code -11" in t[E.SEGFAULT_IN_STEP].error
    assert t[0].success and t[1].success
    # stdout junk printed by the env does not corrupt the worker protocol
    assert t[E.NOISY].success
    pids = {
        int(tr.turns[0].observation.split("pid ")[1].split(":")[0])
        for tr in result.trajectories
        if tr.turns and "pid" in tr.turns[0].observation
    }
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert pool.live == 0


@pytest.mark.parametrize("mode", list(MODES))
async def test_transient_errors_are_retried_with_backoff(mode):
    plugin = E.plugin(MODES[mode], mode)
    result, _ = await run_tasks(
        plugin, [E.FLAKY_RESET, E.ALWAYS_TRANSIENT], cfg=config(env_retries=2)
    )
    t = by_task(result)
    if mode != "process":  # per-process counters: a fresh worker forgets earlier failures
        assert t[E.FLAKY_RESET].success
        assert t[E.FLAKY_RESET].attempts == 3
    assert t[E.ALWAYS_TRANSIENT].finish_reason is FinishReason.ENV_ERROR
    assert t[E.ALWAYS_TRANSIENT].attempts == 3
    assert "after 3 attempts" in t[E.ALWAYS_TRANSIENT].error


async def test_close_raising_is_logged_not_fatal():
    plugin = E.plugin(E.CloseRaises, "async", max_instances=2)
    result, pool = await run_tasks(plugin, [0, 1, 2, E.STEP_RAISES])
    assert sum(t.success for t in result.trajectories) == 3
    assert pool.close_errors == pool.created >= 1
    assert pool.live == 0


async def test_protocol_violation_names_the_plugin():
    plugin = E.plugin(E.NoStep, "async")
    result, _ = await run_tasks(plugin, [0])
    (traj,) = result.trajectories
    assert traj.finish_reason is FinishReason.ENV_ERROR
    assert "'probe'" in traj.error and "no step()" in traj.error


async def test_sync_env_declared_async_is_rejected():
    plugin = E.plugin(E.SyncProbe, "async")
    result, _ = await run_tasks(plugin, [0])
    assert "not async" in result.trajectories[0].error


async def test_process_mode_needs_importable_factory():
    class Local(E.SyncProbe):
        pass

    reg = registry_with(E.plugin(Local, "process"))
    async with Runtime(config(), registry=reg) as rt:
        with pytest.raises(PluginError, match="importable"):
            await rt.submit(Workload(env="probe", tasks=[0]))


class Garbage(SimplePolicy):
    name = "garbage"

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        return PolicyResponse(text="I refuse to follow the format.")


async def test_malformed_actions_become_corrective_observations():
    plugin = E.plugin(E.AsyncProbe)
    result, _ = await run_tasks(plugin, [0], policy=Garbage())
    (traj,) = result.trajectories
    assert traj.finish_reason is FinishReason.MAX_TURNS
    assert traj.invalid_actions == E.SPEC.max_turns == len(traj.turns)
    assert all(turn.action is None and "Action:" in turn.parse_error for turn in traj.turns)
    # the model is told what went wrong, as the next user message
    assert traj.messages[-1].role == "user"
    assert traj.messages[-1].content.startswith("Invalid action:")
    assert traj.turns[1].observation.startswith("Invalid action:")


class Flaky(SimplePolicy):
    """Fails for task 1, hangs for task 2, overflows for task 3, else says go."""

    name = "flaky"

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        if request.task_id == 1:
            raise PolicyError("server said 500")
        if request.task_id == 2:
            await anyio.sleep_forever()
        if request.task_id == 3:
            return PolicyResponse(text="", finish_reason="context_limit")
        if request.task_id == 4:
            return "not a response"  # type: ignore[return-value]
        return PolicyResponse(text=react("go", "go"))


async def test_policy_failures_end_only_their_episode():
    plugin = E.plugin(E.AsyncProbe)
    result, _ = await run_tasks(
        plugin, [0, 1, 2, 3, 4, 5], policy=Flaky(), cfg=config(policy_timeout_s=0.3)
    )
    t = by_task(result)
    assert t[0].success and t[5].success
    assert t[1].finish_reason is FinishReason.POLICY_ERROR and "server said 500" in t[1].error
    assert t[2].finish_reason is FinishReason.TIMEOUT and "policy call exceeded" in t[2].error
    assert t[3].finish_reason is FinishReason.CONTEXT_LIMIT
    assert t[4].finish_reason is FinishReason.POLICY_ERROR


async def test_episode_timeout():
    plugin = E.plugin(E.AsyncProbe)

    class Slow(SimplePolicy):
        """Answers the first turn at once, then never again: the episode timeout, not the
        machine's speed, decides how many turns there are."""

        async def act(self, request):
            if request.turn > 0:
                await anyio.sleep_forever()
            return PolicyResponse(text=react("go", "go"))

    result, pool = await run_tasks(plugin, [0], policy=Slow(), cfg=config(episode_timeout_s=1.0))
    (traj,) = result.trajectories
    assert traj.finish_reason is FinishReason.TIMEOUT
    assert "episode exceeded" in traj.error
    assert len(traj.turns) == 1
    assert pool.live == 0


async def test_global_concurrency_cap_is_enforced():
    plugin = E.plugin(E.AsyncProbe, max_instances=100)
    inflight = peak = 0
    full = anyio.Event()  # the first calls wait until the cap is reached: no race with time

    class Counting(SimplePolicy):
        async def act(self, request):
            nonlocal inflight, peak
            inflight += 1
            peak = max(peak, inflight)
            if inflight >= 7:
                full.set()
            await full.wait()
            await anyio.sleep(0.01)
            inflight -= 1
            return PolicyResponse(text=react("go", "go"))

    result, _ = await run_tasks(
        plugin, E.HEALTHY, policy=Counting(), samples=5, cfg=config(max_concurrent_episodes=7)
    )
    assert len(result.trajectories) == 50
    assert peak == 7


async def test_per_env_instance_cap_from_config_overrides_plugin_default():
    plugin = E.plugin(E.AsyncProbe, max_instances=50)

    class Yields(SimplePolicy):  # episodes overlap, so more than 2 instances would be used
        async def act(self, request):
            await anyio.sleep(0.001)
            return PolicyResponse(text=react("go", "go"))

    result, pool = await run_tasks(
        plugin, E.HEALTHY, samples=4, policy=Yields(), cfg=config(env_instances={"probe": 2})
    )
    assert len(result.trajectories) == 40
    assert pool.cap == 2 and pool.created == 2 and E.Stats.max_live == 2


class BlocksForever(SimplePolicy):
    """Never answers; ``all_acting`` is set once ``n`` policy calls are in progress."""

    def __init__(self, n: int) -> None:
        self.n, self.acting, self.all_acting = n, 0, anyio.Event()

    async def act(self, request):
        self.acting += 1
        if self.acting == self.n:
            self.all_acting.set()
        await anyio.sleep_forever()


async def test_cancellation_records_cancelled_and_leaks_nothing(tmp_path):
    plugin = E.plugin(E.SyncProbe, "thread", max_instances=4)
    reg = registry_with(plugin)
    blocks = BlocksForever(4)  # every running episode is in its policy call

    before = set(asyncio.all_tasks())
    async with Runtime(config(max_concurrent_episodes=4), registry=reg, out=tmp_path) as rt:
        handle = await rt.submit(Workload(env="probe", tasks=E.HEALTHY), policy=blocks)
        await blocks.all_acting.wait()
        handle.cancel()
        result = await handle.wait()
        pool = rt.scheduler.pools["probe"]
    assert len(result.trajectories) == 4  # only the running ones; queued ones never started
    assert all(t.finish_reason is FinishReason.CANCELLED for t in result.trajectories)
    assert pool.live == 0 and E.Stats.live == 0 and E.Stats.closed == E.Stats.created
    assert set(asyncio.all_tasks()) <= before, "orphan tasks left behind"
    from gymux.stores import Store

    on_disk = list(Store(tmp_path / "store").trajectories())
    assert sorted(t.episode_id for t in on_disk) == sorted(
        t.episode_id for t in result.trajectories
    )


async def test_exiting_runtime_with_exception_cancels_runs():
    plugin = E.plugin(E.AsyncProbe, max_instances=4)
    reg = registry_with(plugin)
    blocks = BlocksForever(2)

    with pytest.raises(ZeroDivisionError):
        async with Runtime(config(), registry=reg) as rt:
            handle = await rt.submit(Workload(env="probe", tasks=[0, 1]), policy=blocks)
            await blocks.all_acting.wait()
            1 / 0  # noqa: B018
    assert handle.done
    assert {t.finish_reason for t in handle.trajectories} == {FinishReason.CANCELLED}
    assert E.Stats.live == 0


async def test_events_arrive_in_order_and_a_bad_subscriber_is_dropped():
    plugin = E.plugin(E.AsyncProbe)
    reg = registry_with(plugin)
    seen = []

    def bad(event):
        raise RuntimeError("subscriber bug")

    async with Runtime(config(), registry=reg) as rt:
        rt.subscribe(bad)
        rt.subscribe(seen.append)
        result = await rt.run(Workload(env="probe", tasks=[0, E.STEP_RAISES]), policy=E.SaysGo())
    assert len(result.trajectories) == 2
    per_episode: dict[str, list[str]] = {}
    for ev in seen:
        if hasattr(ev, "episode_id"):
            per_episode.setdefault(ev.episode_id, []).append(type(ev).__name__)
        elif isinstance(ev, EpisodeFinished):
            per_episode.setdefault(ev.trajectory.episode_id, []).append("EpisodeFinished")
    kinds = sorted(per_episode.values())
    assert [
        "EpisodeStarted",
        "TurnFinished",
        "TurnFinished",
        "TurnFinished",
        "EpisodeFinished",
    ] in kinds
    assert ["EpisodeStarted", "EpisodeError", "EpisodeFinished"] in kinds
    assert any(isinstance(e, EpisodeError) and "env exploded" in e.message for e in seen)
    assert sum(isinstance(e, TurnFinished) for e in seen) == 3
    assert sum(isinstance(e, EpisodeStarted) for e in seen) == 2


async def test_iterating_a_handle_yields_each_trajectory_once_as_it_finishes():
    plugin = E.plugin(E.AsyncProbe, max_instances=3)
    reg = registry_with(plugin)

    class Staggered(SimplePolicy):
        async def act(self, request):
            await anyio.sleep(0.01 * (request.task_id + 1))
            return PolicyResponse(text=react("go", "go"))

    async with Runtime(config(), registry=reg) as rt:
        handle = await rt.submit(Workload(env="probe", tasks=[0, 1, 2, 3, 4]), policy=Staggered())
        got = [t async for t in handle]
    assert sorted(t.task_id for t in got) == [0, 1, 2, 3, 4]
    assert len({t.episode_id for t in got}) == 5


@pytest.mark.parametrize("group_size", [None, 2])
async def test_a_run_that_keeps_no_trajectories_still_hands_each_to_sinks_and_events(group_size):
    # keep_trajectories=False (long runs streaming into a store): the handle holds none,
    # every one still reaches the sinks and an EpisodeFinished event, and iterating the
    # handle is a clear error, not a silently empty stream.
    from gymux.config import ConfigError

    class ListSink:
        def __init__(self) -> None:
            self.got: list = []

        async def open(self) -> None:
            return None

        async def write(self, trajectory) -> None:
            self.got.append(trajectory)

        async def write_group(self, trajectories) -> None:
            self.got.extend(trajectories)

        async def flush(self) -> None:
            return None

        async def aclose(self) -> None:
            return None

    sink = ListSink()
    finished: list[str] = []
    reg = registry_with(E.plugin(E.AsyncProbe, max_instances=4))
    async with Runtime(config(), registry=reg, sinks=[sink]) as rt:
        rt.subscribe(
            lambda e: (
                finished.append(e.trajectory.episode_id) if isinstance(e, EpisodeFinished) else None
            )
        )
        work = Workload(env="probe", tasks=[0, 1, 2], samples=2, group_size=group_size)
        handle = await rt.submit(work, policy=E.SaysGo(), keep_trajectories=False)
        with pytest.raises(ConfigError, match="keep_trajectories=False"):
            async for _ in handle:
                pass
        result = await handle.wait()
        kept = await rt.submit(work, policy=E.SaysGo())  # the default keeps them
        assert len((await kept.wait()).trajectories) == result.planned
    assert result.planned == (12 if group_size else 6)
    assert handle.trajectories == [] and result.trajectories == []
    assert result.summary.episodes == result.planned
    mine = [t for t in sink.got if t.run_id == result.run_id]
    assert len({t.episode_id for t in mine}) == result.planned
    assert sorted(finished).count(mine[0].episode_id) == 1
    assert {t.episode_id for t in mine} <= set(finished)


async def test_two_runs_share_the_runtime_and_the_global_cap():
    plugin = E.plugin(E.AsyncProbe, max_instances=10)
    reg = registry_with(plugin)
    async with Runtime(config(max_concurrent_episodes=3), registry=reg) as rt:
        a = await rt.submit(Workload(env="probe", tasks=[0, 1, 2]), policy=E.SaysGo())
        b = await rt.submit(Workload(env="probe", tasks=[3, 4], samples=2), policy=E.SaysGo())
        ra, rb = await a.wait(), await b.wait()
    assert ra.summary.episodes == 3 and rb.summary.episodes == 4
    assert ra.run_id != rb.run_id
    assert {t.run_id for t in ra.trajectories} == {ra.run_id}
    assert rb.summary.success_rate == 1.0


async def test_submit_validates_before_running():
    plugin = E.plugin(E.AsyncProbe)
    reg = registry_with(plugin)
    async with Runtime(config(), registry=reg) as rt:
        with pytest.raises(PluginError, match="not installed"):
            await rt.submit(Workload(env="nope"))
        with pytest.raises(KeyError, match="no split 'dev'"):
            await rt.submit(Workload(env="probe", tasks="dev"))
        with pytest.raises(ValueError, match="no task ids"):
            await rt.submit(Workload(env="probe", tasks=[999]))
        with pytest.raises(ValueError, match="unknown policy"):
            await rt.submit(Workload(env="probe", policy="gpt-9"))
    with pytest.raises(RuntimeError, match="not running"):
        await Runtime(config(), registry=reg).submit(Workload(env="probe"))


async def test_pool_waiters_are_served_in_order_and_a_cancelled_waiter_passes_its_turn():
    from gymux.pool import EnvPool

    pool = EnvPool(E.plugin(E.AsyncProbe), cap=1)
    order = []
    release_first = anyio.Event()

    async def user(name, hold=None):
        async with pool.lease(create_timeout_s=5) as lease:
            order.append(name)
            if hold is not None:
                await hold.wait()
            assert lease.env is not None

    async with anyio.create_task_group() as tg:
        tg.start_soon(user, "a", release_first)
        await anyio.wait_all_tasks_blocked()  # a holds the instance
        cancel_b = anyio.CancelScope()

        async def b_cancellable():
            with cancel_b:
                await user("b")

        tg.start_soon(b_cancellable)
        await anyio.wait_all_tasks_blocked()  # b waits
        tg.start_soon(user, "c")
        await anyio.wait_all_tasks_blocked()  # c waits behind b
        cancel_b.cancel()  # b gives up while waiting
        release_first.set()
    assert order == ["a", "c"]
    assert pool.created == 1 and pool.live == 1 and pool.idle == 1
    await pool.aclose()
    assert pool.live == 0 and E.Stats.live == 0


async def test_a_lease_left_by_an_error_or_a_cancel_closes_its_instance():
    from gymux.pool import EnvPool

    pool = EnvPool(E.plugin(E.AsyncProbe), cap=2)
    async with pool.lease(create_timeout_s=5) as lease:
        first = lease.env
    async with pool.lease(create_timeout_s=5) as lease:
        assert lease.env is first  # returned clean: reused
    with pytest.raises(ValueError):
        async with pool.lease(create_timeout_s=5) as lease:
            raise ValueError("env broke")
    assert pool.created == 1 and pool.closed_count == 1 and pool.live == 0
    with anyio.CancelScope() as scope:
        async with pool.lease(create_timeout_s=5) as lease:
            scope.cancel()
            await anyio.sleep(1)  # cancelled here; the close below runs shielded
    assert scope.cancelled_caught
    assert pool.created == 2 and pool.closed_count == 2 and pool.live == 0 and pool.idle == 0
    await pool.aclose()
    assert E.Stats.live == 0


async def test_token_record_from_the_policy_lands_on_the_trajectory_and_retries_discard_it():
    from gymux.stores.codec import pack_float32, pack_int32, pack_uint8
    from gymux.trajectory import TokenData

    class Counting(SimplePolicy):
        """Keeps a per-episode token list, as a token-exact policy would."""

        name = "counting"

        def __init__(self):
            self.ids: dict[str, list[int]] = {}
            self.finished: list[str] = []

        async def act(self, request):
            self.ids.setdefault(request.episode_id, []).append(request.turn)
            return PolicyResponse(text=react("go", "go"))

        def finish_episode(self, episode_id):
            self.finished.append(episode_id)
            ids = self.ids.pop(episode_id, [])
            if episode_id.endswith(":1:0"):
                raise RuntimeError("tokenizer exploded")  # must not break the episode
            return TokenData(
                ids=pack_int32(ids),
                loss_mask=pack_uint8([1] * len(ids)),
                logprobs=pack_float32([0.0] * len(ids)),
            )

    policy = Counting()
    plugin = E.plugin(E.AsyncProbe)
    result, _ = await run_tasks(
        plugin, [0, 1, E.FLAKY_RESET], policy=policy, cfg=config(env_retries=2)
    )
    t = by_task(result)
    assert t[0].tokens is not None and t[0].tokens.length == 3  # turns 0, 1, 2
    assert t[1].success and t[1].tokens is None  # finish_episode raised: logged, no tokens
    flaky = t[E.FLAKY_RESET]
    assert flaky.success and flaky.attempts == 3
    assert flaky.tokens is not None and flaky.tokens.length == 3  # only the last attempt
    assert policy.finished.count(flaky.episode_id) == 3  # two discarded retries + the end
    assert policy.ids == {}  # every episode's state was released


async def test_a_long_lived_runtime_forgets_finished_runs():
    plugin = E.plugin(E.AsyncProbe)
    reg = registry_with(plugin)
    async with Runtime(config(), registry=reg) as rt:
        results = [
            await rt.run(Workload(env="probe", tasks=[0]), policy=E.SaysGo()) for _ in range(5)
        ]
        assert rt._handles == []  # nothing retained by the runtime itself
    assert all(r.summary.episodes == 1 for r in results)


def test_logs_follow_sys_stderr_and_a_broken_log_never_breaks_publishing(monkeypatch):
    import io

    import structlog

    from gymux.events import EventBus, RunStarted
    from gymux.log import configure_logging

    configure_logging("warning")
    later = io.StringIO()
    monkeypatch.setattr("sys.stderr", later)  # replaced after logging was configured
    structlog.get_logger("t").error("hello from the test")
    assert "hello from the test" in later.getvalue()

    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr("sys.stderr", closed)  # now every log write raises ValueError
    bus = EventBus()
    seen = []

    def bad(event):
        raise RuntimeError("subscriber bug")

    bus.subscribe(bad)
    bus.subscribe(seen.append)
    bus.publish(RunStarted(run_id="r", env_id="e", policy="p", episodes=1))  # must not raise
    assert len(seen) == 1


async def test_submit_only_runs_the_accepted_episodes():
    plugin = E.plugin(E.AsyncProbe)
    reg = registry_with(plugin)
    async with Runtime(config(), registry=reg) as rt:
        handle = await rt.submit(
            Workload(env="probe", tasks=[0, 1, 2], samples=2),
            policy=E.SaysGo(),
            only=lambda job: (job.task_id, job.sample) in {(0, 1), (2, 0)},
        )
        result = await handle.wait()
    assert result.planned == 2
    assert sorted((t.task_id, t.sample) for t in result.trajectories) == [(0, 1), (2, 0)]
