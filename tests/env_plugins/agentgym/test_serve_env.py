"""``gymux serve-env``'s server: status codes, locking, timeouts, reaping, health, shutdown.

A small probe env (async, in this file) is served on a real loopback socket and driven
with raw HTTP requests, as AgentGym's clients and RL trainers would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web

from gymux.env_plugins.agentgym.server import EnvServer
from gymux.env_plugins.protocol import (
    EnvPlugin,
    EnvSpec,
    Observation,
    StepResult,
    Task,
    splits_from,
)
from gymux.env_plugins.registry import default_registry
from gymux.errors import EnvError, TransientEnvError

pytestmark = pytest.mark.anyio


class Stats:
    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.closed = 0


class ProbeEnv:
    """``win`` ends the episode, ``boom``/``flaky`` fail, ``sleep S`` and ``hang`` take time."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    async def reset(self, task: Task) -> Observation:
        return Observation(text=f"task {task.id}", admissible_actions=["wait", "win"])

    async def step(self, action: str) -> StepResult:
        if action == "boom":
            raise EnvError("kaput")
        if action == "flaky":
            raise TransientEnvError("try later")
        if action == "hang":
            await anyio.sleep(60)
        if action.startswith("sleep "):
            self.stats.active += 1
            self.stats.peak = max(self.stats.peak, self.stats.active)
            try:
                await anyio.sleep(float(action.split()[1]))
            finally:
                self.stats.active -= 1
        if action == "win":
            return StepResult(observation=Observation(text="won"), reward=1.0, done=True)
        return StepResult(
            observation=Observation(text=f"did {action}", admissible_actions=["win"]),
            reward=0.0,
            done=False,
            info={"n": 1},
        )

    async def close(self) -> None:
        self.stats.closed += 1


def probe_plugin(stats: Stats) -> EnvPlugin:
    spec = EnvSpec(
        id="probe",
        version="1",
        instruction="Probe.",
        action_format="Action: <word>",
        splits=splits_from({"test": range(3)}),
        max_turns=5,
    )
    return EnvPlugin(spec, lambda: ProbeEnv(stats))


@asynccontextmanager
async def served(server: EnvServer) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """Serve ``server`` (entered: its reaper runs) on a free loopback port."""
    async with server:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
                yield session, url
        finally:
            await runner.cleanup()


async def call(
    session: aiohttp.ClientSession, url: str, path: str, body: Any = None, *, raw: bytes = b""
) -> tuple[int, Any]:
    if path.startswith("GET "):
        async with session.get(url + path[4:]) as resp:
            return resp.status, await resp.json()
    data = raw or msgspec.json.encode(body)
    headers = {"Content-Type": "application/json"}
    async with session.post(url + path, data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_status_codes_and_error_bodies() -> None:
    stats = Stats()
    async with served(EnvServer(probe_plugin(stats))) as (s, url):
        assert await call(s, url, "/create", {}) == (200, {"id": 0})
        status, body = await call(s, url, "/reset", raw=b"{not json")
        assert status == 400 and "not JSON" in body["error"]
        assert (await call(s, url, "/reset", {"data_idx": 0}))[0] == 400
        status, body = await call(s, url, "/reset", {"id": 99, "data_idx": 0})
        assert status == 404 and "instance 99 does not exist" in body["error"]
        status, body = await call(s, url, "/reset", {"id": 0, "data_idx": 999})
        assert status == 422 and "no task 999" in body["error"]
        status, body = await call(s, url, "/step", {"id": 0, "action": "wait"})
        assert status == 409 and "not been reset" in body["error"]

        status, body = await call(s, url, "/reset", {"id": 0, "data_idx": 2})
        assert status == 200
        assert body["observation"] == "task 2" and body["available_actions"] == ["wait", "win"]
        assert (await call(s, url, "/step", {"id": 0}))[0] == 400
        # An empty action is a step like any other (AgentGym's clients send "" when the
        # output has no Action:): the env judges it. A non-string is a bad value.
        status, body = await call(s, url, "/step", {"id": 0, "action": "  "})
        assert (status, body["observation"], body["done"]) == (200, "did ", False)
        assert (await call(s, url, "/step", {"id": 0, "action": 5}))[0] == 422

        # An unparseable action with an Action: marker is a corrective observation.
        status, body = await call(s, url, "/step", {"id": 0, "action": "Thought: hm\nAction:"})
        assert status == 200 and body["observation"].startswith("Invalid action:")
        assert body["done"] is False and body["info"]["invalid_action"]
        # The full ReAct output and the bare action are both accepted.
        status, body = await call(s, url, "/step", {"id": 0, "action": "Thought: x\nAction: wait"})
        assert (status, body["observation"], body["info"]) == (200, "did wait", {"n": 1})
        status, body = await call(s, url, "/step", {"id": 0, "action": "wait"})
        assert status == 200 and body["available_actions"] == ["win"]

        status, body = await call(s, url, "/step", {"id": 0, "action": "boom"})
        assert status == 500 and body == {"error": "env error: kaput"}
        status, body = await call(s, url, "/step", {"id": 0, "action": "flaky"})
        assert status == 503 and "try later" in body["error"]

        status, body = await call(s, url, "/step", {"id": 0, "action": "win"})
        assert (status, body["reward"], body["done"]) == (200, 1.0, True)
        status, body = await call(s, url, "/step", {"id": 0, "action": "wait"})
        assert status == 409 and "is over" in body["error"]

        assert await call(s, url, "GET /observation?id=0") == (200, "won")
        assert (await call(s, url, "GET /observation"))[0] == 400
        assert (await call(s, url, "GET /observation?id=x"))[0] == 400
        assert (await call(s, url, "GET /observation?id=7"))[0] == 404
        assert await call(s, url, "/close", {"id": 0}) == (200, {"closed": True, "id": 0})
        assert (await call(s, url, "/close", {"id": 0}))[0] == 404
        assert (await call(s, url, "GET /nope"))[0] == 404
    assert stats.closed == 1


async def test_at_capacity_the_least_recently_used_idle_instance_makes_room() -> None:
    stats = Stats()
    async with served(EnvServer(probe_plugin(stats), max_instances=2)) as (s, url):
        assert await call(s, url, "/create") == (200, {"id": 0})
        assert await call(s, url, "/create") == (200, {"id": 1})
        await call(s, url, "/reset", {"id": 0, "data_idx": 0})  # 0 is now the more recent
        assert await call(s, url, "/create") == (200, {"id": 2})  # 1 (least recent) goes
        assert stats.closed == 1
        status, body = await call(s, url, "/reset", {"id": 1, "data_idx": 0})
        assert status == 404 and "to make room" in body["error"]
        assert (await call(s, url, "/step", {"id": 0, "action": "wait"}))[0] == 200
        assert (await call(s, url, "GET /health"))[1]["instances"] == 2


async def test_at_capacity_with_every_instance_busy_create_waits_then_503() -> None:
    stats = Stats()
    server = EnvServer(probe_plugin(stats), max_instances=1, create_wait_s=60)
    async with served(server) as (s, url):
        await call(s, url, "/create")
        await call(s, url, "/reset", {"id": 0, "data_idx": 0})
        got: dict[str, Any] = {}

        async def slow_step() -> None:
            got["step"] = await call(s, url, "/step", {"id": 0, "action": "sleep 0.5"})

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_step)
            with anyio.fail_after(10):
                while stats.active == 0:  # the step is running: the only slot is busy
                    await anyio.sleep(0.01)
            got["create"] = await call(s, url, "/create")  # waits for the step, then evicts
        assert got["step"][0] == 200  # the running call was not cut short
        assert got["create"] == (200, {"id": 1}) and stats.closed == 1

    server = EnvServer(probe_plugin(stats), max_instances=1, create_wait_s=0.2)
    async with served(server) as (s, url):
        await call(s, url, "/create")
        await call(s, url, "/reset", {"id": 0, "data_idx": 0})
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_step_of, s, url, 2.0, got)
            with anyio.fail_after(10):
                while stats.active == 0:
                    await anyio.sleep(0.01)
            status, body = await call(s, url, "/create")  # the step outlasts the wait
            assert status == 503 and "all in a call" in body["error"]
        assert got["slow"][0] == 200 and server.instances == 1


async def slow_step_of(
    s: aiohttp.ClientSession, url: str, seconds: float, got: dict[str, Any]
) -> None:
    got["slow"] = await call(s, url, "/step", {"id": 0, "action": f"sleep {seconds}"})


def test_default_cap_holds_agentgym_default_evaluator() -> None:
    """``openai_eval_multiprocessing.py`` runs 20 processes with one never-closed client
    each: every built-in env's default cap holds them."""
    registry = default_registry()
    for env_id in ("maze", "wordle", "textcraft", "babyai", "sciworld", "sqlgym"):
        assert EnvServer(registry.get(env_id)).max_instances >= 20, env_id


async def test_one_call_at_a_time_per_instance() -> None:
    stats = Stats()
    async with served(EnvServer(probe_plugin(stats))) as (s, url):
        for i in range(2):
            await call(s, url, "/create")
            await call(s, url, "/reset", {"id": i, "data_idx": 0})
        statuses: list[int] = []

        async def step(instance: int) -> None:
            statuses.append(
                (await call(s, url, "/step", {"id": instance, "action": "sleep 0.5"}))[0]
            )

        async with anyio.create_task_group() as tg:  # same instance: one runs, one is refused
            tg.start_soon(step, 0)
            await anyio.sleep(0.1)
            tg.start_soon(step, 0)
        assert sorted(statuses) == [200, 409] and stats.peak == 1

        statuses.clear()
        async with anyio.create_task_group() as tg:  # two instances run side by side
            tg.start_soon(step, 0)
            tg.start_soon(step, 1)
        assert statuses == [200, 200] and stats.peak == 2


async def test_a_call_past_the_timeout_discards_the_instance() -> None:
    stats = Stats()
    async with served(EnvServer(probe_plugin(stats), call_timeout_s=3.0)) as (s, url):
        await call(s, url, "/create")
        await call(s, url, "/reset", {"id": 0, "data_idx": 0})
        status, body = await call(s, url, "/step", {"id": 0, "action": "hang"})
        assert status == 504 and "discarded" in body["error"]
        assert (await call(s, url, "/step", {"id": 0, "action": "wait"}))[0] == 404
        assert stats.closed == 1


async def test_idle_instances_are_reaped_but_busy_ones_are_not() -> None:
    stats = Stats()
    server = EnvServer(probe_plugin(stats), idle_timeout_s=0.25)
    async with served(server) as (s, url):
        for _ in range(2):
            await call(s, url, "/create")
        await call(s, url, "/reset", {"id": 1, "data_idx": 0})
        # A call longer than the idle timeout keeps its instance.
        status, body = await call(s, url, "/step", {"id": 1, "action": "sleep 0.7"})
        assert status == 200
        with anyio.fail_after(60):
            while (await call(s, url, "GET /health"))[1]["instances"]:
                await anyio.sleep(0.05)
        status, body = await call(s, url, "/reset", {"id": 0, "data_idx": 0})
        assert status == 404 and "idle" in body["error"]
    assert stats.closed == 2


async def test_health_spec_and_shutdown_closes_everything() -> None:
    stats = Stats()
    plugin = probe_plugin(stats)
    async with served(EnvServer(plugin, max_instances=5)) as (s, url):
        for _ in range(3):
            await call(s, url, "/create")
        status, health = await call(s, url, "GET /health")
        assert status == 200
        assert health == {
            "status": "ok",
            "env": "probe",
            "version": "1",
            "dialect": "gymux",
            "instances": 3,
            "max_instances": 5,
        }
        async with s.get(url + "/spec") as resp:
            assert msgspec.json.decode(await resp.read(), type=EnvSpec) == plugin.spec
    assert stats.closed == 3  # the server's cleanup closed every instance


async def test_agentgym_lmrlgym_wire_format_for_maze() -> None:
    """What AgentGym's own MazeEnvClient sends: /maze/ routes, ``game``, the bare action."""
    server = EnvServer(default_registry().get("maze"))
    async with served(server) as (s, url):
        assert await call(s, url, "/maze/create") == (200, {"id": 0})
        status, body = await call(s, url, "/maze/reset", {"id": 0, "game": 3})
        assert (
            status == 200 and "Your current position is at position (1, 4)" in body["observation"]
        )
        status, body = await call(s, url, "/maze/step", {"id": 0, "action": "move right"})
        assert status == 200 and set(body) >= {"observation", "reward", "done"}
        assert "(1, 5)" in body["observation"] and body["done"] is False
        status, text = await call(s, url, "GET /maze/observation?id=0")
        assert status == 200 and text == body["observation"]
        assert (await call(s, url, "GET /maze/health"))[1]["dialect"] == "maze"
        assert (await call(s, url, "/reset", {"id": 0, "data_idx": 0}))[0] == 404


def test_serve_env_command_line_errors(
    capsys: pytest.CaptureFixture[str], fresh_structlog: None
) -> None:
    from gymux.cli.main import main

    assert main(["serve-env", "no-such-env", "--port", "0"]) == 2
    assert "no-such-env" in capsys.readouterr().err
    assert main(["serve-env", "maze", "--max-instances", "0"]) == 2
    assert "--max-instances must be positive" in capsys.readouterr().err
    assert main(["serve-env", "maze", "--dialect", "klingon"]) == 2
    assert main(["run", "--env", "maze", "--agentgym-url", "http://127.0.0.1:9"]) == 2
    assert "agentgym/<name>" in capsys.readouterr().err


def test_the_command_line_half_lives_in_gymux_cli() -> None:
    from gymux.cli import serve_env
    from gymux.env_plugins.agentgym import server

    # The server module is the HTTP half only: no parser, no command, no signal handling.
    assert not hasattr(server, "add_serve_env_parser")
    assert not hasattr(server, "run_serve_env")
    assert "open_signal_receiver" not in Path(server.__file__).read_text()
    assert callable(serve_env.add_parser) and callable(serve_env.run)
