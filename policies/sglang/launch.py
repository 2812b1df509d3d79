"""``gymux serve-policy``: run an SGLang server as a managed subprocess.

``gymux serve-policy --model PATH [--port N] [--tp N] [--extra ARG ...]`` starts
``python -m sglang.launch_server --model-path PATH --host HOST --port N --tp N ...``
(flags as SGLang's server-arguments docs spell them) in its own process group, waits
(bounded) until ``GET /health`` answers 200, prints the
URL to pass to ``gymux run --policy sglang --server URL``, and keeps it running until
Ctrl-C / SIGTERM. Stopping sends SIGTERM to the whole process group (SGLang runs
scheduler and detokenizer children), waits ``grace_s``, then SIGKILLs what is left, so
no process outlives the command.

sglang is the optional extra ``gymux[sglang]``; without it, or without a GPU, the command
prints one line saying so and exits with code 2.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
import anyio
import anyio.abc

__all__ = [
    "ManagedServer",
    "ServerError",
    "build_command",
    "serve",
    "unavailable_reason",
]


class ServerError(Exception):
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


class ManagedServer:
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

    async def __aenter__(self) -> Self:
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
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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


async def serve(
    command: Sequence[str],
    url: str,
    *,
    out: Callable[[str], None],
    err: Callable[[str], None] | None = None,
    startup_timeout_s: float = 900.0,
    grace_s: float = 15.0,
    on_ready: Callable[[ManagedServer], None] | None = None,
) -> int:
    """Run the server until SIGINT/SIGTERM (exit 0) or until it dies (exit 1)."""
    async with anyio.create_task_group() as tg:
        stopped_by_signal = False

        async def watch_signals() -> None:
            nonlocal stopped_by_signal
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stopped_by_signal = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch_signals)
        code = 0
        try:
            async with ManagedServer(
                command, url, startup_timeout_s=startup_timeout_s, grace_s=grace_s
            ) as server:
                out(f"policy server ready: {url} (pid {server.pid}); Ctrl-C to stop")
                out(f"use: gymux run --policy sglang --server {url} --tokenizer MODEL_PATH ...")
                if on_ready is not None:
                    on_ready(server)
                returncode = await server.wait()
                (err or out)(f"gymux: error: policy server exited with code {returncode}")
                code = 1
        except ServerError as exc:
            (err or out)(f"gymux: error: {exc}")
            code = 1
        tg.cancel_scope.cancel()
    if stopped_by_signal:
        out("policy server stopped")
        return 0
    return code
