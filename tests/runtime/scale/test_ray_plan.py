"""The Ray driver's planning, without a cluster: the cap split, chunks of whole tasks,
resources per env, and the lazy import of Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gymux import Workload
from gymux.env_plugins.registry import default_registry
from gymux.scale import DEFAULT_ENV_RESOURCES, EnvResources, RayExecutor
from gymux.scale.ray_executor import _chunks, _merge, split_cap
from gymux.scheduler import plan_jobs

from doubles.procs import clean_env


@pytest.mark.parametrize(("cap", "workers"), [(256, 3), (6, 3), (5, 8), (1, 4), (7, 7)])
def test_the_workers_shares_sum_to_the_global_cap(cap: int, workers: int) -> None:
    shares = split_cap(cap, workers)
    assert sum(shares) == cap
    assert len(shares) == min(cap, workers)
    assert min(shares) >= 1
    assert max(shares) - min(shares) <= 1


def test_chunks_are_whole_tasks_covering_the_plan_once() -> None:
    plugin = default_registry().get_runnable("maze")
    workload = Workload(env="maze", tasks="test", samples=3, limit=10, policy="oracle")
    chunks, total, split = _chunks(plugin, "r", workload, None, 4)
    assert total == 30
    assert split == "test"
    assert [len(c.task_ids) for c in chunks] == [4, 4, 2]
    assert [c.episodes for c in chunks] == [12, 12, 6]
    ids = [tid for c in chunks for tid in c.task_ids]
    planned = plan_jobs("r", workload, plugin)
    assert ids == list(dict.fromkeys(job.task_id for job in planned))
    assert all(c.keys is None for c in chunks)


def test_chunks_keep_only_the_episodes_asked_for() -> None:
    plugin = default_registry().get_runnable("maze")
    workload = Workload(env="maze", tasks="test", samples=2, limit=5, policy="oracle")
    chunks, total, _ = _chunks(plugin, "r", workload, lambda job: job.sample == 1, 2)
    assert total == 5
    assert [c.keys for c in chunks] == [[(0, 1), (1, 1)], [(2, 1), (3, 1)], [(4, 1)]]


def test_grouped_workloads_keep_groups_in_one_chunk() -> None:
    plugin = default_registry().get_runnable("maze")
    workload = Workload(env="maze", tasks="test", samples=2, limit=3, group_size=4)
    chunks, total, _ = _chunks(plugin, "r", workload, None, 1)
    assert total == 3 * 2 * 4
    # One task per chunk: both of its groups, whole.
    assert [c.episodes for c in chunks] == [8, 8, 8]


def test_env_resources_default_and_override() -> None:
    executor = RayExecutor(resources={"maze": EnvResources(num_cpus=0.5, resources={"x": 1})})
    assert executor.resources_for("maze").num_cpus == 0.5
    assert executor.resources_for("sciworld") == DEFAULT_ENV_RESOURCES["sciworld"]
    assert executor.resources_for("sciworld").memory_mb > 0
    assert executor.resources_for("wordle") == EnvResources()


def test_importing_gymux_scale_does_not_import_ray() -> None:
    code = "import sys, gymux.scale; print('ray' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True
    )
    assert proc.stdout.strip() == "False"


def test_merged_chunks_keep_every_task_and_key_in_order() -> None:
    plugin = default_registry().get_runnable("maze")
    workload = Workload(env="maze", tasks="test", samples=2, limit=7, policy="oracle")
    chunks, _, _ = _chunks(plugin, "r", workload, lambda job: job.sample == 0, 1)
    merged = _merge(chunks, 3)
    assert [c.index for c in merged] == [0, 1, 2]
    assert [c.task_ids for c in merged] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [c.episodes for c in merged] == [3, 3, 1]
    assert [k for c in merged for k in c.keys or []] == [(t, 0) for t in range(7)]


def test_gymux_run_ray_refuses_agentgym_bridges() -> None:
    # Ray workers find envs through the installed entry points; a bridge registered in the
    # driver's registry would not exist there.
    cmd = [sys.executable, "-m", "gymux", "run", "--ray", "--env", "agentgym/webshop"]
    cmd += ["--agentgym-url", "http://127.0.0.1:9"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--ray cannot run --env agentgym/webshop" in proc.stderr


def test_runtime_with_an_executor_is_the_executors_runtime(tmp_path) -> None:
    """``Runtime(config, executor=RayExecutor(...))`` gives a RayRuntime with the same
    arguments (nothing starts until it is entered); without one, the in-process runtime."""
    from gymux.config import RuntimeConfig
    from gymux.runtime import Runtime
    from gymux.scale import RayRuntime

    config = RuntimeConfig(max_concurrent_episodes=7)
    executor = RayExecutor(address="127.0.0.1:1", workers=2)
    rt = Runtime(config, executor=executor, out=tmp_path / "o")
    assert isinstance(rt, RayRuntime)
    assert rt.executor is executor and rt.config is config and rt.out == tmp_path / "o"
    plain = Runtime(config)
    assert type(plain) is Runtime and plain.config is config
