"""Async backends (docs/architecture.md, "Async backends"): asyncio is the supported backend;
the engine is written against anyio only, and runs under trio too, with envs in all three
execution modes, the scripted policies and the JSONL sink. The parts that need asyncio (the
store sink, the aiohttp-based policies and the AgentGym bridge) are named in the docs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import anyio
import pytest

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.registry import Registry, default_registry
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason

from doubles import envs as E

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
BACKENDS = [
    "asyncio",
    pytest.param(
        "trio",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("trio") is None, reason="trio is not installed"
        ),
    ),
]
MODES = {"async": E.AsyncProbe, "thread": E.SyncProbe, "process": E.ProcessProbe}


@pytest.fixture(autouse=True)
def _clean_stats():
    E.Stats.reset_all()
    yield


@pytest.mark.parametrize("backend", BACKENDS)
def test_builtin_env_with_oracle_and_random_policies_and_the_jsonl_sink(
    backend: str, tmp_path: Path
) -> None:
    async def main():
        async with Runtime(
            RuntimeConfig(), registry=default_registry(), out=tmp_path, out_format="jsonl"
        ) as rt:
            oracle = await rt.run(Workload(env="maze", tasks="test", policy="oracle"))
            random = await rt.run(Workload(env="maze", tasks="test", policy="random"))
            return oracle, random

    oracle, random = anyio.run(main, backend=backend)
    assert oracle.summary.episodes == len(oracle.trajectories) > 0
    assert oracle.summary.success_rate == 1.0
    assert random.summary.episodes == oracle.summary.episodes
    assert all(t.policy == "random" for t in random.trajectories)
    lines = (tmp_path / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 2 * oracle.summary.episodes


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_execution_modes_timeouts_and_errors(backend: str, mode: str) -> None:
    plugin = E.plugin(MODES[mode], mode, max_instances=2)
    registry = Registry(entry_points_group=None)
    registry.register(plugin)
    config = RuntimeConfig(
        # it also bounds creating a process worker (spawn + imports): generous there
        step_timeout_s=1.0 if mode != "process" else 10.0,
        policy_timeout_s=3.0,
        episode_timeout_s=30.0,
        close_timeout_s=3.0,
        env_retries=0,
    )
    tasks = [0, 1, E.HANG_STEP, E.STEP_RAISES]

    async def main():
        async with Runtime(config, registry=registry) as rt:
            result = await rt.run(Workload(env=plugin.id, tasks=tasks))
            return result, rt.scheduler.pools[plugin.id]

    result, pool = anyio.run(main, backend=backend)
    by_task = {t.task_id: t for t in result.trajectories}
    assert set(by_task) == set(tasks)
    assert by_task[0].success and by_task[1].success
    assert by_task[E.HANG_STEP].finish_reason is FinishReason.TIMEOUT
    assert by_task[E.STEP_RAISES].finish_reason is FinishReason.ENV_ERROR
    assert pool.live == 0 and pool.closed_count == pool.created


def backends_section() -> str:
    text = DOC.read_text()
    match = re.search(r"^## Async backends\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, "docs/architecture.md has no '## Async backends' section"
    return match.group(1)


def test_docs_say_which_backends_are_supported() -> None:
    section = backends_section()
    assert "asyncio is the supported backend" in section
    assert "trio" in section
    for asyncio_only in ("StoreSink", "AsyncStreamWriter", "sglang", "openai", "agentgym"):
        assert asyncio_only in section, f"the section does not name {asyncio_only}"
