"""sciworld: a JVM killed by pid while an instance starts it (during the first reset) is a
transient failure, rerun on a fresh JVM; py4j's own error logging never reaches stderr."""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

import pytest

pytest.importorskip("scienceworld")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("no Java runtime", allow_module_level=True)

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.builtin.sciworld import simulator
from gymux.env_plugins.builtin.sciworld.env import SciWorldOracle
from gymux.env_plugins.builtin.sciworld.jvm import JavaProcess
from gymux.env_plugins.builtin.sciworld.plugin import plugin
from gymux.env_plugins.registry import Registry
from gymux.policies.oracle import OraclePolicy
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason

from doubles.procs import run_python

pytestmark = pytest.mark.anyio


async def test_jvm_killed_while_starting_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[int] = []
    real_start = JavaProcess.start

    def start_then_die(*args: Any, **kwargs: Any) -> JavaProcess:
        java = real_start(*args, **kwargs)
        if not killed:  # the first JVM dies right after launch, before the simulator loads
            os.kill(java.pid, signal.SIGKILL)
            killed.append(java.pid)
        return java

    monkeypatch.setattr(simulator.JavaProcess, "start", start_then_die)
    registry = Registry(entry_points_group=None)
    registry.register(plugin)
    config = RuntimeConfig(
        step_timeout_s=120.0, env_retries=1, retry_backoff_s=0.0, env_instances={"sciworld": 1}
    )
    async with Runtime(config, registry=registry) as rt:
        result = await rt.run(
            Workload(env="sciworld", tasks=[0]), policy=OraclePolicy(SciWorldOracle())
        )
    (traj,) = result.trajectories
    assert len(killed) == 1
    assert traj.finish_reason is FinishReason.DONE and traj.success, traj.error
    assert traj.attempts == 2


_CHILD = r"""
import os, signal, sys, threading
from gymux.env_plugins import Task
from gymux.env_plugins.builtin.sciworld.env import SciWorldEnv
env = SciWorldEnv()
env.reset(Task(id=0))
os.kill(env.pid, signal.SIGKILL)  # the JVM dies under a live gateway
try:
    env.step("look around")
except Exception as exc:
    outcome = type(exc).__name__
env.close()
print("outcome:", outcome)
"""


def test_py4j_logs_nothing_when_its_jvm_dies() -> None:
    proc = run_python(_CHILD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "outcome: TransientEnvError" in proc.stdout.splitlines()
    assert "Traceback" not in proc.stderr and "py4j" not in proc.stderr, proc.stderr[-3000:]
