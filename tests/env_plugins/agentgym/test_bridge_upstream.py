"""The bridge against stand-ins of AgentGym's own servers (``tests/doubles/agentgym_upstream``):

* SQLGym's server hands out at most 8 instances, then ids still in use: ``gymux run`` at
  ``--concurrency 32`` gives the same episodes as at 1, never asks for a ninth instance, and
  a shared instance (another client's, or a cap set past the server's) ends the episode with
  ``env_error`` instead of a score;
* ``--policy random`` works on babyai, textcraft and wordle (admissible actions parsed from
  their observations), and a run whose every episode failed exits 1;
* every family with ``/close`` (babyai, textcraft, sciworld) is left with 0 live instances;
* babyai's solved levels succeed under gymux's rule and not under AgentGym's ``reward == 1``,
  and the eval report names both rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web

from gymux.cli.main import main
from gymux.env_plugins.agentgym.client import AgentGymEnv, AgentGymError, ServerLedger
from gymux.env_plugins.agentgym.dialects import DIALECTS, actions_in, extract_action
from gymux.env_plugins.protocol import Task
from gymux.env_plugins.registry import Registry
from gymux.eval.metrics import compute_metrics, success_rules_for
from gymux.eval.report import markdown_table, report_notes
from gymux.eval.run import register_suite_bridges
from gymux.eval.suite import parse_suite
from gymux.trajectory import Trajectory

from doubles.agentgym_upstream import (
    BabyAI,
    Lmrlgym,
    SciWorld,
    SqlGym,
    TextCraft,
    Upstream,
    serving,
    serving_thread,
)

pytestmark = pytest.mark.anyio


def _run(url: str, env: str, tasks: str, out: Path, *extra: str) -> int:
    return main(
        [
            *("run", "--env", f"agentgym/{env}", "--agentgym-url", url, "--tasks", tasks),
            *("--policy", "random", "--out", str(out), "--format", "jsonl"),
            *("--progress", "off", *extra),
        ],
        registry=Registry(entry_points_group=None),
    )


def _episodes(out: Path) -> list[Trajectory]:
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    return sorted(
        (msgspec.json.decode(line, type=Trajectory) for line in lines), key=lambda t: t.task_id
    )


def _signature(t: Trajectory) -> tuple[Any, ...]:
    return (
        t.task_id,
        [m.content for m in t.messages],
        [(turn.action, turn.reward, turn.done) for turn in t.turns],
        t.reward,
        t.success,
        t.finish_reason.value,
    )


# --------------------------------------------------------------------------------------
# item 7: sqlgym's 8 instances
# --------------------------------------------------------------------------------------


def test_sqlgym_at_concurrency_32_equals_concurrency_1(
    tmp_path: Path, fresh_structlog: None
) -> None:
    runs: dict[int, list[tuple[Any, ...]]] = {}
    for concurrency in (1, 32):
        server = SqlGym()
        out = tmp_path / f"c{concurrency}"
        with serving_thread(server) as url:
            code = _run(url, "sqlgym", "0-79", out, "--concurrency", str(concurrency))
        assert code == 0
        episodes = _episodes(out)
        assert len(episodes) == 80
        assert {t.finish_reason.value for t in episodes} == {"done"}
        # Each step ran on its own item: the state names the episode's table.
        for t in episodes:
            assert t.turns[0].action and "sqlite_master" in t.turns[0].action
            assert f"t{t.task_id}" in t.messages[-1].content or t.turns[0].done
        runs[concurrency] = [_signature(t) for t in episodes]
        # The bridge never asked the server for more instances than it holds apart.
        assert server.creates <= 8, server.creates
        steps = [b for m, p, b in server.calls if p == "/step"]
        assert len(steps) == 80
    assert runs[1] == runs[32]


def test_agentgym_max_instances_bounds_the_servers_instances(
    tmp_path: Path, fresh_structlog: None
) -> None:
    """`--agentgym-max-instances N`: the bridge never holds more than N of the server's
    instances, whatever the concurrency; every episode still runs (they wait their turn)."""
    server = SqlGym()
    out = tmp_path / "out"
    with serving_thread(server) as url:
        code = _run(
            url, "sqlgym", "0-23", out, "--concurrency", "16", "--agentgym-max-instances", "3"
        )
    assert code == 0
    episodes = _episodes(out)
    assert len(episodes) == 24 and {t.finish_reason.value for t in episodes} == {"done"}
    assert server.creates <= 3, server.creates


async def test_an_id_in_use_is_never_scored() -> None:
    """A cap set past the server's: the ninth ``/create`` answers an id another episode
    holds; that episode fails with AgentGymError, the holder's episode is untouched."""
    server = SqlGym()
    async with serving(server) as url:
        ledger = ServerLedger(None)  # no cap: as if max_instances were set past 8
        envs = [AgentGymEnv("sqlgym", url, DIALECTS["sqlgym"], ledger=ledger) for _ in range(9)]
        try:
            for i, env in enumerate(envs[:8]):
                await env.reset(Task(id=i))
            with pytest.raises(AgentGymError, match="another episode of this run still holds"):
                await envs[8].reset(Task(id=8))
            assert envs[8].instance_id is None  # it holds nothing, closes nothing
            result = await envs[0].step("SELECT 0")
            assert result.reward == 1.0 and result.observation.text == "[(0,)]"
        finally:
            for env in envs:
                await env.close()


async def test_another_clients_reset_is_caught_after_the_step() -> None:
    """Two clients that do not share a ledger (two processes) get one sqlgym instance: the
    step ran on the other client's item, and ``GET /observation`` shows it."""
    server = SqlGym(sz=1)
    async with serving(server) as url:
        mine = AgentGymEnv("sqlgym", url, DIALECTS["sqlgym"])
        theirs = AgentGymEnv("sqlgym", url, DIALECTS["sqlgym"])
        try:
            await mine.reset(Task(id=3))
            await theirs.reset(Task(id=5))  # the server answers the same id: sz = 1
            assert mine.instance_id == theirs.instance_id
            with pytest.raises(AgentGymError, match="shared with another client"):
                await mine.step("SELECT 3")
        finally:
            await mine.close()
            await theirs.close()


async def test_another_clients_reset_before_ours_is_observed_is_caught() -> None:
    """Another client resets the instance between our reset and our first look at it."""
    server = SqlGym(meddle=500)
    async with serving(server) as url:
        env = AgentGymEnv("sqlgym", url, DIALECTS["sqlgym"])
        try:
            with pytest.raises(AgentGymError, match="another task after the reset"):
                await env.reset(Task(id=4))
        finally:
            await env.close()
        assert "/step" not in server.paths()


async def test_an_idle_holder_loses_its_instance_and_its_next_step_fails() -> None:
    """Episodes that end without ``done`` (max_turns) keep their instance; past the grace
    period a waiting reset takes one whose holder has no call in flight. Should that
    holder's episode go on, its step fails unscored instead of running on a taken instance."""
    server = SqlGym(sz=2)
    async with serving(server) as url:
        ledger = ServerLedger(2)
        envs = [
            AgentGymEnv("sqlgym", url, DIALECTS["sqlgym"], ledger=ledger, idle_grace_s=0.05)
            for _ in range(3)
        ]
        try:
            await envs[0].reset(Task(id=1))
            await envs[1].reset(Task(id=2))
            with anyio.fail_after(10):
                await envs[2].reset(Task(id=3))  # waits out the grace, then takes one
            losers = [e for e in envs[:2] if e.lost is not None]
            assert len(losers) == 1 and losers[0].lost == envs[2].instance_id
            with pytest.raises(AgentGymError, match="went to another episode"):
                await losers[0].step("SELECT 1")
            assert (await envs[2].step("SELECT 3")).reward == 1.0
            assert server.creates == 2
        finally:
            for env in envs:
                await env.close()


class _TextCraftAnsweringAnotherId(TextCraft):
    def reset(self, body: Any) -> Any:
        return {**super().reset(body), "id": body["id"] + 1}


async def test_a_reset_reply_naming_another_instance_is_caught() -> None:
    server = _TextCraftAnsweringAnotherId()
    async with serving(server) as url:
        env = AgentGymEnv("textcraft", url, DIALECTS["textcraft"])
        try:
            with pytest.raises(AgentGymError, match="/reset answered for instance 1"):
                await env.reset(Task(id=0))
        finally:
            await env.close()
    assert server.live == 0


def test_admissible_actions_are_parsed_per_family() -> None:
    babyai = 'Your goal: x\nYou see a wall.\nAvailable actions: ["turn left", "go to red ball 1"]'
    assert actions_in(DIALECTS["babyai"], babyai) == ["turn left", "go to red ball 1"]
    assert actions_in(DIALECTS["babyai"], "no list here") is None
    craft = (
        "Crafting commands:\ncraft 1 golden carrot using 8 gold nugget, 1 carrot\n"
        "craft 9 gold nugget using 1 gold ingot\n\nGoal: craft golden carrot."
    )
    assert actions_in(DIALECTS["textcraft"], craft) == [
        "craft 1 golden carrot using 8 gold nugget, 1 carrot",
        "craft 9 gold nugget using 1 gold ingot",
        "get 8 gold nugget",
        "get 1 carrot",
        "get 1 gold ingot",
        "inventory",
    ]
    assert actions_in(DIALECTS["maze"], babyai) is None  # maze names its actions elsewhere
    # textcraft's client keeps [A-Za-z0-9, ] only (envs/textcraft.py), as the bridge does.
    said = "Thought: t\nAction: craft 1 golden_carrot using 8 gold nugget, 1 carrot."
    assert extract_action(DIALECTS["textcraft"], said) == (
        "craft 1 goldencarrot using 8 gold nugget, 1 carrot"
    )


async def test_past_the_cap_episodes_wait_and_adopt_free_instances() -> None:
    """20 episodes at once on an 8-instance server: 8 instances, every episode scored on
    its own item."""
    server = SqlGym()
    async with serving(server) as url:
        ledger = ServerLedger(8)
        envs = [AgentGymEnv("sqlgym", url, DIALECTS["sqlgym"], ledger=ledger) for _ in range(20)]
        rewards: dict[int, float] = {}

        async def episode(i: int) -> None:
            env = envs[i]
            obs = await env.reset(Task(id=100 + i))
            assert obs.text.startswith(f"Q{100 + i}:")
            result = await env.step(f"SELECT {100 + i}")
            rewards[i] = result.reward

        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(20):
                        tg.start_soon(episode, i)
        finally:
            for env in envs:
                await env.close()
        assert rewards == {i: 1.0 for i in range(20)}
        assert server.creates == 8 and server.live == 8


# --------------------------------------------------------------------------------------
# item 8: --policy random through the bridge; exit 1 when every episode failed
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "make", "tasks"),
    [("babyai", BabyAI, "0-5"), ("textcraft", TextCraft, "0-5"), ("wordle", Lmrlgym, "0-5")],
)
def test_random_policy_through_the_bridge(
    env: str, make: type[Upstream], tasks: str, tmp_path: Path, fresh_structlog: None
) -> None:
    server = make()
    with serving_thread(server) as url:
        code = _run(url, env, tasks, tmp_path / "run", "--max-turns", "6")
    assert code == 0
    episodes = _episodes(tmp_path / "run")
    assert len(episodes) == 6
    assert {t.finish_reason.value for t in episodes} <= {"done", "max_turns"}
    actions = [turn.action for t in episodes for turn in t.turns]
    assert actions and all(actions)
    steps = [b["action"] for m, p, b in server.calls if p.endswith("/step")]
    assert sorted(steps) == sorted(actions)  # every chosen action reached the server as sent
    if env == "babyai":
        assert set(steps) <= {"turn left", "turn right", "move forward", "go to red ball 1"}
    if env == "textcraft":
        assert all(a == "inventory" or a.startswith(("craft ", "get ")) for a in steps), steps
    if env == "wordle":
        assert all(len(a) == 9 and a.replace(" ", "").isalpha() for a in steps), steps


def test_every_episode_failed_exits_nonzero(tmp_path: Path, fresh_structlog: None) -> None:
    """maze game 30 does not exist: LMRL-Gym answers HTTP 200 ``{"error"}`` to every reset."""
    server = Lmrlgym()
    with serving_thread(server) as url:
        code = _run(url, "maze", "30-32", tmp_path / "run")
    assert code == 1
    episodes = _episodes(tmp_path / "run")
    assert {t.finish_reason.value for t in episodes} == {"env_error"}
    assert all(t.error and "is not valid" in t.error for t in episodes)


# --------------------------------------------------------------------------------------
# item 9: /close exists for babyai, textcraft, sciworld: 0 live instances after a run
# --------------------------------------------------------------------------------------


def test_dialect_table_closes_where_upstream_does() -> None:
    for name in ("babyai", "textcraft", "sciworld", "webshop", "webarena", "searchqa"):
        assert DIALECTS[name].has_close, name
    for name in ("maze", "wordle", "sqlgym", "alfworld", "tool"):
        assert not DIALECTS[name].has_close, name
    assert DIALECTS["babyai"].has_observation


@pytest.mark.parametrize(
    ("env", "make"), [("babyai", BabyAI), ("textcraft", TextCraft), ("sciworld", SciWorld)]
)
def test_a_bridged_run_leaves_no_live_instance(
    env: str, make: type[Upstream], tmp_path: Path, fresh_structlog: None
) -> None:
    server = make()
    with serving_thread(server) as url:
        code = main(
            [
                *("run", "--env", f"agentgym/{env}", "--agentgym-url", url, "--tasks", "0-11"),
                *("--policy", "random", "--out", str(tmp_path / "run"), "--format", "jsonl"),
                *("--progress", "off", "--max-turns", "3", "--concurrency", "4"),
            ],
            registry=Registry(entry_points_group=None),
        )
        assert code in (0, 1)  # sciworld's random actions may all fail: not the point here
    assert server.creates >= 1
    assert server.live == 0, f"{server.live} of {server.creates} instances left open"
    assert server.closes == server.creates


async def test_lmrlgym_has_no_close_and_its_instances_are_reused() -> None:
    """LMRL-Gym keeps every instance for the server's life: the bridge reuses one per
    client for all its episodes instead of creating one per episode."""
    server = Lmrlgym()
    async with serving(server) as url:
        env = AgentGymEnv("maze", url, DIALECTS["maze"])
        for game in range(3):
            await env.reset(Task(id=game))
            await env.step("move right")
            assert (await env.step("move right")).done
        await env.close()
    assert server.creates == 1 and server.paths()[-1] == "/maze/close"


async def test_a_reset_cancelled_mid_create_still_frees_the_instance() -> None:
    """SciWorld's ``/create`` starts a JVM and may outlast the caller's deadline: the
    bridge still learns the id and closes it, so nothing is left on the server."""
    created, closed = [], []
    answer = anyio.Event()
    got_create = anyio.Event()

    async def create(request: web.Request) -> web.Response:
        got_create.set()
        await answer.wait()
        created.append(7)
        return web.json_response({"id": 7})

    async def close(request: web.Request) -> web.Response:
        closed.append((await request.json())["id"])
        return web.json_response(True)

    app = web.Application()
    app.router.add_post("/create", create)
    app.router.add_post("/close", close)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    env = AgentGymEnv("sciworld", url, DIALECTS["sciworld"], timeout_s=30)
    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:

                async def reset() -> None:
                    with anyio.CancelScope() as scope:
                        cancel["scope"] = scope
                        await env.reset(Task(id=0))

                cancel: dict[str, anyio.CancelScope] = {}
                tg.start_soon(reset)
                await got_create.wait()
                cancel["scope"].cancel()  # the caller gives up while /create is running
                answer.set()
        assert env.instance_id == 7  # learned despite the cancellation
        await env.close()
        assert created == [7] and closed == [7]
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------------------
# item 10: success rules side by side
# --------------------------------------------------------------------------------------


def test_babyai_success_rules_side_by_side(tmp_path: Path, fresh_structlog: None) -> None:
    server = BabyAI()
    suite = parse_suite(
        'name = "rules"\n[[envs]]\nid = "agentgym/babyai"\nurl = "http://127.0.0.1:9"\ntasks = 4\n'
    )
    registry = Registry(entry_points_group=None)
    register_suite_bridges(suite, registry)
    assert registry.get("agentgym/babyai").spec.success.threshold == 0.05
    with serving_thread(server) as url:
        code = main(
            [
                *("run", "--env", "agentgym/babyai", "--agentgym-url", url, "--tasks", "0-3"),
                *("--policy", "random", "--out", str(tmp_path / "run"), "--format", "jsonl"),
                *("--progress", "off", "--max-turns", "20"),
            ],
            registry=Registry(entry_points_group=None),
        )
    assert code == 0
    episodes = _episodes(tmp_path / "run")
    solved = [t for t in episodes if t.finish_reason.value == "done"]
    assert solved and all(0 < t.reward < 1 and t.success for t in solved)
    rules = success_rules_for(["agentgym/babyai"], registry)
    assert rules == {"agentgym/babyai": "reward >= 0.05"}
    metrics = compute_metrics(episodes, envs=["agentgym/babyai"], success_rules=rules)
    row = metrics.envs[0]
    assert row.successes == len(solved) and row.agentgym_successes == 0
    assert row.success_rule == "reward >= 0.05" and row.agentgym_success_rate == 0.0
    table = "\n".join(markdown_table(metrics))
    assert "AgentGym success" in table and "(reward >= 0.05)" in table
    notes = " ".join(report_notes(metrics))
    assert "agentgym/babyai: reward >= 0.05" in notes and "reward == 1" in notes
