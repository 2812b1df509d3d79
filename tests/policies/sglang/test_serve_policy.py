"""The SGLang server launcher (``gymux.policies.sglang.launch``): the availability check,
and the subprocess management with a stand-in server (a tiny aiohttp /health script; no
sglang, no GPU here). The ``gymux serve-policy`` command:
tests/runtime/cli/test_serve_policy_cli.py."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from gymux.policies.sglang import launch
from gymux.policies.sglang.launch import ManagedServer, ServerError, build_command

from doubles.sglang_double import StandIn, alive, free_port, wait_gone

pytestmark = pytest.mark.anyio


@pytest.fixture
def stand_in(tmp_path) -> StandIn:
    return StandIn(tmp_path)


def test_no_gpu_reason(monkeypatch):
    real = launch.importlib.util.find_spec
    monkeypatch.setattr(
        launch.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "sglang" else real(name, *a),
    )
    monkeypatch.setattr(launch, "_has_gpu", lambda: False)
    assert "no GPU" in (launch.unavailable_reason() or "")
    monkeypatch.setattr(launch, "_has_gpu", lambda: True)
    assert launch.unavailable_reason() is None


def test_build_command():
    cmd = build_command("/m", port=31000, tp=2, extra=["--mem-fraction-static", "0.8"])
    assert cmd[1:] == [
        "-m", "sglang.launch_server", "--model-path", "/m", "--host", "127.0.0.1",
        "--port", "31000", "--tp", "2", "--mem-fraction-static", "0.8",
    ]  # fmt: skip


async def test_waits_for_health_then_stop_leaves_no_process(stand_in):
    port = free_port()
    t = time.monotonic()
    async with ManagedServer(
        stand_in.command(port, delay=0.8), f"http://127.0.0.1:{port}", poll_s=0.05
    ):
        assert time.monotonic() - t >= 0.8  # it waited for /health
        leader, child = stand_in.pids()
        assert alive(leader) and alive(child)
    assert wait_gone([leader, child]) == []


async def test_sigterm_ignored_is_escalated_to_sigkill(stand_in):
    port = free_port()
    server = ManagedServer(
        stand_in.command(port, delay=0, ignore_term=True), f"http://127.0.0.1:{port}", grace_s=0.5
    )
    async with server:
        leader, child = stand_in.pids()
    assert server.process is not None and server.process.returncode == -signal.SIGKILL
    assert wait_gone([leader, child]) == []


async def test_health_timeout_and_early_exit_are_errors(stand_in):
    port = free_port()
    with pytest.raises(ServerError, match="not healthy after"):
        async with ManagedServer(
            stand_in.command(port, delay=30), f"http://127.0.0.1:{port}", startup_timeout_s=1.5
        ):
            pass
    assert wait_gone(stand_in.pids()) == []
    with pytest.raises(ServerError, match="exited with code 3"):
        async with ManagedServer(
            [sys.executable, "-c", "import sys; sys.exit(3)"], "http://127.0.0.1:1"
        ):
            pass
