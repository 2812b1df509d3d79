"""Workloads are planned lazily: a run of tens of millions of episodes starts at once in
bounded memory (run in a child process with a capped address space), and counts are
computed, not materialised."""

from __future__ import annotations

import pytest

from gymux.config import MAX_EPISODES, ConfigError, Workload
from gymux.env_plugins.builtin.maze.env import TEST_IDS
from gymux.env_plugins.builtin.maze.plugin import plugin as maze
from gymux.scheduler import plan_jobs

from doubles.procs import last_json, run_python

_CHILD = r"""
import json, resource, sys
import anyio
from gymux.config import RuntimeConfig, Workload
from gymux.runtime import Runtime

async def main():
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    limit = vm + 1024 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    async with Runtime(RuntimeConfig(max_concurrent_episodes=8)) as rt:
        handle = await rt.submit(Workload(env="maze", samples=1_000_000))
        only = await rt.submit(
            Workload(env="maze", samples=1_000_000), only=lambda job: job.sample < 2
        )
        seen = 0
        async for _ in handle:
            seen += 1
            if seen == 20:
                handle.cancel()
                only.cancel()
                break
        await handle._done.wait()
        await only._done.wait()
    print(json.dumps({"planned": handle.planned, "only": only.planned, "seen": seen}))

anyio.run(main)
"""


def test_a_huge_workload_runs_in_bounded_memory() -> None:
    result = last_json(run_python(_CHILD))
    assert result == {"planned": len(TEST_IDS) * 1_000_000, "only": len(TEST_IDS) * 2, "seen": 20}


def test_plan_is_lazy_and_counted() -> None:
    plan = plan_jobs("r", Workload(env="maze", samples=3, limit=4), maze)
    assert len(plan) == 12
    jobs = list(plan)
    assert [(j.task_id, j.sample) for j in jobs] == [
        (t, s) for t in list(TEST_IDS)[:4] for s in range(3)
    ]
    assert list(plan) == jobs  # iterable again, same episodes
    big = plan_jobs("r", Workload(env="maze", samples=1_000_000), maze)
    assert len(big) == len(TEST_IDS) * 1_000_000
    first = next(iter(big))
    assert (first.task_id, first.sample, first.episode_id) == (
        TEST_IDS[0],
        0,
        f"r:maze:{TEST_IDS[0]}:0",
    )


def test_more_than_the_cap_is_refused() -> None:
    ids = list(range(200))
    from gymux.env_plugins.builtin.wordle.plugin import plugin as wordle

    train = list(wordle.spec.splits["train"].ids)[:200]
    with pytest.raises(ConfigError) as info:
        plan_jobs("r", Workload(env="wordle", tasks=train, samples=1_000_000), wordle)
    assert f"at most {MAX_EPISODES:,}" in str(info.value) and "200,000,000 episodes" in str(
        info.value
    )
    assert len(ids) == 200
