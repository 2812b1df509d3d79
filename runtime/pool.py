"""Per-environment instance pools: a cap on live instances, reuse across episodes, and
closing everything on shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog

from gymux.env_plugins.adapters import factory_ref, make_instance
from gymux.env_plugins.protocol import Env, EnvPlugin, Execution

__all__ = ["EnvPool", "Lease"]

_log = structlog.get_logger("gymux.pool")


class Lease:
    """An instance handed to one episode. Mark it ``broken`` to have it closed, not reused."""

    __slots__ = ("broken", "env")

    def __init__(self, env: Env) -> None:
        self.env = env
        self.broken = False


class EnvPool:
    """At most ``cap`` live instances of one env; idle ones are reused."""

    def __init__(self, plugin: EnvPlugin, cap: int, *, close_timeout_s: float = 10.0) -> None:
        self.plugin = plugin
        self.cap = cap
        self._close_timeout_s = close_timeout_s
        self._idle: list[Env] = []
        self._live = 0
        self._closed = False
        self._cond = anyio.Condition()
        # Threads for blocking envs: one per live instance, plus slack for calls that a
        # timeout abandoned and that are still running.
        self._limiter = anyio.CapacityLimiter(cap + 8)
        self._process_ref = factory_ref(plugin) if plugin.execution is Execution.PROCESS else None
        self.created = 0
        self.closed_count = 0
        self.close_errors = 0

    @property
    def live(self) -> int:
        """Instances alive now (idle or leased)."""
        return self._live

    @property
    def idle(self) -> int:
        return len(self._idle)

    @asynccontextmanager
    async def lease(self, *, create_timeout_s: float) -> AsyncIterator[Lease]:
        """Borrow an instance for one episode; creating one if under the cap."""
        env = await self._acquire(create_timeout_s)
        lease = Lease(env)
        try:
            yield lease
        except BaseException:
            lease.broken = True
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(lease)

    async def _acquire(self, create_timeout_s: float) -> Env:
        async with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError(f"pool for env {self.plugin.id!r} is closed")
                if self._idle:
                    return self._idle.pop()
                if self._live < self.cap:
                    self._live += 1
                    break
                await self._cond.wait()
        try:
            with anyio.fail_after(create_timeout_s):
                env = await make_instance(self.plugin, self._limiter, self._process_ref)
        except BaseException:
            async with self._cond:
                self._live -= 1
                self._cond.notify()
            raise
        self.created += 1
        return env

    async def _release(self, lease: Lease) -> None:
        if lease.broken or self._closed:
            await self._close_one(lease.env)
            async with self._cond:
                self._live -= 1
                self._cond.notify()
        else:
            async with self._cond:
                self._idle.append(lease.env)
                self._cond.notify()

    async def _close_one(self, env: Env) -> None:
        try:
            with anyio.fail_after(self._close_timeout_s):
                await env.close()
        except Exception as exc:
            self.close_errors += 1
            _log.warning("env close failed", env=self.plugin.id, error=repr(exc))
        finally:
            self.closed_count += 1

    async def aclose(self) -> None:
        """Close idle instances now; leased ones are closed when their episode returns them."""
        with anyio.CancelScope(shield=True):
            async with self._cond:
                self._closed = True
                idle, self._idle = self._idle, []
                self._cond.notify_all()
            async with anyio.create_task_group() as tg:
                for env in idle:
                    tg.start_soon(self._close_one, env)
            async with self._cond:
                self._live -= len(idle)
