"""``gymux serve-policy``: the availability check, and the subprocess management with a
stand-in server (a tiny aiohttp /health script; no sglang, no GPU here)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from conftest import REPO_ROOT, clean_env

from gymux.policies.sglang import launch as serve_policy
from gymux.policies.sglang.launch import ManagedServer, ServerError, build_command, serve

# A stand-in "policy server": spawns a child in its process group (as sglang does), writes
# both pids, waits DELAY seconds, then serves GET /health. IGNORE_TERM=1 ignores SIGTERM.
STAND_IN = r"""
import os, signal, subprocess, sys, time

port, pidfile, delay, ignore_term = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
if ignore_term == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(pidfile + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.replace(pidfile + ".tmp", pidfile)
time.sleep(delay)
from aiohttp import web

async def health(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=ignore_term != "1")
"""

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids, timeout=10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.fixture
def stand_in(tmp_path):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    pidfile = tmp_path / "pids"

    def command(port: int, *, delay: float = 0.5, ignore_term: bool = False) -> list[str]:
        return [sys.executable, str(script), str(port), str(pidfile), str(delay),
                "1" if ignore_term else "0"]  # fmt: skip

    def pids() -> list[int]:
        return [int(x) for x in pidfile.read_text().split()]

    return command, pids


def test_unavailable_here_says_so_in_one_line_and_exits_2(run_gymux):
    assert serve_policy.unavailable_reason() is not None  # no sglang, no GPU on this machine
    done = run_gymux(["serve-policy", "--model", "/models/x"])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "sglang is not installed" in lines[0] or "no GPU" in lines[0]
    assert done.stdout == ""


def test_no_gpu_reason(monkeypatch):
    real = serve_policy.importlib.util.find_spec
    monkeypatch.setattr(
        serve_policy.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "sglang" else real(name, *a),
    )
    monkeypatch.setattr(serve_policy, "_has_gpu", lambda: False)
    assert "no GPU" in (serve_policy.unavailable_reason() or "")
    monkeypatch.setattr(serve_policy, "_has_gpu", lambda: True)
    assert serve_policy.unavailable_reason() is None


def test_build_command():
    cmd = build_command("/m", port=31000, tp=2, extra=["--mem-fraction-static", "0.8"])
    assert cmd[1:] == [
        "-m", "sglang.launch_server", "--model-path", "/m", "--host", "127.0.0.1",
        "--port", "31000", "--tp", "2", "--mem-fraction-static", "0.8",
    ]  # fmt: skip


async def test_waits_for_health_then_stop_leaves_no_process(stand_in):
    command, pids = stand_in
    port = free_port()
    t = time.monotonic()
    async with ManagedServer(command(port, delay=0.8), f"http://127.0.0.1:{port}", poll_s=0.05):
        assert time.monotonic() - t >= 0.8  # it waited for /health
        leader, child = pids()
        assert alive(leader) and alive(child)
    assert wait_gone([leader, child]) == []


async def test_sigterm_ignored_is_escalated_to_sigkill(stand_in):
    command, pids = stand_in
    port = free_port()
    server = ManagedServer(
        command(port, delay=0, ignore_term=True), f"http://127.0.0.1:{port}", grace_s=0.5
    )
    async with server:
        leader, child = pids()
    assert server.process is not None and server.process.returncode == -signal.SIGKILL
    assert wait_gone([leader, child]) == []


async def test_health_timeout_and_early_exit_are_errors(stand_in):
    command, pids = stand_in
    port = free_port()
    with pytest.raises(ServerError, match="not healthy after"):
        async with ManagedServer(
            command(port, delay=30), f"http://127.0.0.1:{port}", startup_timeout_s=1.5
        ):
            pass
    assert wait_gone(pids()) == []
    with pytest.raises(ServerError, match="exited with code 3"):
        async with ManagedServer(
            [sys.executable, "-c", "import sys; sys.exit(3)"], "http://127.0.0.1:1"
        ):
            pass


async def test_serve_runs_until_cancelled(stand_in):
    command, pids = stand_in
    port = free_port()
    lines: list[str] = []
    ready = anyio.Event()
    with anyio.move_on_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: serve(
                    command(port, delay=0.2),
                    f"http://127.0.0.1:{port}",
                    out=lines.append,
                    on_ready=lambda srv: ready.set(),
                )
            )
            await ready.wait()
            tg.cancel_scope.cancel()
    assert ready.is_set()
    assert any(f"http://127.0.0.1:{port}" in line for line in lines)
    assert wait_gone(pids()) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serve_policy_stops_cleanly_on_signal(stand_in, tmp_path, sig):
    command, pids = stand_in
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymux", "serve-policy", "--model", "x", "--port", str(port),
         "--test-command", json.dumps(command(port, delay=0.2))],
        cwd=REPO_ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"ready: http://127.0.0.1:{port}" in first
        leader, child = pids()
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in rest
    assert wait_gone([leader, child]) == []
