"""Run an SGLang server as a managed subprocess (what ``gymux serve-policy`` runs).

:func:`build_command` is ``python -m sglang.launch_server --model-path PATH --host HOST
--port N --tp N ...`` (flags as SGLang's server-arguments docs spell them).
``async with ManagedServer(command, url)`` starts it in its own process group, waits
(bounded) until ``GET /health`` answers 200, and on the way out sends SIGTERM to the whole
process group (SGLang runs scheduler and detokenizer children), waits ``grace_s``, then
SIGKILLs what is left, so no process outlives the block. :func:`unavailable_reason` says
why a server cannot run here (sglang, the optional extra ``gymux[sglang]``, not installed,
or no GPU). The command itself (output, signals) is :mod:`gymux.cli.serve_policy`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import anyio
import anyio.abc

from gymux._lifecycle import AsyncResource
from gymux.errors import GymuxError

__all__ = [
    "ManagedServer",
    "ServerError",
    "build_command",
    "unavailable_reason",
]


class ServerError(GymuxError):
    """The server did not start, or died."""


def _has_gpu() -> bool:
    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is not None and done.returncode == 0 and "GPU" in done.stdout:
            return True
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            return bool(torch.cuda.is_available())
        except Exception:
            return False
    return False


def unavailable_reason() -> str | None:
    """Why an SGLang server cannot run here (one line), or ``None`` when it can."""
    if importlib.util.find_spec("sglang") is None:
        return "sglang is not installed (pip install 'gymux[sglang]'); cannot serve a policy"
    if not _has_gpu():
        return "no GPU found (no /dev/nvidia0, nvidia-smi or CUDA); cannot serve a policy"
    return None


def build_command(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 30000,
    tp: int = 1,
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The ``sglang.launch_server`` command line."""
    return [
        python,
        "-m",
        "sglang.launch_server",
        "--model-path",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--tp",
        str(tp),
        *extra,
    ]


class ManagedServer(AsyncResource):
    """``async with ManagedServer(cmd, url) as srv``: started and healthy inside, gone after."""

    def __init__(
        self,
        command: Sequence[str],
        url: str,
        *,
        startup_timeout_s: float = 900.0,
        grace_s: float = 15.0,
        poll_s: float = 0.5,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.url = url.rstrip("/")
        self.startup_timeout_s = startup_timeout_s
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.env = env
        self.process: anyio.abc.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def aopen(self) -> None:
        """Start the server and wait until it is healthy (stopping it again if it is not)."""
        self.process = await anyio.open_process(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=None,
            stderr=None,
            start_new_session=True,  # its own process group: we signal the whole group
            env=self.env,
        )
        try:
            await self.wait_healthy()
        except BaseException:
            await self.stop()
            raise

    async def aclose(self) -> None:
        await self.stop()

    async def wait_healthy(self) -> None:
        """Poll ``GET /health`` until 200; ServerError on timeout or if the process exits."""
        process = self.process
        assert process is not None
        health = f"{self.url}/health"
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with anyio.move_on_after(self.startup_timeout_s):
                while True:
                    if process.returncode is not None:
                        raise ServerError(
                            f"server exited with code {process.returncode} before it was healthy"
                        )
                    try:
                        async with session.get(health) as resp:
                            if resp.status == 200:
                                return
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    await anyio.sleep(self.poll_s)
        raise ServerError(f"{health} not healthy after {self.startup_timeout_s:g}s")

    async def wait(self) -> int:
        """Wait until the server process exits by itself; its exit code."""
        assert self.process is not None
        return await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after ``grace_s``; reap. Safe to call twice."""
        process = self.process
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            pgid = process.pid  # start_new_session: the group id is the leader's pid
            if process.returncode is None:
                _killpg(pgid, signal.SIGTERM)
                with anyio.move_on_after(self.grace_s):
                    await process.wait()
            if process.returncode is None:
                _killpg(pgid, signal.SIGKILL)
            await process.wait()
            # Children that outlived the leader (same group) do not outlive us.
            _killpg(pgid, signal.SIGKILL)
            await process.aclose()


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
