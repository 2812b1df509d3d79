"""RL groups (GRPO): group_size, over-sampling with cancellation of the surplus, zero-variance
groups, atomic hand-over to the sinks (``Sink.write_group``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import anyio
import pytest

from gymux.config import ConfigError, Workload
from gymux.env_plugins.registry import Registry
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy, react
from gymux.runtime import Runtime
from gymux.sinks import JsonlSink, read_jsonl
from gymux.trajectory import FinishReason, Trajectory

from doubles import envs as E

pytestmark = pytest.mark.anyio


def registry(plugin) -> Registry:
    return E.registry_of(plugin)


config = E.rl_config


class GroupSink:
    """Records every ``write`` and ``write_group`` call."""

    def __init__(self) -> None:
        self.groups: list[list[Trajectory]] = []
        self.singles: list[Trajectory] = []

    async def open(self) -> None:
        return None

    async def write(self, trajectory: Trajectory) -> None:
        self.singles.append(trajectory)

    async def write_group(self, trajectories: Sequence[Trajectory]) -> None:
        self.groups.append(list(trajectories))

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class SamplePolicy(SimplePolicy):
    """Says "go" (reward 1 after three) for samples in ``good``, "wait" (never done, reward 0)
    for the others; samples in ``hang`` block until cancelled (counted in ``cancelled``)."""

    name = "by-sample"

    def __init__(self, good=lambda req: True, hang=lambda req: False) -> None:
        self.good = good
        self.hang = hang
        self.cancelled: Counter[str] = Counter()
        self.hanging = 0

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        if self.hang(request):
            self.hanging += 1
            try:
                await anyio.sleep_forever()
            finally:
                self.hanging -= 1
                self.cancelled[request.episode_id] += 1
        action = "go" if self.good(request) else "wait"
        return PolicyResponse(text=react("ok", action))


async def test_groups_reach_the_sinks_whole_with_unique_ids() -> None:
    sink = GroupSink()
    plugin = E.plugin(E.AsyncProbe, max_instances=4)
    async with Runtime(
        config(max_concurrent_episodes=5), registry=registry(plugin), sinks=[sink]
    ) as rt:
        result = await rt.run(
            Workload(env="probe", tasks=[0, 1, 2], samples=2, group_size=3),
            policy=SamplePolicy(),
        )
    assert result.planned == 3 * 2 * 3
    assert sink.singles == []
    assert len(sink.groups) == 6
    ids = [g[0].group_id for g in sink.groups]
    assert len(set(ids)) == 6 and all(ids)
    for group in sink.groups:
        assert len(group) == 3
        assert {t.group_id for t in group} == {group[0].group_id}
        assert {t.task_id for t in group} == {group[0].task_id}
        assert all(t.group_size == 3 for t in group)
        assert len({t.sample for t in group}) == 3
    assert len(result.trajectories) == 18
    assert result.rollout.groups_kept == 6
    assert result.rollout.surplus_cancelled == 0
    assert result.summary.episodes == 18


async def test_oversampling_keeps_the_first_finished_and_cancels_the_surplus() -> None:
    # Groups of 2 with 2 extra: samples 0 and 1 of each group hang in their policy call,
    # so the kept ones are 2 and 3, and the hanging calls must be cancelled.
    sink = GroupSink()
    policy = SamplePolicy(hang=lambda req: req.sample % 4 < 2)
    plugin = E.plugin(E.AsyncProbe, max_instances=16)
    async with Runtime(
        config(max_concurrent_episodes=16), registry=registry(plugin), sinks=[sink]
    ) as rt:
        result = await rt.run(
            Workload(env="probe", tasks=[0, 1], samples=2, group_size=2, oversample=2),
            policy=policy,
        )
    assert result.planned == 2 * 2 * 4
    assert len(sink.groups) == 4
    for group in sink.groups:
        assert sorted(t.sample % 4 for t in group) == [2, 3]
        assert all(t.finish_reason is FinishReason.DONE for t in group)
    assert result.rollout.surplus_cancelled == 8
    assert result.rollout.groups_kept == 4
    # Every surplus episode's in-flight policy call was cancelled, none is left hanging.
    assert sum(policy.cancelled.values()) == 8 and policy.hanging == 0
    # Cancelled surplus episodes are not results.
    assert all(t.finish_reason is not FinishReason.CANCELLED for t in result.trajectories)
    assert len(result.trajectories) == 8


async def test_surplus_never_started_when_the_group_completes_first() -> None:
    # One slot: members start one at a time, the first two finish, the other two never start.
    sink = GroupSink()
    plugin = E.plugin(E.AsyncProbe, max_instances=1)
    async with Runtime(
        config(max_concurrent_episodes=1), registry=registry(plugin), sinks=[sink]
    ) as rt:
        result = await rt.run(
            Workload(env="probe", tasks=[0], samples=1, group_size=2, oversample=2),
            policy=SamplePolicy(),
        )
    assert [sorted(t.sample for t in g) for g in sink.groups] == [[0, 1]]
    assert result.rollout.surplus_cancelled == 2


async def test_zero_variance_groups_are_dropped_and_counted() -> None:
    # Task 0: every sample succeeds (rewards all 1): dropped. Task 1: sample 0 fails.
    sink = GroupSink()
    policy = SamplePolicy(good=lambda req: req.task_id == 0 or req.sample != 0)
    plugin = E.plugin(E.AsyncProbe, max_instances=8)
    async with Runtime(config(), registry=registry(plugin), sinks=[sink]) as rt:
        result = await rt.run(
            Workload(env="probe", tasks=[0, 1], group_size=3, drop_zero_variance=True, max_turns=4),
            policy=policy,
        )
    assert [g[0].task_id for g in sink.groups] == [1]
    assert sorted(t.reward for t in sink.groups[0]) == [0.0, 1.0, 1.0]
    assert result.rollout.groups_zero_variance == 1
    assert result.rollout.groups_kept == 1
    assert [t.task_id for t in result.trajectories] == [1, 1, 1]


async def test_a_cancelled_run_writes_no_partial_group(tmp_path) -> None:
    # Sample 1 of every group hangs: no group completes; cancelling the run must not leak
    # the finished sample 0 of any group into the sink.
    path = tmp_path / "t.jsonl"
    policy = SamplePolicy(hang=lambda req: req.sample == 1)
    plugin = E.plugin(E.AsyncProbe, max_instances=8)
    async with Runtime(config(), registry=registry(plugin), sinks=[JsonlSink(path)]) as rt:
        handle = await rt.submit(
            Workload(env="probe", tasks=[0, 1, 2], group_size=2), policy=policy
        )
        while policy.hanging < 3:
            await anyio.sleep(0.001)  # readiness poll: every group's sample 1 is in flight
        handle.cancel()
        result = await handle.wait()
    assert list(read_jsonl(path)) == []
    assert result.trajectories == []
    assert result.rollout.groups_incomplete == 3
    assert policy.hanging == 0


async def test_groups_through_the_jsonl_sink_round_trip(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    plugin = E.plugin(E.AsyncProbe, max_instances=4)
    async with Runtime(config(), registry=registry(plugin), sinks=[JsonlSink(path)]) as rt:
        await rt.run(Workload(env="probe", tasks=[0, 1], group_size=2), policy=SamplePolicy())
    back = list(read_jsonl(path))
    assert Counter(t.group_id for t in back) == {
        back[0].group_id: 2,
        next(t.group_id for t in back if t.group_id != back[0].group_id): 2,
    }
    assert all(t.group_size == 2 for t in back)


def test_group_options_need_group_size() -> None:
    with pytest.raises(ConfigError, match="group_size"):
        Workload(env="probe", oversample=2)
    with pytest.raises(ConfigError, match="group_size"):
        Workload(env="probe", drop_zero_variance=True)


async def test_a_grouped_workload_cannot_be_filtered() -> None:
    plugin = E.plugin(E.AsyncProbe)
    async with Runtime(config(), registry=registry(plugin)) as rt:
        with pytest.raises(ConfigError, match="group_size"):
            await rt.submit(Workload(env="probe", tasks=[0], group_size=2), only=lambda job: True)


async def test_oversampling_aborts_the_surplus_request_on_the_sglang_server(tmp_path) -> None:
    # Through the real SGLang client and the SGLang stand-in: the first /generate hangs on
    # the server; its episode is the surplus once the other one finishes, and cancelling
    # it sends /abort_request with that episode's rid.
    pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2")
    from gymux.policies.sglang.policy import SGLangPolicy
    from gymux.policies.tokens import ChatTokenizer

    from doubles.sglang_double import SGLangDouble, build_tiny_tokenizer

    tok = ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path / "tok"))
    answer = tok.encode("Thought: go.\nAction: go")
    assert tok.eos_id is not None
    double = SGLangDouble(lambda ids: [*answer, tok.eos_id], decode=tok.decode, eos_id=tok.eos_id)
    await double.start()
    try:
        double.fail_next("hang")
        sink = GroupSink()
        plugin = E.plugin(E.AsyncProbe, max_instances=4)
        policy = SGLangPolicy(double.url, tokenizer=tok)
        async with Runtime(config(), registry=registry(plugin), sinks=[sink]) as rt:
            result = await rt.run(
                Workload(env="probe", tasks=[0], group_size=1, oversample=1, max_turns=1),
                policy=policy,
            )
            (group,) = sink.groups
            (kept,) = group
            with anyio.fail_after(20):
                while not double.stats.aborted_rids:
                    await anyio.sleep(0.001)  # readiness poll: the abort reaches the server
        # rids are gymux-<run>-<episode key>-<n>: the aborted one is the surplus episode's
        # (never answered), not the kept one's.
        (aborted,) = double.stats.aborted_rids
        answered = {rid.split("-")[2] for rid in double.stats.rids}
        assert len(answered) == 1 and aborted.split("-")[2] not in answered
        assert result.rollout.surplus_cancelled == 1
        assert kept.finish_reason is FinishReason.MAX_TURNS and len(kept.turns) == 1
        assert policy.aborts_sent >= 1
    finally:
        await double.stop()
