"""Per-environment instance pools: a cap on live instances, reuse across episodes, and
closing everything on shutdown."""

from __future__ import annotations

from collections import deque

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
        # Episodes waiting for an instance, woken one at a time in arrival order. All pool
        # state changes happen between awaits on the event loop, so no lock is needed.
        self._waiters: deque[anyio.Event] = deque()
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

    def lease(self, *, create_timeout_s: float) -> _Leasing:
        """``async with pool.lease(...) as lease``: borrow an instance for one episode,
        creating one if under the cap. Leaving with an exception marks it ``broken``."""
        return _Leasing(self, create_timeout_s)

    def _wake_one(self) -> None:
        while self._waiters:
            event = self._waiters.popleft()
            if not event.is_set():
                event.set()
                return

    async def _acquire(self, create_timeout_s: float) -> Env:
        while True:
            if self._closed:
                raise RuntimeError(f"pool for env {self.plugin.id!r} is closed")
            if self._idle and not self._waiters:
                return self._idle.pop()
            if self._live < self.cap and not self._waiters:
                self._live += 1
                break
            event = anyio.Event()
            self._waiters.append(event)
            try:
                await event.wait()
            except BaseException:
                if event.is_set():
                    self._wake_one()  # pass the wake-up on
                else:
                    self._waiters.remove(event)
                raise
            # Woken: the resource is ours if still there; take it before anyone queued.
            if self._closed:
                continue
            if self._idle:
                return self._idle.pop()
            if self._live < self.cap:
                self._live += 1
                break
        try:
            with anyio.fail_after(create_timeout_s):
                env = await make_instance(self.plugin, self._limiter, self._process_ref)
        except BaseException:
            self._live -= 1
            self._wake_one()
            raise
        self.created += 1
        return env

    async def _release(self, lease: Lease) -> None:
        if lease.broken or self._closed:
            with anyio.CancelScope(shield=True):
                await self._close_one(lease.env)
            self._live -= 1
        else:
            self._idle.append(lease.env)
        self._wake_one()

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
            self._closed = True
            idle, self._idle = self._idle, []
            for event in self._waiters:
                event.set()
            self._waiters.clear()
            async with anyio.create_task_group() as tg:
                for env in idle:
                    tg.start_soon(self._close_one, env)
            self._live -= len(idle)


class _Leasing:
    """What :meth:`EnvPool.lease` returns. A class rather than a generator-based context
    manager: every episode takes one, and a healthy instance goes back without a cancel
    scope (only closing a broken one awaits, shielded: :meth:`EnvPool._release`)."""

    __slots__ = ("_lease", "_pool", "_timeout_s")

    def __init__(self, pool: EnvPool, create_timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = create_timeout_s
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        self._lease = Lease(await self._pool._acquire(self._timeout_s))
        return self._lease

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        if exc_type is not None:
            lease.broken = True
        await self._pool._release(lease)
