"""``gymux serve-env lmrl-wordle`` answers AgentGym's Wordle client as AgentGym's server does.

The requests are those of AgentGym's ``WordleEnvClient`` (``agentenv/agentenv/envs/
lmrlgym.py``): ``POST /wordle/create``, ``GET /wordle/filtered_vocab?id=`` (in its
constructor), ``POST /wordle/reset {"seed", "id"}``, ``POST /wordle/step {"action", "id"}``
with the text after ``Action:``. The replies must be exactly those recorded from AgentGym's
own server code (``tests/env_plugins/builtin/lmrl_wordle/upstream_games.json``; how it was
recorded: the README next to it), JSON types included.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gymux.env_plugins.agentgym.server import EnvServer, default_dialect
from gymux.env_plugins.registry import default_registry

pytestmark = pytest.mark.anyio

TABLE = Path(__file__).parents[1] / "builtin" / "lmrl_wordle" / "upstream_games.json"
UPSTREAM: dict[str, Any] = json.loads(TABLE.read_text())
VOCAB: list[str] = UPSTREAM["vocab"]
START = {"observation": "Let's start Wordle!"}


@asynccontextmanager
async def served() -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """``gymux serve-env lmrl-wordle`` on a free loopback port; yields the ``/wordle`` base."""
    server = EnvServer(default_registry().get("lmrl-wordle"))
    async with server:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/wordle"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                yield session, url
        finally:
            await runner.cleanup()


async def post(session: aiohttp.ClientSession, url: str, body: Any = None) -> Any:
    kwargs: dict[str, Any] = {} if body is None else {"json": body}
    async with session.post(url, **kwargs) as resp:
        assert resp.status == 200, await resp.text()  # AgentGym's client asserts 200
        return await resp.json()


async def get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _same(got: Any, want: Any) -> bool:
    """Equal as JSON, number types included (upstream: int rewards, 0.0 for a bad word)."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_same(got[k], want[k]) for k in want)
        )
    return type(got) is type(want) and got == want


def test_lmrl_wordle_is_served_in_the_wordle_family() -> None:
    server = EnvServer(default_registry().get("lmrl-wordle"))
    assert default_dialect(server.plugin).name == "wordle"
    assert server.dialect.prefix == "/wordle" and server.lmrl_game and server.upstream.wordle
    # gymux's own wordle is served its own way (its game, LMRL-Gym's format)
    assert not EnvServer(default_registry().get("wordle")).lmrl_game


async def test_every_recorded_game_is_answered_as_agentgyms_server_answers_it() -> None:
    """One server, the games in recording order: the instance ids are upstream's too."""
    async with served() as (s, base):
        for k, game in enumerate(UPSTREAM["games"]):
            where = f"game {k} (seed {game['seed']}, {game['script']})"
            assert await post(s, f"{base}/create") == {"id": k}, where
            assert await get(s, f"{base}/filtered_vocab?id={k}") == VOCAB, where
            reset = await post(s, f"{base}/reset", {"seed": game["seed"], "id": k})
            assert reset == {"id": k, **START}, where
            assert await get(s, f"{base}/observation?id={k}") == START["observation"]
            for step in game["steps"]:
                reply = await post(s, f"{base}/step", {"action": step["action"], "id": k})
                assert _same(reply, step["reply"]), (where, step, reply)
                if "filtered" not in step:
                    continue  # the step after the end: upstream answered the error
                filtered = step["filtered"]
                want = filtered if isinstance(filtered, dict) else [VOCAB[i] for i in filtered]
                assert await get(s, f"{base}/filtered_vocab?id={k}") == want, (where, step)
                observation = await get(s, f"{base}/observation?id={k}")
                if reply["done"]:
                    assert observation == filtered  # the same "has finished" error
                else:
                    assert observation == reply["observation"]


async def test_reset_takes_data_idx_too_and_any_seed() -> None:
    game = next(g for g in UPSTREAM["games"] if g["script"] == "first_candidate")
    async with served() as (s, base):
        await post(s, f"{base}/create")
        await post(s, f"{base}/create")
        assert await post(s, f"{base}/reset", {"data_idx": game["seed"], "id": 0}) == {
            "id": 0,
            **START,
        }
        step = game["steps"][0]
        assert await post(s, f"{base}/step", {"action": step["action"], "id": 0}) == step["reply"]
        # a seed past the splits is still a game, as on AgentGym's server
        assert (await post(s, f"{base}/reset", {"seed": 10**9, "id": 1}))["id"] == 1
        reply = await post(s, f"{base}/step", {"action": "p a n i c", "id": 1})
        assert reply["done"] is False and len(reply["observation"].split()) == 5


async def test_a_reset_mid_game_starts_over_with_the_whole_vocabulary() -> None:
    game = next(g for g in UPSTREAM["games"] if g["script"] == "valid" and g["seed"] == 1)
    async with served() as (s, base):
        await post(s, f"{base}/create")
        for _ in range(2):
            await post(s, f"{base}/reset", {"seed": 1, "id": 0})
            assert await get(s, f"{base}/filtered_vocab?id=0") == VOCAB
            first = game["steps"][0]
            assert (
                await post(s, f"{base}/step", {"action": first["action"], "id": 0})
                == (first["reply"])
            )
