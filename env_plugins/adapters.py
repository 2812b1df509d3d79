"""Adapters that give every environment flavour the async :class:`Env` interface.

* :class:`ThreadEnv` runs a blocking :class:`SyncEnv` in worker threads. A call abandoned
  by a timeout keeps its thread until the env returns; the instance is then discarded.
* :class:`ProcessEnv` runs a blocking env in its own worker process. A crash (even a
  segfault) or a hang costs only that instance: the process is killed and the episode
  ends with ``env_error`` or ``timeout``. A worker killed from outside (``SIGKILL``,
  ``SIGTERM`` or ``SIGHUP``: the OOM killer, an operator) says nothing about the episode, so
  it raises :class:`TransientEnvError` and the runtime reruns the episode on a fresh worker.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from gymux.env_plugins import _wire as w
from gymux.env_plugins.protocol import (
    Env,
    EnvError,
    EnvPlugin,
    Execution,
    Observation,
    StepResult,
    SyncEnv,
    Task,
    TransientEnvError,
)
from gymux.env_plugins.registry import PluginError, import_ref

__all__ = ["ProcessEnv", "ThreadEnv", "factory_ref", "make_instance"]

#: Signals that end a worker from outside: its death is worth a retry on a fresh worker.
_EXTERNAL_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGHUP})


def _check_methods(env_id: str, instance: object, *, want_async: bool) -> None:
    for name in ("reset", "step", "close"):
        method = getattr(instance, name, None)
        if method is None or not callable(method):
            raise PluginError(env_id, f"instance of {type(instance).__name__} has no {name}()")
        is_async = inspect.iscoroutinefunction(method)
        if want_async and not is_async:
            raise PluginError(
                env_id,
                f"{type(instance).__name__}.{name} is not async; "
                "declare execution='thread' or 'process' for blocking envs",
            )
        if not want_async and is_async:
            raise PluginError(
                env_id,
                f"{type(instance).__name__}.{name} is async but execution is thread/process",
            )


class ThreadEnv:
    """A blocking env whose calls run in worker threads."""

    def __init__(self, env: SyncEnv, limiter: anyio.CapacityLimiter) -> None:
        self._env = env
        self._limiter = limiter

    async def reset(self, task: Task) -> Observation:
        return await anyio.to_thread.run_sync(
            self._env.reset, task, abandon_on_cancel=True, limiter=self._limiter
        )

    async def step(self, action: str) -> StepResult:
        return await anyio.to_thread.run_sync(
            self._env.step, action, abandon_on_cancel=True, limiter=self._limiter
        )

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._env.close, abandon_on_cancel=True)


def factory_ref(plugin: EnvPlugin) -> str:
    """``module:qualname`` of a plugin's factory, verified to import back to it."""
    factory: Any = plugin.factory
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise PluginError(
            plugin.id, "execution='process' needs a factory importable as module:qualname"
        )
    ref = f"{module}:{qualname}"
    try:
        found = import_ref(ref)
    except Exception as exc:
        raise PluginError(plugin.id, f"process factory {ref} does not import: {exc}") from exc
    if found is not factory:
        raise PluginError(plugin.id, f"process factory {ref} imports to a different object")
    return ref


class ProcessEnv:
    """A blocking env served by a dedicated worker process."""

    def __init__(self, env_id: str, process: anyio.abc.Process) -> None:
        self._env_id = env_id
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        self._send_stream = process.stdin
        self._recv = BufferedByteReceiveStream(process.stdout)
        self._lock = anyio.Lock()
        self._broken = False

    @classmethod
    async def start(cls, plugin: EnvPlugin, ref: str) -> ProcessEnv:
        # The worker sees the parent's import path, so any factory importable here is
        # importable there.
        env_vars = dict(os.environ)
        env_vars["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        process = await anyio.open_process(
            [sys.executable, "-m", "gymux.env_plugins._worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env=env_vars,
        )
        env = cls(plugin.id, process)
        try:
            reply = await env._call(w.Init(factory=ref))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await env._kill()
            raise
        if not isinstance(reply, w.Ready):
            await env._kill()
            raise EnvError(f"worker for {plugin.id!r} did not start: {reply!r}")
        return env

    @property
    def pid(self) -> int:
        return self._process.pid

    async def _call(self, request: w.Request) -> w.Reply:
        if self._broken:
            raise EnvError(f"worker process for {self._env_id!r} is no longer usable")
        async with self._lock:
            ok = False
            try:
                await self._send_stream.send(w.frame(w.request_encoder.encode(request)))
                header = await self._recv.receive_exactly(w.HEADER.size)
                (size,) = w.HEADER.unpack(header)
                if size > w.MAX_FRAME:
                    raise EnvError(f"worker for {self._env_id!r} sent an oversized frame")
                reply: w.Reply = w.reply_decoder.decode(await self._recv.receive_exactly(size))
                ok = True
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                code = await self._exit_code()
                message = f"worker process for {self._env_id!r} died (exit code {code})"
                if code is not None and -code in _EXTERNAL_SIGNALS:
                    raise TransientEnvError(f"{message}: killed by a signal") from None
                raise EnvError(message) from None
            finally:
                if not ok:
                    # Cancelled or failed mid-call: the framing is unknowable now.
                    self._broken = True
        if isinstance(reply, w.Failed):
            if reply.kind == "transient":
                raise TransientEnvError(reply.message)
            raise EnvError(reply.message)
        return reply

    async def _exit_code(self) -> int | None:
        with anyio.move_on_after(1.0):
            return await self._process.wait()
        return self._process.returncode

    async def _kill(self) -> None:
        self._broken = True
        if self._process.returncode is None:
            self._process.kill()
        with anyio.CancelScope(shield=True):
            await self._process.wait()
            await self._process.aclose()

    async def reset(self, task: Task) -> Observation:
        reply = await self._call(w.Reset(task=task))
        if not isinstance(reply, w.ResetDone):
            raise EnvError(f"unexpected worker reply {type(reply).__name__}")
        return reply.observation

    async def step(self, action: str) -> StepResult:
        reply = await self._call(w.Step(action=action))
        if not isinstance(reply, w.StepDone):
            raise EnvError(f"unexpected worker reply {type(reply).__name__}")
        return reply.result

    async def close(self) -> None:
        try:
            if not self._broken and self._process.returncode is None:
                await self._call(w.Close())
        finally:
            await self._kill()


async def make_instance(
    plugin: EnvPlugin, limiter: anyio.CapacityLimiter, process_ref: str | None = None
) -> Env:
    """Create one instance of ``plugin``'s env, adapted to the async interface."""
    if plugin.execution is Execution.PROCESS:
        return await ProcessEnv.start(plugin, process_ref or factory_ref(plugin))
    if plugin.execution is Execution.THREAD:
        raw = await anyio.to_thread.run_sync(plugin.factory, abandon_on_cancel=True)
        _check_methods(plugin.id, raw, want_async=False)
        return ThreadEnv(raw, limiter)  # type: ignore[arg-type]
    instance = plugin.factory()
    _check_methods(plugin.id, instance, want_async=True)
    return instance  # type: ignore[return-value]
