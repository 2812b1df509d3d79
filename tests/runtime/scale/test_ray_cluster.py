"""gymux on a real 3-node Ray cluster (a head and two worker nodes with their own
resources), inside a network namespace with only ``lo`` up: exact results against the
embedded runtime, a node SIGKILLed mid-run, Ctrl-C, and ``gymux run --ray``.

The cluster comes up once (``cluster_scenario.py`` runs every scenario in one namespace);
the tests then check what each scenario left behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gymux import Runtime, RuntimeConfig, Workload
from gymux.env_plugins.registry import default_registry
from gymux.eval.run import read_store
from gymux.scheduler import plan_jobs
from gymux.trajectory import Trajectory

from doubles.netns import run_in_namespaces

# The cluster's start-up and the four scenarios take about a minute on 2 idle cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

SCENARIO = Path(__file__).with_name("cluster_scenario.py")
RUN_ID = "ray-test"


@pytest.fixture(scope="module")
def cluster_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ray")
    run_in_namespaces(
        [sys.executable, str(SCENARIO), str(out), RUN_ID],
        out,
        what="cluster scenario",
        modules={"ray": "ray is not installed (extra 'ray')"},
    )
    return out


def _result(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / f"{name}.json").read_text())


def _view(t: Trajectory) -> tuple[Any, ...]:
    """What must match exactly: ids, the dialogue, the actions, the outcome."""
    return (
        t.episode_id,
        t.split,
        t.policy,
        msgspec.to_builtins(t.messages),
        [(turn.action, turn.reward, turn.done) for turn in t.turns],
        t.reward,
        t.success,
        t.finish_reason,
        t.invalid_actions,
        t.group_id,
        t.group_size,
    )


async def _embedded(workload: Workload, run_id: str) -> list[Trajectory]:
    async with Runtime(RuntimeConfig(max_concurrent_episodes=6)) as rt:
        handle = await rt.submit(workload, run_id=run_id)
        return (await handle.wait()).trajectories


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "workload"),
    [
        ("maze", Workload(env="maze", tasks="test", samples=2, policy="oracle")),
        ("textcraft", Workload(env="textcraft", tasks="test", limit=30, policy="oracle")),
        # RL groups stay whole: each reaches the store as one group, as in the embedded run.
        ("groups", Workload(env="maze", tasks="test", limit=9, group_size=3, policy="oracle")),
    ],
)
async def test_cluster_results_equal_the_embedded_runtime(
    cluster_out: Path, name: str, workload: Workload
) -> None:
    result = _result(cluster_out, name)
    # Every node hosted a worker: 3 workers on 3 nodes (1 CPU each).
    assert result["stats"]["workers"] == 3
    assert result["stats"]["nodes"] == 3
    stored = read_store(cluster_out / name)
    expected = await _embedded(workload, f"{RUN_ID}-{name}")
    key = lambda t: (t.env_id, t.task_id, t.sample)  # noqa: E731
    assert sorted(map(_view, stored), key=str) == sorted(map(_view, expected), key=str)
    assert sorted(map(key, stored)) == sorted(map(key, expected))
    assert len({t.episode_id for t in stored}) == len(stored)
    summary = result["summary"]
    assert summary["episodes"] == len(expected)
    assert summary["turns"] == sum(len(t.turns) for t in expected)
    assert summary["successes"] == sum(t.success for t in expected)


def test_a_node_killed_mid_run_costs_only_its_in_flight_episodes(cluster_out: Path) -> None:
    result = _result(cluster_out, "kill")
    assert result["killed"], "node_b's processes were not killed"
    stats = result["stats"]
    assert stats["workers"] == 3
    assert stats["workers_lost"] == 1
    assert stats["chunks_rerun"] >= 1
    stored = read_store(cluster_out / "kill")
    ids = [t.episode_id for t in stored]
    workload = Workload(env="textcraft", tasks="test", samples=3, policy="oracle")
    plugin = default_registry().get_runnable("textcraft")
    planned = {job.episode_id for job in plan_jobs(f"{RUN_ID}-kill", workload, plugin)}
    assert len(ids) == len(set(ids)) == 300
    assert set(ids) == planned
    assert {t.finish_reason.value for t in stored} == {"done"}
    assert result["summary"]["episodes"] == 300


def test_ctrl_c_stops_every_nodes_work(cluster_out: Path) -> None:
    result = _result(cluster_out, "interrupt")
    assert result["rc"] == 130, result["output"]
    assert "interrupted" in result["output"]
    # Every worker was stopped: the cluster's three CPUs are free again.
    assert result["free_cpus"] == 3.0
    stored = read_store(cluster_out / "interrupt")
    ids = [t.episode_id for t in stored]
    assert 5 <= len(ids) < 2000
    assert len(ids) == len(set(ids))
    finished = [
        json.loads(line)
        for line in (cluster_out / "interrupt-events.jsonl").read_text().splitlines()
        if '"episode_finished"' in line
    ]
    assert {e["episode_id"] for e in finished} <= set(ids)


def test_gymux_run_ray_writes_every_episode_once(cluster_out: Path) -> None:
    text = (cluster_out / "cli.txt").read_text()
    assert text.startswith("rc=0"), text
    stored = read_store(cluster_out / "cli")
    assert sorted(t.task_id for t in stored) == list(range(26))
    assert all(t.success for t in stored)
