"""Long runs do not leak: sequential oracle episodes of every built-in env keep memory,
file descriptors, processes and threads flat (a short soak here; 1,000 episodes each in
``bench/envs.py --soak``)."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import pytest

from gymux.env_plugins.registry import PluginError, default_registry
from gymux.soak import ResourceReading, SoakReport, read_resources, soak

BUILTIN = ["maze", "wordle", "textcraft", "babyai", "sciworld", "textworld", "sqlgym"]
#: Episodes after warm-up: cheap envs run more, JVM- and generator-backed envs fewer.
EPISODES = {"sciworld": 12, "textworld": 12, "babyai": 40, "wordle": 60}


@pytest.mark.slow
@pytest.mark.parametrize("env_id", BUILTIN)
def test_sequential_episodes_keep_resources_flat(env_id: str) -> None:
    try:
        default_registry().get(env_id)
    except PluginError as exc:
        if os.environ.get("CI"):  # CI installs every extra: a built-in env must load there
            raise
        pytest.skip(f"{env_id} unavailable here: {exc}")
    episodes = EPISODES.get(env_id, 120)
    report = anyio.run(lambda: soak(env_id, episodes=episodes, checkpoints=3))
    warmup = max(2, episodes // 10)  # soak's default warm-up
    assert sum(report.finish_reasons.values()) == warmup + episodes
    assert [r.episodes for r in report.readings] == [0, episodes // 3, 2 * episodes // 3, episodes]
    assert report.flat(), f"{env_id} grew:\n{report.table()}"
    # Every episode of the oracle finished cleanly (no env errors hidden by the soak).
    assert set(report.finish_reasons) <= {"done", "max_turns"}, report.finish_reasons


def test_readings_see_children_and_fds() -> None:
    before = read_resources()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        during = read_resources()
        assert during.processes == before.processes + 1
        assert during.open_fds >= before.open_fds + 1
        assert during.rss_mib > before.rss_mib  # the child's memory counts
    finally:
        os.close(fd)
        child.kill()
        child.wait()
    assert read_resources().processes == before.processes


def test_flat_judgement() -> None:
    def r(n: int, rss: float, fds: int = 9, procs: int = 2, threads: int = 3) -> ResourceReading:
        return ResourceReading(
            episodes=n, rss_mib=rss, open_fds=fds, processes=procs, threads=threads
        )

    ok = SoakReport(env_id="x", policy="oracle", readings=[r(0, 100), r(10, 120)])
    assert ok.flat()
    assert not SoakReport(env_id="x", policy="o", readings=[r(0, 100), r(10, 200)]).flat()
    assert not SoakReport(env_id="x", policy="o", readings=[r(0, 100), r(10, 100, fds=10)]).flat()
    assert not SoakReport(env_id="x", policy="o", readings=[r(0, 100), r(10, 100, procs=3)]).flat()
