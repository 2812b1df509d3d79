"""Several model servers behind one policy: affinity, flow control, health, retries.

Generic over the server's API (SGLang today, vLLM-style servers later):

* **Affinity**: an episode is assigned on its first request to the healthy server with the
  fewest active episodes and stays there (radix/prefix-cache reuse); it moves only when its
  server is marked unhealthy.
* **Flow control**: each server has a :class:`Budget` of sequences and tokens in flight.
* **Health**: :meth:`Router.check` probes every server at start (:meth:`Router.wait_ready`
  keeps probing, up to a deadline, while the servers are still starting: a loading SGLang
  answers ``/health`` with 503 for minutes, and refuses connections before that);
  :meth:`Router.watch_health`
  (a task the policy owns) re-probes unhealthy ones and re-admits them.
* **Retries**: :meth:`Router.call` retries a :class:`~.transport.Retryable` failure with
  :func:`gymux._backoff.backoff_delay`, at most ``retries`` times (a refused connection marks
  the server unhealthy, so the retry goes elsewhere); one stale keep-alive failure in a row is
  retried at once and does not count.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio
import structlog

from gymux._backoff import backoff_delay
from gymux.errors import PolicyError
from gymux.policies.options import ServerOptions
from gymux.policies.sglang.transport import Retryable, describe

__all__ = ["Budget", "Probe", "Router", "Server"]

_T = TypeVar("_T")

_log = structlog.get_logger("gymux.policies.routing")

#: How often :meth:`Router.wait_ready` says what it still waits for.
_WAIT_LOG_EVERY_S = 10.0


class Budget:
    """Counts sequences and tokens in flight on one server; a lone oversize item may pass.

    Taking and giving back room does not touch the event loop while nobody waits for room
    (the common case); only a turn that has to wait uses the condition.
    """

    def __init__(self, max_requests: int, max_tokens: int) -> None:
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.requests = 0
        self.tokens = 0
        self._waiting = 0
        self._cond = anyio.Condition()

    def _fits(self, requests: int, tokens: int) -> bool:
        return not self.requests or (
            self.requests + requests <= self.max_requests
            and self.tokens + tokens <= self.max_tokens
        )

    async def acquire(self, requests: int, tokens: int) -> None:
        if not self._waiting and self._fits(requests, tokens):
            self.requests += requests
            self.tokens += tokens
            return
        self._waiting += 1
        try:
            async with self._cond:
                while not self._fits(requests, tokens):
                    await self._cond.wait()
                self.requests += requests
                self.tokens += tokens
        finally:
            self._waiting -= 1

    async def release(self, requests: int, tokens: int) -> None:
        self.requests -= requests
        self.tokens -= tokens
        if self._waiting:
            with anyio.CancelScope(shield=True):
                async with self._cond:
                    self._cond.notify_all()


class Server:
    """One server: its URL (no trailing slash), health, episode count and budget."""

    def __init__(self, url: str, max_requests: int, max_tokens: int) -> None:
        self.url = url.rstrip("/")
        self.healthy = True
        self.episodes = 0
        self.budget = Budget(max_requests, max_tokens)
        self.last_error = ""


#: Checks that a server answers (raising if not); bounded by the router's timeout.
Probe = Callable[[Server], Awaitable[object]]


class Router:
    """Picks each episode's server and retries safe failures (see the module doc)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        label: str,
        max_requests: int,
        max_tokens: int,
        retries: int,
        backoff_s: float,
        backoff_max_s: float,
    ) -> None:
        self.label = label
        self.servers = [Server(url, max_requests, max_tokens) for url in urls]
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._affinity: dict[str, Server] = {}
        #: Retries after a :class:`Retryable` failure (stale connections not counted).
        self.retried = 0
        #: Requests resent after failing on a stale (server-closed) keep-alive connection.
        self.stale_retries = 0
        #: Set when a server is marked unhealthy: wakes :meth:`watch_health`, which sleeps
        #: (no timer) while every server is healthy.
        self._unhealthy: anyio.Event | None = None

    def _set_health(self, server: Server, healthy: bool) -> None:
        server.healthy = healthy
        if not healthy and self._unhealthy is not None:
            self._unhealthy.set()

    @classmethod
    def from_options(cls, options: ServerOptions, *, label: str) -> Router:
        """A router over ``options.urls`` with its per-server caps and retries."""
        return cls(
            options.urls,
            label=label,
            max_requests=options.max_requests_per_server,
            max_tokens=options.max_tokens_per_server,
            retries=options.retries,
            backoff_s=options.backoff_s,
            backoff_max_s=options.backoff_max_s,
        )

    # -- affinity -----------------------------------------------------------------------

    def server_for(self, episode_id: str) -> Server:
        """The episode's server: its own while healthy, else the least loaded healthy one."""
        server = self._affinity.get(episode_id)
        if server is not None and server.healthy:
            return server
        healthy = [s for s in self.servers if s.healthy] or self.servers
        best = min(healthy, key=lambda s: (s.episodes, s.budget.requests))
        if server is not None:
            server.episodes -= 1
        best.episodes += 1
        self._affinity[episode_id] = best
        return best

    def forget(self, episode_id: str) -> None:
        """The episode has ended: free its place on its server."""
        server = self._affinity.pop(episode_id, None)
        if server is not None:
            server.episodes -= 1

    # -- retries ------------------------------------------------------------------------

    async def call(self, episode_id: str, once: Callable[[Server], Awaitable[_T]]) -> _T:
        """``once(server)`` on the episode's server, retried as the module doc says.

        Raises :class:`PolicyError` when the retries are spent.
        """
        attempt = 0
        stale_retried = False
        while True:
            server = self.server_for(episode_id)
            try:
                return await once(server)
            except Retryable as exc:
                attempt, stale_retried, delay = self.after_failure(
                    server, exc, attempt, stale_retried
                )
            if delay:
                await anyio.sleep(delay)

    def after_failure(
        self, server: Server, exc: Retryable, attempt: int, stale_retried: bool
    ) -> tuple[int, bool, float]:
        """What :meth:`call` does when ``once`` raised ``exc`` after ``attempt`` failed
        attempts (``stale_retried``: the free stale-connection retry was used): ``(attempt,
        stale_retried, delay)`` for the next try, ``delay`` 0 for at once; raises
        :class:`PolicyError` when the retries are spent. For callers that run the retry
        loop themselves (the SGLang policy's one-turn path)."""
        server.last_error = str(exc)
        if exc.stale and not stale_retried:
            self.stale_retries += 1
            return attempt, True, 0.0
        if exc.refused:
            self._set_health(server, False)
        attempt += 1
        if attempt > self.retries:
            raise PolicyError(f"{self.label}: giving up after {attempt} attempts: {exc}") from None
        self.retried += 1
        return attempt, stale_retried, backoff_delay(attempt, self.backoff_s, self.backoff_max_s)

    # -- health -------------------------------------------------------------------------

    async def check(self, probe: Probe, *, timeout_s: float) -> None:
        """Probe every server and mark its health; :class:`PolicyError` if none answers."""
        problems = await self._probe_all(probe, timeout_s)
        if not any(s.healthy for s in self.servers):
            raise PolicyError(f"no {self.label} server reachable: " + "; ".join(problems))

    async def _probe_all(self, probe: Probe, timeout_s: float) -> list[str]:
        """Probe every server and mark its health; return ``"url: error"`` of each down one."""
        problems = []
        for server in self.servers:
            error = await _probe(probe, server, timeout_s)
            self._set_health(server, error is None)
            if error is not None:
                server.last_error = error
                problems.append(f"{server.url}: {error}")
        return problems

    async def wait_ready(
        self,
        probe: Probe,
        *,
        deadline_s: float,
        timeout_s: float,
        interval_s: float = 0.05,
        max_interval_s: float = 1.0,
        what: str = "/health to answer 200",
    ) -> None:
        """Probe every server until at least one answers, for at most ``deadline_s``.

        Marks each server's health as :meth:`check` does (servers still starting when one is
        ready are re-admitted later by :meth:`watch_health`). Between rounds it waits
        ``interval_s``, doubling up to ``max_interval_s``, and logs what it is waiting for
        (at once, then every 10 s). Raises :class:`PolicyError` naming every server and its
        last error when none is ready by the deadline.
        """
        started = anyio.current_time()
        logged_at: float | None = None
        delay = interval_s
        while True:
            problems = await self._probe_all(probe, timeout_s)
            if any(s.healthy for s in self.servers):
                return
            now = anyio.current_time()
            waited = now - started
            if waited >= deadline_s:
                raise PolicyError(
                    f"no {self.label} server reachable within {deadline_s:g}s (waited for "
                    f"{what}): " + "; ".join(problems)
                )
            if logged_at is None or now - logged_at >= _WAIT_LOG_EVERY_S:
                logged_at = now
                _log.info(
                    "waiting for model server",
                    server=self.label,
                    waiting_for=what,
                    waited_s=round(waited, 1),
                    deadline_s=deadline_s,
                    problems=problems,
                )
            await anyio.sleep(min(delay, max(0.0, deadline_s - waited)))
            delay = min(delay * 2, max_interval_s)

    async def watch_health(self, probe: Probe, *, interval_s: float, timeout_s: float) -> None:
        """Forever: every ``interval_s``, re-admit the unhealthy servers that answer again.

        While every server is healthy it waits to be woken (a server marked unhealthy)
        rather than waking every ``interval_s``: an idle policy costs no CPU.
        """
        while True:
            if all(s.healthy for s in self.servers):
                self._unhealthy = anyio.Event()
                await self._unhealthy.wait()
            await anyio.sleep(interval_s)
            for server in self.servers:
                if not server.healthy and await _probe(probe, server, timeout_s) is None:
                    server.healthy = True


async def _probe(probe: Probe, server: Server, timeout_s: float) -> str | None:
    """``None`` when ``probe(server)`` succeeds within ``timeout_s``, else what went wrong."""
    try:
        with anyio.fail_after(timeout_s):
            await probe(server)
    except Exception as exc:
        return describe(exc)
    return None
