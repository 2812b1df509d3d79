"""A worker process or JVM killed from outside (SIGKILL by pid, as the OOM killer does) is a
transient failure: the episode reruns on a fresh instance, up to ``env_retries`` times."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins import EnvPlugin, Observation, StepResult, Task
from gymux.env_plugins.registry import Registry
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason

from doubles import envs as E

pytestmark = pytest.mark.anyio

#: Folder where the worker of :class:`FirstWorkerHangs` records itself (set per test).
DIR_VAR = "GYMUX_TEST_DEAD_WORKER_DIR"


class FirstWorkerHangs:
    """Process-mode env: the first worker to reset writes its pid and then hangs in
    ``reset`` (until killed); every later worker plays the probe's "say go" task."""

    def __init__(self) -> None:
        self.steps = 0

    def reset(self, task: Task) -> Observation:
        folder = Path(os.environ[DIR_VAR])
        try:
            fd = os.open(folder / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            self.steps = 0
            return Observation(text=f"pid {os.getpid()}: say go")
        os.close(fd)
        (folder / "pid.tmp").write_text(str(os.getpid()))
        (folder / "pid.tmp").rename(folder / "pid")
        while True:
            time.sleep(60)

    def step(self, action: str) -> StepResult:
        self.steps += 1
        done = self.steps >= 3
        return StepResult(observation=Observation(text="ok"), reward=float(done), done=done)

    def close(self) -> None:
        return None


def _plugin() -> EnvPlugin:
    return EnvPlugin(E.SPEC, FirstWorkerHangs, execution="process", oracle=E.SaysGo)


async def test_a_worker_killed_during_reset_is_retried_on_a_fresh_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DIR_VAR, str(tmp_path))
    registry = Registry(entry_points_group=None)
    registry.register(_plugin())
    config = RuntimeConfig(
        step_timeout_s=600.0, env_retries=1, retry_backoff_s=0.0, retry_backoff_max_s=0.0
    )
    async with Runtime(config, registry=registry) as rt:
        handle = await rt.submit(Workload(env="probe", tasks=[0]))
        pid_file = tmp_path / "pid"
        with anyio.fail_after(600):  # a bound on a hung test, not a speed assertion
            while not pid_file.exists():
                await anyio.sleep(0.01)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        result = await handle.wait()
        pool = rt.scheduler.pools["probe"]
    (traj,) = result.trajectories
    assert traj.finish_reason is FinishReason.DONE and traj.success, traj.error
    assert traj.attempts == 2
    assert str(pid) not in traj.turns[0].observation  # a fresh worker served the rerun
    assert pool.created == 2
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_crashing_worker_is_not_retried() -> None:
    """A worker that exits or segfaults by itself fails the same way again: env_error."""
    plugin = E.plugin(E.ProcessProbe, "process", max_instances=2)
    registry = Registry(entry_points_group=None)
    registry.register(plugin)
    config = RuntimeConfig(step_timeout_s=600.0, env_retries=2, retry_backoff_s=0.0)
    async with Runtime(config, registry=registry) as rt:
        result = await rt.run(Workload(env="probe", tasks=[E.EXIT_IN_STEP, E.SEGFAULT_IN_STEP]))
    for traj in result.trajectories:
        assert traj.finish_reason is FinishReason.ENV_ERROR
        assert traj.attempts == 1, traj.error
