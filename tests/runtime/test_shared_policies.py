"""Runs that name the same model policy with the same options share one hosted policy
object (one connection pool, one loaded model), as the CLI does; other options, another
object; ``oracle``/``random`` stay one per run."""

from __future__ import annotations

import pytest

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.registry import default_registry
from gymux.errors import PolicyError
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason

from doubles.openai_double import OpenAIDouble

pytestmark = pytest.mark.anyio


def _workload(url: str, **options: object) -> Workload:
    opts = {"base_url": url, "model": "m", **options}
    return Workload(env="maze", tasks=[0, 1], policy="openai", policy_options=opts, max_turns=2)


async def test_runs_naming_one_model_policy_share_it() -> None:
    async with OpenAIDouble() as srv, Runtime(RuntimeConfig(), registry=default_registry()) as rt:
        first = await rt.submit(_workload(srv.base_url))
        second = await rt.submit(_workload(srv.base_url))
        assert first.policy is second.policy
        for handle in (first, second):
            result = await handle.wait()
            assert len(result.trajectories) == 2
            assert all(
                t.finish_reason is not FinishReason.POLICY_ERROR for t in result.trajectories
            )
            assert all(len(t.turns) >= 1 for t in result.trajectories)
        assert rt.gate("openai").inflight == 0  # exactly one hosted policy named "openai"
        oracle_runs = [await rt.submit(Workload(env="maze", tasks=[0])) for _ in range(2)]
        assert oracle_runs[0].policy is not oracle_runs[1].policy  # per run
        for handle in oracle_runs:
            await handle.wait()
        # Other options: another object (now two are hosted under the name).
        await rt.run(_workload(srv.base_url, max_tokens=64))
        with pytest.raises(PolicyError, match="2 hosted policies named 'openai'"):
            rt.gate("openai")
    assert len(srv.requests) >= 6
