"""Limits that bind: the policy's own caps follow the run's episode cap (``--concurrency``)
unless set, and the run summary names the limit its episodes waited for."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from gymux.cli.main import main
from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.registry import Registry
from gymux.messages import PolicyResponse
from gymux.metrics import ENV_INSTANCES, EPISODE_SLOTS, POLICY_REQUESTS
from gymux.policies.base import SimplePolicy, react
from gymux.policies.registry import TOKENS_PER_EPISODE, follow_concurrency
from gymux.runtime import Runtime

from doubles import envs as E
from doubles.openai_double import OpenAIDouble

pytestmark = pytest.mark.usefixtures("fresh_structlog")


# -- the policy's caps follow the episode cap ------------------------------------------------


def test_follow_concurrency_raises_unset_caps_and_keeps_set_ones() -> None:
    assert follow_concurrency("openai", {}, 1000) == {"max_concurrency": 1000}
    assert follow_concurrency("openai", {}, 8) == {"max_concurrency": 64}  # never below default
    assert follow_concurrency("openai", {"max_concurrency": 5}, 1000) == {"max_concurrency": 5}
    assert follow_concurrency("sglang", {}, 2000) == {
        "max_requests_per_server": 2000,
        "connections_per_server": 2000,
        "max_tokens_per_server": 2000 * TOKENS_PER_EPISODE,
    }
    assert follow_concurrency("vllm", {"connections_per_server": 0}, 2000) == {
        "max_requests_per_server": 2000,
        "connections_per_server": 0,  # 0: no limit, kept
        "max_tokens_per_server": 2000 * TOKENS_PER_EPISODE,
    }
    # The token budget never falls below its default (4M tokens) for a small run.
    assert follow_concurrency("sglang", {}, 8)["max_tokens_per_server"] == 4_000_000
    assert (
        follow_concurrency("sglang", {"max_tokens_per_server": 10}, 2000)["max_tokens_per_server"]
        == 10
    )
    assert follow_concurrency("oracle", {}, 2000) == {}
    assert follow_concurrency("openai", {}, None) == {}


class _ServedDouble:
    """An :class:`OpenAIDouble` on its own event loop in a thread, so that the CLI can run
    in-process (``main([...])``, which starts its own loop) against it."""

    def __init__(self, double: OpenAIDouble) -> None:
        self.double = double
        self._ready = threading.Event()
        self._stop: anyio.Event | None = None
        self._token: Any = None
        self._thread = threading.Thread(target=anyio.run, args=(self._serve,), daemon=True)

    async def _serve(self) -> None:
        self._stop = anyio.Event()
        self._token = anyio.lowlevel.current_token()
        async with self.double:
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> OpenAIDouble:
        self._thread.start()
        assert self._ready.wait(60), "the double did not start"
        return self.double

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        anyio.from_thread.run_sync(self._stop.set, token=self._token)
        self._thread.join(60)


@pytest.fixture
def gated() -> Iterator[Any]:
    """A double whose answers wait until ``gate_at(n)`` requests were in flight at once
    (then all pass), or 20 s: a cap below ``n`` then shows in ``max_seen_concurrency``."""
    opened = threading.Event()
    state = {"threshold": 1}

    async def reply(messages: list[dict[str, Any]]) -> str:
        if double.in_flight >= state["threshold"]:
            opened.set()
        with anyio.move_on_after(20):
            while not opened.is_set():
                await anyio.sleep(0.01)
        return "Thought: up.\nAction: move up"

    double = OpenAIDouble(reply=reply)
    with _ServedDouble(double) as served:
        served.gate_at = lambda n: state.update(threshold=n)  # type: ignore[attr-defined]
        yield served


def _run_openai(url: str, out: Path, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    args = ["run", "--env", "maze", "--tasks", "test", "--samples", "4", "--max-turns", "2"]
    args += ["--policy", "openai", "--base-url", url, "--model", "m", "--out", str(out)]
    args += ["--progress", "off", *extra]
    rc = main(args)
    return rc, json.loads((out / "summary.json").read_text())


def test_openai_request_cap_follows_concurrency(gated: Any, tmp_path: Path) -> None:
    """104 episodes, --concurrency 100: 100 requests reach the server at once (the policy's
    own default of 64 used to cap it), and the summary says what each limit cost."""
    gated.gate_at(100)
    rc, (row,) = _run_openai(gated.base_url, tmp_path / "o", "--concurrency", "100")
    assert rc == 0
    assert gated.max_seen_concurrency >= 100
    assert row["waits"][POLICY_REQUESTS]["cap"] == 100
    assert row["waits"][EPISODE_SLOTS]["cap"] == 100
    assert row["bound_by"] != POLICY_REQUESTS


def test_an_explicit_request_cap_wins_and_the_summary_names_it(
    gated: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gated.gate_at(1)  # no gate: answers at once
    out = tmp_path / "o"
    rc, (row,) = _run_openai(gated.base_url, out, "--concurrency", "100", "--max-concurrency", "2")
    assert rc == 0
    assert 1 <= gated.max_seen_concurrency <= 2
    assert row["waits"][POLICY_REQUESTS]["cap"] == 2
    assert row["waits"][POLICY_REQUESTS]["wait_s"] > 0
    assert row["bound_by"] == POLICY_REQUESTS
    stdout = capsys.readouterr().out
    assert f"bound by: {POLICY_REQUESTS} (cap 2)" in stdout


# -- the summary names the limit that bound ------------------------------------------------


class _Slow(SimplePolicy):
    """Each turn takes a while, so the runtime samples the run many times."""

    name = "slow"

    async def act(self, request: Any) -> PolicyResponse:
        await anyio.sleep(0.05)
        return PolicyResponse(text=react("go", "go"))


async def _summary(config: RuntimeConfig, episodes: int) -> Any:
    """The summary of ``episodes`` healthy episodes of the probe env."""
    registry = Registry(entry_points_group=None)
    registry.register(E.plugin(E.AsyncProbe, max_instances=50))
    tasks, samples = list(E.HEALTHY[:1]), episodes
    async with Runtime(config, registry=registry) as rt:
        result = await rt.run(Workload(env="probe", tasks=tasks, samples=samples), policy=_Slow())
    assert result.summary.episodes == episodes
    assert result.summary.finish_reasons == {"done": episodes}
    return result.summary


@pytest.mark.anyio
async def test_the_env_instance_cap_is_named_when_it_binds() -> None:
    config = RuntimeConfig(max_concurrent_episodes=20, env_instances={"probe": 2})
    summary = await _summary(config, 20)
    waits = {w.limit: w for w in summary.waits}
    assert waits[ENV_INSTANCES].cap == 2 and waits[ENV_INSTANCES].wait_s > 0
    assert waits[EPISODE_SLOTS].wait_s == 0  # 20 slots for 20 episodes
    assert summary.bound_by == ENV_INSTANCES


@pytest.mark.anyio
async def test_the_episode_cap_is_named_when_it_binds() -> None:
    summary = await _summary(RuntimeConfig(max_concurrent_episodes=2), 12)
    waits = {w.limit: w for w in summary.waits}
    assert waits[EPISODE_SLOTS].cap == 2 and waits[EPISODE_SLOTS].wait_s > 0
    assert waits[ENV_INSTANCES].wait_s == 0
    assert summary.bound_by == EPISODE_SLOTS


@pytest.mark.anyio
async def test_nothing_is_named_when_nothing_waited() -> None:
    summary = await _summary(RuntimeConfig(max_concurrent_episodes=50), 3)
    assert all(w.wait_s == 0 for w in summary.waits)
    assert summary.bound_by is None


@pytest.mark.anyio
async def test_the_limit_sampler_ends_with_its_run() -> None:
    """The sampler sleeps between samples and the run's end cancels it: no task of it is
    left once the run is over, while the runtime stays open."""
    registry = Registry(entry_points_group=None)
    registry.register(E.plugin(E.AsyncProbe, max_instances=4))
    async with Runtime(RuntimeConfig(max_concurrent_episodes=4), registry=registry) as rt:
        handle = await rt.submit(
            Workload(env="probe", tasks=list(E.HEALTHY[:1]), samples=4), policy=_Slow()
        )
        assert f"limits of {handle.run_id}" in {t.name for t in anyio.get_running_tasks()}
        result = await handle.wait()
        with anyio.fail_after(30):  # a bound for a loaded machine, not a speed target
            while f"limits of {handle.run_id}" in {t.name for t in anyio.get_running_tasks()}:
                await anyio.wait_all_tasks_blocked()
        assert handle._sampler is not None and handle._sampler.cancel_called
    assert result.summary.episodes == 4


# -- env instance caps follow an explicit --concurrency ----------------------------------------


def _probe_registry(max_instances: int) -> Registry:
    registry = Registry(entry_points_group=None)
    registry.register(E.plugin(E.AsyncProbe, max_instances=max_instances))
    return registry


def _instance_cap(out: Path) -> int:
    (row,) = json.loads((out / "summary.json").read_text())
    return int(row["waits"][ENV_INSTANCES]["cap"])


def test_a_plugins_instance_cap_follows_an_explicit_concurrency(
    tmp_path: Path, fresh_structlog: None
) -> None:
    args = ["run", "--env", "probe", "--tasks", "0", "--samples", "12", "--progress", "off"]
    code = main(
        [*args, "--concurrency", "8", "-o", str(tmp_path / "a")], registry=_probe_registry(2)
    )
    assert code == 0 and _instance_cap(tmp_path / "a") == 8  # raised to --concurrency
    # Without --concurrency the plugin's own cap holds; a cap above it is never lowered.
    code = main([*args, "-o", str(tmp_path / "b")], registry=_probe_registry(2))
    assert code == 0 and _instance_cap(tmp_path / "b") == 2
    code = main(
        [*args, "--concurrency", "8", "-o", str(tmp_path / "c")], registry=_probe_registry(50)
    )
    assert code == 0 and _instance_cap(tmp_path / "c") == 50


def test_an_explicit_env_instances_setting_wins(tmp_path: Path, fresh_structlog: None) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        '[runtime]\nenv_instances = { probe = 3 }\n[[workloads]]\nenv = "probe"\ntasks = [0]\n'
        "samples = 6\n"
    )
    code = main(
        ["run", "--config", str(config), "--concurrency", "8", "-o", str(tmp_path / "o"),
         "--progress", "off"],
        registry=_probe_registry(2),
    )  # fmt: skip
    assert code == 0 and _instance_cap(tmp_path / "o") == 3
