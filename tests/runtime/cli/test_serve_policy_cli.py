"""``gymux serve-policy`` (gymux.cli.serve_policy): one line and exit 2 where sglang cannot
run, the ready line, and a clean stop on a signal with a stand-in server (no sglang, no
GPU). The launcher itself: tests/policies/sglang/test_serve_policy.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from gymux.cli.serve_policy import serve
from gymux.policies.sglang import launch

from doubles.procs import reaped
from doubles.sglang_double import StandIn, free_port, wait_gone

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def stand_in(tmp_path) -> StandIn:
    return StandIn(tmp_path)


def test_unavailable_here_says_so_in_one_line_and_exits_2(run_gymux):
    assert launch.unavailable_reason() is not None  # no sglang, no GPU on this machine
    done = run_gymux(["serve-policy", "--model", "/models/x"])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "sglang is not installed" in lines[0] or "no GPU" in lines[0]
    assert done.stdout == ""


async def test_serve_runs_until_cancelled(stand_in, capsys):
    port = free_port()
    ready = anyio.Event()
    with anyio.move_on_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: serve(
                    stand_in.command(port, delay=0.2),
                    f"http://127.0.0.1:{port}",
                    on_ready=lambda srv: ready.set(),
                )
            )
            await ready.wait()
            tg.cancel_scope.cancel()
    assert ready.is_set()
    lines = capsys.readouterr().out.splitlines()
    assert any(f"http://127.0.0.1:{port}" in line for line in lines)
    assert wait_gone(stand_in.pids()) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serve_policy_stops_cleanly_on_signal(stand_in, child_env, sig):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymux", "serve-policy", "--model", "x", "--port", str(port),
         "--test-command", json.dumps(stand_in.command(port, delay=0.2))],
        cwd=REPO_ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    with reaped(proc):
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"ready: http://127.0.0.1:{port}" in first
        leader, child = stand_in.pids()
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in rest
    assert wait_gone([leader, child]) == []
