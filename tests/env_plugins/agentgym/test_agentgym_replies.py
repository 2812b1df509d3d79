"""AgentGym server replies decoded per dialect (:mod:`gymux.env_plugins.agentgym.replies`):
well-formed replies of every shape, and malformed ones as :class:`AgentGymError`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from aiohttp import web

from gymux.env_plugins.agentgym.client import AgentGymEnv, AgentGymError
from gymux.env_plugins.agentgym.dialects import DIALECTS
from gymux.env_plugins.agentgym.replies import decode, reply_types
from gymux.env_plugins.protocol import Task

pytestmark = pytest.mark.anyio


def test_step_replies_use_each_dialects_keys() -> None:
    webarena = reply_types(DIALECTS["webarena"]).step
    reply = decode(
        {"observation": "page", "reward": "0.5", "terminated": False, "truncated": True},
        webarena,
        env="webarena",
        route="/step",
    )
    assert (reply.observation, reply.reward, reply.done0, reply.done1) == ("page", 0.5, 0, 1)
    sciworld = reply_types(DIALECTS["sciworld"]).step
    reply = decode({"observation": "o", "score": 100, "done": True}, sciworld, env="s", route="/s")
    assert (reply.reward, reply.plain_reward, reply.info) == (100.0, msgspec.UNSET, None)


def test_reset_reply_joins_the_dialects_observation_parts() -> None:
    kind = reply_types(DIALECTS["sciworld"]).reset
    reply = decode(
        {"task_description": "Boil water.", "observation": "You are in the kitchen."},
        kind,
        env="sciworld",
        route="/reset",
    )
    assert reply.text() == "Boil water.\nYou are in the kitchen."
    assert reply_types(DIALECTS["sciworld"]) is reply_types(DIALECTS["sciworld"])


@pytest.mark.parametrize(
    ("dialect", "route", "payload", "field"),
    [
        ("gymux", "step", {"reward": 1.0}, "observation"),
        ("gymux", "step", {"observation": "o", "reward": "lots"}, "reward"),
        ("gymux", "step", {"observation": "o", "info": [1]}, "info"),
        ("gymux", "step", ["o", 1.0], "object"),
        ("gymux", "create", {"idx": 3}, "id"),
        ("webshop", "create", "three", "int"),
        ("sqlgym", "reset", [], "length"),
        ("gymux", "reset", {"available_actions": []}, "observation"),
    ],
)
def test_malformed_replies_are_agentgym_errors(
    dialect: str, route: str, payload: Any, field: str
) -> None:
    kind = getattr(reply_types(DIALECTS[dialect]), route)
    with pytest.raises(AgentGymError, match=rf"agentgym/x: /{route} answered .*{field}"):
        decode(payload, kind, env="x", route=f"/{route}")


@asynccontextmanager
async def answering(step_reply: Any) -> AsyncIterator[str]:
    async def create(request: web.Request) -> web.Response:
        return web.json_response({"id": 0})

    async def reset(request: web.Request) -> web.Response:
        return web.json_response({"observation": "start", "available_actions": ["go"]})

    async def step(request: web.Request) -> web.Response:
        return web.json_response(step_reply)

    app = web.Application()
    app.add_routes([web.post("/create", create), web.post("/reset", reset)])
    app.add_routes([web.post("/step", step), web.post("/close", create)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_malformed_step_reply_ends_the_episode_with_a_clear_error() -> None:
    async with answering({"state": "o", "reward": 1.0, "done": True}) as url:
        env = AgentGymEnv("probe", url, DIALECTS["gymux"], timeout_s=5)
        try:
            obs = await env.reset(Task(id=0))
            assert (obs.text, obs.admissible_actions) == ("start", ["go"])
            with pytest.raises(AgentGymError, match=r"/step answered .*observation") as info:
                await env.step("go")
            assert info.value.route == "/step"
        finally:
            await env.close()
