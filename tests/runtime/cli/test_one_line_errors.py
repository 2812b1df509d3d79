"""Bad input that used to print a traceback is one line on stderr with a meaningful exit
code (real ``python -m gymux`` subprocesses); Ctrl-C during a sciworld run prints no py4j
tracebacks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from doubles.procs import clean_env, reaped, run_child


def _gymux(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_child([sys.executable, "-m", "gymux", *args], cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (
            ["run", "--env", "agentgym/textcraft", "--tasks", "0-3"],
            2,
            ["--agentgym-url", "agentgym/textcraft"],
        ),
        (
            ["run", "--env", "agentgym/foo", "--agentgym-url", "http://127.0.0.1:9"],
            2,
            ["unknown AgentGym env 'foo'", "textcraft"],
        ),
        (
            [
                "run",
                "--env",
                "agentgym/foo",
                "--agentgym-url",
                "http://127.0.0.1:9",
                "--tasks",
                "0-3",
                "--policy",
                "random",
            ],
            2,
            ["unknown AgentGym env 'foo'"],
        ),
        (
            [
                "run",
                "--env",
                "agentgym/wordle",
                "--agentgym-url",
                "http://127.0.0.1:9",
                "--tasks",
                "0-3",
                "--policy",
                "oracle",
            ],
            2,
            ["oracle"],
        ),
    ],
    ids=["no-url", "unknown-env", "unknown-env-random", "oracle-on-bridge"],
)
def test_one_line(args: list[str], code: int, words: list[str], tmp_path: Path) -> None:
    proc = _gymux([*args, "--out", str(tmp_path / "out"), "--progress", "off"], tmp_path)
    assert proc.returncode == code, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("gymux: error: "), line
    for word in words:
        assert word in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime")
def test_ctrl_c_during_a_sciworld_run_prints_no_tracebacks(tmp_path: Path) -> None:
    pytest.importorskip("scienceworld")
    from gymux.env_plugins.builtin.sciworld.jvm import java_processes

    events = tmp_path / "events.jsonl"
    args = ["run", "--env", "sciworld", "--tasks", "test", "--concurrency", "2"]
    args += ["--out", str(tmp_path / "out"), "--progress", "off", "--events", str(events)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymux", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    with reaped(proc):
        # readiness: an episode has finished, so the simulator JVMs are mid-run
        polls = 0
        while not (events.exists() and "episode_finished" in events.read_text()):
            assert proc.poll() is None, proc.communicate()
            polls += 1
            assert polls < 30_000  # a bound on a hung test (10 min), not a speed assertion
            time.sleep(0.02)
        # Ctrl-C in a terminal: SIGINT to the whole process group, the JVMs included
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "py4j" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "gymux: interrupted; finished episodes were saved", err[-3000:]
    assert len(lines) <= 3, err[-3000:]
    assert java_processes("scienceworld", parent=proc.pid) == []
