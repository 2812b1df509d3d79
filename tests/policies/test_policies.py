"""Policy protocol helpers: batching of concurrent calls, random and scripted policies."""

from __future__ import annotations

import anyio
import pytest

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.registry import Registry, default_registry
from gymux.errors import PolicyError
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import react
from gymux.policies.batching import BatchingPolicy
from gymux.policies.registry import UnknownPolicyError, make_policy
from gymux.policies.scripted import RandomPolicy
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason

from doubles import envs as E

pytestmark = pytest.mark.anyio


def request(task_id: int = 0, turn: int = 0, admissible=None) -> PolicyRequest:
    return PolicyRequest(
        episode_id=f"e{task_id}",
        env_id="probe",
        task_id=task_id,
        turn=turn,
        messages=[],
        admissible_actions=admissible,
    )


class Recording(BatchingPolicy):
    name = "recording"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.sizes: list[int] = []

    async def act_batch(self, requests):
        self.sizes.append(len(requests))
        await anyio.sleep(0.01)
        return [PolicyResponse(text=react("go", "go")) for _ in requests]


async def test_batching_policy_sees_concurrent_requests_together():
    policy = Recording(max_batch=16, window_s=0.005)
    async with policy:
        results = []

        async def one(i):
            results.append(await policy.act(request(i)))

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
    assert len(results) == 40
    assert sum(policy.sizes) == 40
    assert max(policy.sizes) == 16  # capped
    assert len(policy.sizes) <= 4  # 40 concurrent calls -> a handful of batches, not 40


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_batching_policy_answers_and_cancels_under_either_backend(backend: str) -> None:
    """Under asyncio a queued call waits on a bare future, under trio on an anyio Event:
    either way every caller gets its own answer, and a caller cancelled while its batch is
    out is skipped without disturbing the others."""
    if backend == "trio":
        pytest.importorskip("trio")

    async def main() -> None:
        policy = Recording(max_batch=8, window_s=0.005)
        async with policy:
            results: dict[int, str] = {}

            async def one(i: int) -> None:
                results[i] = (await policy.act(request(i))).text

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(one, i)
                with anyio.move_on_after(0.001):  # cancelled while queued or batched
                    await policy.act(request(99))
            assert sorted(results) == list(range(20))
            assert set(results.values()) == {react("go", "go")}
            assert (await policy.act(request(100))).text == react("go", "go")
            assert (policy._loop is not None) == (backend == "asyncio")

    anyio.run(main, backend=backend)


async def test_batching_policy_in_the_runtime_batches_across_episodes():
    policy = Recording(max_batch=64, window_s=0.002)
    reg = Registry(entry_points_group=None)
    reg.register(E.plugin(E.AsyncProbe, max_instances=50))
    async with Runtime(RuntimeConfig(max_concurrent_episodes=50), registry=reg) as rt:
        result = await rt.run(Workload(env="probe", tasks=E.HEALTHY, samples=5), policy=policy)
    assert result.summary.success_rate == 1.0 and result.summary.episodes == 50
    assert sum(policy.sizes) == 150  # 50 episodes x 3 turns
    assert max(policy.sizes) >= 25, policy.sizes


class Broken(BatchingPolicy):
    name = "broken"

    def __init__(self, mode: str):
        super().__init__(window_s=0.001)
        self.mode = mode

    async def act_batch(self, requests):
        if self.mode == "raise":
            raise ConnectionError("server went away")
        if self.mode == "short":
            return [PolicyResponse(text="x")] * (len(requests) - 1)
        # per-item errors: fail odd task ids only
        return [
            PolicyError(f"bad item {r.task_id}")
            if r.task_id % 2
            else PolicyResponse(text=react("go", "go"))
            for r in requests
        ]


@pytest.mark.parametrize("mode", ["raise", "short", "per-item"])
async def test_batch_failures_fail_only_the_affected_episodes(mode):
    reg = Registry(entry_points_group=None)
    reg.register(E.plugin(E.AsyncProbe, max_instances=10))
    async with Runtime(RuntimeConfig(), registry=reg) as rt:
        result = await rt.run(Workload(env="probe", tasks=[0, 1, 2, 3]), policy=Broken(mode))
    by_task = {t.task_id: t for t in result.trajectories}
    assert len(by_task) == 4
    if mode == "per-item":
        assert by_task[0].success and by_task[2].success
        assert by_task[1].finish_reason is FinishReason.POLICY_ERROR
        assert "bad item 1" in by_task[1].error
    else:
        assert all(t.finish_reason is FinishReason.POLICY_ERROR for t in by_task.values())
        expected = "server went away" if mode == "raise" else "got 3 answers"
        assert all(expected in t.error for t in by_task.values())


async def test_batching_policy_must_be_entered():
    with pytest.raises(PolicyError, match="not running"):
        await Recording().act(request())


async def test_cancelled_caller_is_skipped():
    gate = anyio.Event()

    class Gated(BatchingPolicy):
        def __init__(self):
            super().__init__(window_s=0, max_inflight_batches=1)
            self.seen: list[int] = []

        async def act_batch(self, requests):
            self.seen.extend(r.task_id for r in requests)
            await gate.wait()
            return [PolicyResponse(text="ok") for _ in requests]

    policy = Gated()
    errors = []
    async with policy, anyio.create_task_group() as tg:
        tg.start_soon(policy.act, request(0))
        await anyio.sleep(0.01)
        with anyio.move_on_after(0.01):
            await policy.act(request(1))  # queued behind the busy slot, then cancelled

        async def last():
            try:
                await policy.act(request(2))
            except PolicyError as exc:
                errors.append(str(exc))

        tg.start_soon(last)
        await anyio.sleep(0.01)
        gate.set()
        await anyio.sleep(0.05)
    assert policy.seen == [0, 2]  # the cancelled request never reached the server
    assert errors == []


async def test_shutdown_fails_requests_still_waiting():
    class Never(BatchingPolicy):
        def __init__(self):
            super().__init__(window_s=0)

        async def act_batch(self, requests):
            await anyio.sleep_forever()

    policy = Never()
    errors = []

    async def call():
        try:
            await policy.act(request(0))
        except PolicyError as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg, policy:
        tg.start_soon(call)
        await anyio.sleep(0.02)
    assert errors and "shut down" in errors[0]


async def test_random_policy_is_deterministic_and_uses_admissible_actions():
    policy = RandomPolicy(["a", "b", "c"], seed=7)
    texts = [(await policy.act(request(1, t))).text for t in range(20)]
    again = [
        (await RandomPolicy(["a", "b", "c"], seed=7).act(request(1, t))).text for t in range(20)
    ]
    assert texts == again
    assert len(set(texts)) > 1
    out = await policy.act(request(1, 0, admissible=["only"]))
    assert out.text.endswith("only")
    with pytest.raises(PolicyError, match="no actions"):
        await RandomPolicy([]).act(request())


def test_make_policy_by_name():
    maze = default_registry().get("maze")
    assert make_policy("oracle", maze).name == "oracle"
    assert make_policy("random", maze).name == "random"
    with pytest.raises(UnknownPolicyError, match="unknown policy 'gpt'"):
        make_policy("gpt", maze)
    with pytest.raises(UnknownPolicyError, match="no oracle"):
        make_policy("oracle", E.EnvPlugin(E.SPEC, E.AsyncProbe))


async def test_batching_policy_exited_before_its_dispatcher_ran_exits_cleanly():
    policy = Recording()
    async with policy:
        pass  # no checkpoint: the dispatcher task has not started yet
    with pytest.raises(PolicyError, match="not running"):
        await policy.act(request())


class Gate(BatchingPolicy):
    """Records when each batch reached act_batch; batches wait for ``release``."""

    name = "gate"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.release = anyio.Event()
        self.dispatched: list[tuple[float, int]] = []

    async def act_batch(self, requests):
        self.dispatched.append((anyio.current_time(), len(requests)))
        await self.release.wait()
        return [PolicyResponse(text=react("go", "go")) for _ in requests]


# "At once" vs "after the window": the windows are long (30 s) so that a busy machine's
# delays (fractions of a second) can never blur the two; no test waits a long window out.
LONG_WINDOW_S = 30.0


async def test_adaptive_window_light_load_dispatches_a_lone_request_at_once():
    policy = Gate(max_batch=16, window_s=LONG_WINDOW_S)
    policy.release.set()
    async with policy:
        t0 = anyio.current_time()
        await policy.act(request(0))
        assert anyio.current_time() - t0 < LONG_WINDOW_S / 2
    assert policy.dispatched_early == 1


async def test_adaptive_window_heavy_load_dispatches_at_once():
    policy = Gate(max_batch=8, window_s=LONG_WINDOW_S)
    async with policy, anyio.create_task_group() as tg:
        tg.start_soon(policy.act, request(0))  # a lone request: goes at once, stays in flight
        with anyio.fail_after(LONG_WINDOW_S / 2):
            while len(policy.dispatched) < 1:
                await anyio.sleep(0.005)
        t0 = anyio.current_time()
        for i in range(1, 5):  # 4 >= max_batch / 2: heavy, no window
            tg.start_soon(policy.act, request(i))
        with anyio.fail_after(LONG_WINDOW_S / 2):
            while len(policy.dispatched) < 2:
                await anyio.sleep(0.005)
        assert policy.dispatched[1][0] - t0 < LONG_WINDOW_S / 2
        assert policy.dispatched[1][1] == 4
        policy.release.set()


async def test_adaptive_window_moderate_load_waits_for_the_window():
    policy = Gate(max_batch=16, window_s=0.3)
    async with policy, anyio.create_task_group() as tg:
        tg.start_soon(policy.act, request(0))
        with anyio.fail_after(LONG_WINDOW_S):  # a bound, not a speed assertion
            while len(policy.dispatched) < 1:
                await anyio.sleep(0.005)
        t0 = anyio.current_time()
        tg.start_soon(policy.act, request(1))  # one in flight, 2 queued < 8: wait the window
        tg.start_soon(policy.act, request(2))
        with anyio.fail_after(LONG_WINDOW_S):
            while len(policy.dispatched) < 2:
                await anyio.sleep(0.005)
        assert policy.dispatched[1][0] - t0 >= 0.25 and policy.dispatched[1][1] == 2
        policy.release.set()
