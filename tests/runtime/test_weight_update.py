"""``Runtime.update_policy``: weight updates without stopping the world (abort and resample,
wait, continue), weight versions per turn, and the server loaders of
``gymux.policies.weights`` against stand-ins of SGLang's and vLLM's control routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from gymux.config import ConfigError, Workload
from gymux.env_plugins.registry import Registry
from gymux.errors import PolicyError
from gymux.events import Event, TurnFinished
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy, react
from gymux.policies.protocol import WeightLoader, WeightUpdatable
from gymux.policies.weights import SGLangWeights, VLLMWeights, WeightUpdateError, loader_for
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason, TokenData, pack_int32, pack_uint8

from doubles import envs as E
from doubles.sglang_weights import WeightsDouble

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

RESPONSE_TOKENS = 3
PROMPT_TOKENS = 2


def registry(plugin) -> Registry:
    return E.registry_of(plugin)


config = E.rl_config


async def until(predicate, what: str) -> None:
    """Wait (yielding to the loop) until ``predicate()``; a readiness poll, not a delay."""
    with anyio.fail_after(20):
        while not predicate():
            await anyio.sleep(0.001)


class HeldPolicy(SimplePolicy):
    """Says "go"; while held, calls wait for :meth:`release`. Keeps a token record per
    episode (``PROMPT_TOKENS`` zeros, then ``RESPONSE_TOKENS`` sevens per turn)."""

    name = "held"

    def __init__(self, *, report: list[tuple[int, str]] | None = None) -> None:
        self._released = anyio.Event()
        self.held = False
        self.inflight = 0
        self.calls = 0
        self.cancelled = 0
        self.report = report
        self._tokens: dict[str, tuple[list[int], list[int]]] = {}

    def hold(self) -> None:
        self.held = True
        self._released = anyio.Event()

    def release(self) -> None:
        self.held = False
        self._released.set()

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        self.calls += 1
        self.inflight += 1
        try:
            if self.held:
                await self._released.wait()
        except BaseException:
            self.cancelled += 1
            raise
        finally:
            self.inflight -= 1
        ids, mask = self._tokens.setdefault(request.episode_id, ([], []))
        ids += [0] * PROMPT_TOKENS + [7] * RESPONSE_TOKENS
        mask += [0] * PROMPT_TOKENS + [1] * RESPONSE_TOKENS
        return PolicyResponse(
            text=react("go", "go"),
            token_ids=[7] * RESPONSE_TOKENS,
            completion_tokens=RESPONSE_TOKENS,
            weight_versions=self.report,
        )

    def finish_episode(self, episode_id: str) -> TokenData | None:
        ids, mask = self._tokens.pop(episode_id, ([], []))
        return TokenData(ids=pack_int32(ids), loss_mask=pack_uint8(mask)) if ids else None


class RecordingLoader:
    """A :class:`WeightLoader` that records its calls; ``load`` may block or fail."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail
        self.loading = False
        self.proceed: anyio.Event | None = None

    async def pause(self, mode: str) -> None:
        self.calls.append(("pause", mode))

    async def load(self, source: str, *, version: str) -> None:
        self.calls.append(("load", source, version))
        self.loading = True
        try:
            if self.proceed is not None:
                await self.proceed.wait()
        finally:
            self.loading = False
        if self.fail:
            raise WeightUpdateError("cannot load")

    async def resume(self) -> None:
        self.calls.append(("resume",))


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    plugin = E.plugin(E.AsyncProbe, max_instances=8)
    async with Runtime(config(max_concurrent_episodes=8), registry=registry(plugin)) as runtime:
        yield runtime


async def test_abort_mode_aborts_and_resamples_in_flight_calls(rt: Runtime) -> None:
    policy = HeldPolicy()
    policy.hold()
    handle = await rt.submit(Workload(env="probe", tasks=[0, 1, 2, 3]), policy=policy)
    await until(lambda: policy.inflight == 4, "4 calls in flight")
    report = await rt.update_policy(policy, version="v1", mode="abort")
    assert report.inflight == 4 and report.step == 1 and report.version == "v1"
    assert policy.cancelled == 4
    policy.release()
    result = await handle.wait()
    assert len(result.trajectories) == 4
    for t in result.trajectories:
        assert t.finish_reason is FinishReason.DONE and len(t.turns) == 3
        first = t.turns[0]
        assert first.abort == "weight_update"
        assert all(turn.weight_version == "v1" for turn in t.turns)
        assert all(turn.abort is None for turn in t.turns[1:])
        assert t.policy_step == 1
        assert first.weight_versions is None
    assert policy.calls == 4 + 12  # 4 aborted + 3 turns x 4 episodes


async def test_wait_mode_lets_calls_finish_and_pauses_new_ones(rt: Runtime) -> None:
    policy = HeldPolicy()
    policy.hold()
    loader = RecordingLoader()
    loader.proceed = anyio.Event()
    turns_while_paused = 0
    gate = None

    def count(event: Event) -> None:
        nonlocal turns_while_paused
        if isinstance(event, TurnFinished) and gate is not None and gate.paused:
            turns_while_paused += 1

    rt.subscribe(count)
    handle = await rt.submit(Workload(env="probe", tasks=[0, 1, 2, 3]), policy=policy)
    gate = rt.gate(policy)
    await until(lambda: policy.inflight == 4, "4 calls in flight")
    reports = []

    async def update() -> None:
        reports.append(
            await rt.update_policy(policy, version="v1", source="/ckpt", mode="wait", loader=loader)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(update)
        await until(lambda: gate.paused, "the gate paused")
        assert policy.cancelled == 0 and not reports
        calls_before = policy.calls
        policy.release()
        # The held calls finish, their episodes step their envs, and their next calls wait
        # at the paused gate: the policy sees no new call until the update is done.
        await until(lambda: loader.loading, "the loader loading")
        await until(lambda: turns_while_paused == 4, "env steps while paused")
        assert policy.calls == calls_before
        assert gate.paused
        loader.proceed.set()
    assert reports[0].inflight == 4
    assert loader.calls == [("pause", "wait"), ("load", "/ckpt", "v1"), ("resume",)]
    result = await handle.wait()
    for t in result.trajectories:
        assert t.finish_reason is FinishReason.DONE
        assert [turn.weight_version for turn in t.turns] == ["0", "v1", "v1"]
        assert t.policy_step == 0  # the oldest turn's step
        assert t.turns[1].queue_s > 0  # waited at the paused gate


async def test_continue_mode_records_both_versions_per_token_range(rt: Runtime) -> None:
    policy = HeldPolicy()
    policy.hold()
    handle = await rt.submit(Workload(env="probe", tasks=[0, 1]), policy=policy)
    await until(lambda: policy.inflight == 2, "2 calls in flight")
    # continue: neither aborted nor awaited, the update returns with the calls in flight.
    report = await rt.update_policy(policy, version="v1", mode="continue")
    assert report.inflight == 2 and policy.inflight == 2 and policy.cancelled == 0
    policy.release()
    result = await handle.wait()
    for t in result.trajectories:
        first, second = t.turns[0], t.turns[1]
        # spans come from the loss mask: turn i's response is [5i+2, 5i+5)
        assert first.span == (2, 5) and second.span == (7, 10)
        # The policy did not say where the switch happened: the whole turn is attributed
        # to the old version, the new one starts after it.
        assert first.weight_versions == [(2, "0"), (5, "v1")]
        assert first.weight_version == "0" and second.weight_version == "v1"
        assert second.weight_versions is None
        assert t.policy_step == 0


async def test_continue_mode_keeps_the_split_the_policy_reports(rt: Runtime) -> None:
    policy = HeldPolicy(report=[(0, "0"), (1, "v1")])
    result = await rt.run(Workload(env="probe", tasks=[0]), policy=policy)
    (t,) = result.trajectories
    # offsets relative to the response move into the episode's token record
    assert [turn.weight_versions for turn in t.turns] == [
        [(2, "0"), (3, "v1")],
        [(7, "0"), (8, "v1")],
        [(12, "0"), (13, "v1")],
    ]


class UpdatablePolicy(SimplePolicy):
    """Loads weights itself (like the hf policy) and reports its version on answers."""

    name = "updatable"

    def __init__(self) -> None:
        self.weight_version = "base"
        self.loaded: list[tuple[object, str]] = []

    async def update_weights(self, source: object, *, version: str) -> None:
        self.loaded.append((source, version))
        self.weight_version = version

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        return PolicyResponse(text=react("go", "go"), weight_version=self.weight_version)


async def test_a_policy_with_update_weights_loads_them_itself(rt: Runtime) -> None:
    policy = UpdatablePolicy()
    assert isinstance(policy, WeightUpdatable)
    first = await rt.run(Workload(env="probe", tasks=[0]), policy=policy)
    assert rt.gate(policy).label == "base"
    report = await rt.update_policy("updatable", version=7, source={"w": 1})
    assert policy.loaded == [({"w": 1}, "7")]
    assert report.step == 7 and rt.gate(policy).step == 7
    second = await rt.run(Workload(env="probe", tasks=[0]), policy=policy)
    assert {turn.weight_version for turn in first.trajectories[0].turns} == {"base"}
    assert {turn.weight_version for turn in second.trajectories[0].turns} == {"7"}
    assert second.trajectories[0].policy_step == 7
    with pytest.raises(ConfigError, match="not above"):
        await rt.update_policy(policy, version=3)
    report = await rt.update_policy(policy, version="next")
    assert report.step == 8  # a label steps by one


async def test_a_failed_load_resumes_dispatch_and_keeps_the_version(rt: Runtime) -> None:
    policy = HeldPolicy()
    await rt.run(Workload(env="probe", tasks=[0]), policy=policy)
    loader = RecordingLoader(fail=True)
    with pytest.raises(WeightUpdateError):
        await rt.update_policy(policy, version="v1", source="/ckpt", loader=loader)
    assert loader.calls == [("pause", "abort"), ("load", "/ckpt", "v1"), ("resume",)]
    gate = rt.gate(policy)
    assert not gate.paused and gate.label == "0" and gate.step == 0
    result = await rt.run(Workload(env="probe", tasks=[1]), policy=policy)
    assert result.trajectories[0].finish_reason is FinishReason.DONE


async def test_update_policy_names_what_is_wrong(rt: Runtime) -> None:
    policy = HeldPolicy()
    with pytest.raises(PolicyError, match="not hosted"):
        await rt.update_policy(policy, version="v1")
    await rt.run(Workload(env="probe", tasks=[0]), policy=policy)
    with pytest.raises(PolicyError, match="no hosted policies named 'nope'"):
        await rt.update_policy("nope", version="v1")
    with pytest.raises(PolicyError, match="cannot load weights"):
        await rt.update_policy(policy, version="v1", source="/ckpt")
    with pytest.raises(ConfigError, match="mode"):
        await rt.update_policy(policy, version="v1", mode="later")  # type: ignore[arg-type]


# -- the server loaders ------------------------------------------------------------------


@pytest.fixture
async def sglang_servers() -> AsyncIterator[list[WeightsDouble]]:
    servers = [WeightsDouble("sglang"), WeightsDouble("sglang"), WeightsDouble("sglang")]
    for s in servers:
        await s.start()
    yield servers
    for s in servers:
        await s.stop()


async def test_sglang_loader_pauses_aborts_loads_flushes_and_continues(
    sglang_servers: list[WeightsDouble],
) -> None:
    a, b, worker = sglang_servers
    loader = SGLangWeights([a.url, b.url], worker_urls=[worker.url])
    assert isinstance(loader, WeightLoader)
    await loader.pause("abort")
    assert a.paused and b.paused and not worker.paused
    await loader.load("/ckpt/step-1", version="v1")
    await loader.resume()
    for server in (a, b):
        assert [path for path, _ in server.calls] == [
            "/pause_generation",
            "/abort_request",
            "/update_weights_from_disk",
            "/flush_cache",
            "/continue_generation",
        ]
        assert server.calls[0][1] == {"mode": "abort"}
        assert server.calls[1][1] == {"rid": "", "abort_all": True}
        assert server.calls[2][1]["model_path"] == "/ckpt/step-1"
        assert server.version == "v1" and server.loaded == ["/ckpt/step-1"]
        assert not server.paused
    # the abort is fanned out to the workers behind the router
    assert [path for path, _ in worker.calls] == ["/abort_request"]
    for mode, sglang_mode in (("wait", "in_place"), ("continue", "retract")):
        await loader.pause(mode)  # type: ignore[arg-type]
        assert a.pause_modes[-1] == sglang_mode
    assert [path for path, _ in worker.calls] == ["/abort_request"]  # only abort fans out


async def test_sglang_loader_reports_a_refused_load(sglang_servers: list[WeightsDouble]) -> None:
    a, b, _ = sglang_servers
    b.fail("/update_weights_from_disk")
    loader = SGLangWeights([a.url, b.url])
    with pytest.raises(WeightUpdateError, match="cannot load"):
        await loader.load("/ckpt", version="v2")
    a.fail("/flush_cache")  # a refused flush is logged, continue_generation still goes out
    await loader.resume()
    assert not a.paused and not b.paused


async def test_runtime_updates_sglang_servers_through_the_loader(
    rt: Runtime, sglang_servers: list[WeightsDouble]
) -> None:
    server = sglang_servers[0]
    policy = HeldPolicy()
    await rt.run(Workload(env="probe", tasks=[0]), policy=policy)
    report = await rt.update_policy(
        policy, version="v9", source="/ckpt/9", mode="continue", loader=SGLangWeights([server.url])
    )
    assert report.version == "v9"
    assert server.version == "v9" and server.pause_modes == ["retract"]
    assert not server.paused


async def test_vllm_loader_uses_the_dev_mode_routes() -> None:
    server = WeightsDouble("vllm")
    await server.start()
    try:
        loader = VLLMWeights([server.url])
        await loader.pause("wait")
        assert server.paused
        await loader.load("/ckpt/step-2", version="v2")
        await loader.resume()
        assert [path for path, _ in server.calls] == [
            "/pause",
            "/collective_rpc",
            "/update_weight_version",
            "/reset_prefix_cache",
            "/resume",
        ]
        assert server.calls[0][1] == {"mode": "wait"}
        assert server.calls[1][1] == {
            "method": "reload_weights",
            "kwargs": {"weights_path": "/ckpt/step-2"},
        }
        assert server.version == "v2" and not server.paused
        server.fail("/collective_rpc")
        with pytest.raises(WeightUpdateError, match="HTTP 500"):
            await loader.load("/ckpt/step-3", version="v3")
        assert server.version == "v2"
    finally:
        await server.stop()


def test_loader_for_finds_the_servers_of_sglang_and_vllm_policies() -> None:
    class Server:
        def __init__(self, url: str) -> None:
            self.url = url

    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name
            self.servers = [Server("http://127.0.0.1:1/"), Server("http://127.0.0.1:2")]
            self.worker_urls = ["http://127.0.0.1:3"]

    sglang = loader_for(Fake("sglang"))
    assert isinstance(sglang, SGLangWeights)
    assert sglang.urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert sglang.worker_urls == ["http://127.0.0.1:3"]
    assert isinstance(loader_for(Fake("vllm")), VLLMWeights)
    assert loader_for(Fake("hf")) is None
    assert loader_for(HeldPolicy()) is None


async def test_the_http_control_endpoint_updates_a_hosted_policy(rt: Runtime) -> None:
    import aiohttp

    policy = UpdatablePolicy()
    await rt.run(Workload(env="probe", tasks=[0]), policy=policy)
    url = await rt.serve_control()
    assert url.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        body = {"policy": "updatable", "version": "v2", "source": "/ckpt/2", "mode": "wait"}
        async with session.post(url + "/update_policy", json=body) as resp:
            assert resp.status == 200
            report = await resp.json()
        assert report["version"] == "v2" and report["step"] == 1 and report["mode"] == "wait"
        assert policy.loaded == [("/ckpt/2", "v2")]
        async with session.get(url + "/policies") as resp:
            listing = await resp.json()
        assert listing == [
            {"name": "updatable", "version": "v2", "step": 1, "paused": False, "inflight": 0}
        ]
        async with session.post(
            url + "/update_policy", json={"policy": "nope", "version": 1}
        ) as resp:
            assert resp.status == 409
            assert "nope" in (await resp.json())["error"]
        async with session.post(url + "/update_policy", json={"version": 1}) as resp:
            assert resp.status == 400
        async with session.post(
            url + "/update_policy", json={"policy": "updatable", "version": 1}
        ) as resp:
            assert resp.status == 400  # step 1 is not above the current step 1
    result = await rt.run(Workload(env="probe", tasks=[0]), policy=policy)
    assert {turn.weight_version for turn in result.trajectories[0].turns} == {"v2"}
