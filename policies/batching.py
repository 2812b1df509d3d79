"""Coalescing concurrent policy calls into batches.

Every episode calls ``await policy.act(request)`` on its own. A :class:`BatchingPolicy`
queues those calls; its dispatcher (a task owned by the policy's own task group, started
by ``async with policy``) collects whatever is pending and hands it, at most ``max_batch``
at a time, to :meth:`BatchingPolicy.act_batch`. At most ``max_inflight_batches`` batches
run at once.

The coalescing window adapts to load:

* heavy load -- the queue already holds at least ``max_batch / 2`` requests: dispatch at
  once; the batch is worth sending and waiting would only add latency;
* light load -- one request queued and no batch in flight: dispatch at once; nothing else
  is coming that waiting could coalesce it with;
* otherwise wait up to ``window_s`` for more, cutting the wait short as soon as the queue
  reaches ``max_batch / 2``.

Callers started in the same event-loop tick are seen together (the dispatcher yields once
before deciding), so a burst of simultaneous calls still forms one batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence

import anyio
import anyio.abc
import anyio.lowlevel

from gymux.errors import PolicyOptionsError
from gymux.policies.base import BasePolicy
from gymux.policies.protocol import PolicyError, PolicyRequest, PolicyResponse

__all__ = ["BatchingPolicy", "OnResult"]

#: ``on_result(index, result)``: item ``index`` of a batch is answered (a response or an error).
OnResult = Callable[[int, "PolicyResponse | BaseException"], None]


class _Pending:
    """One queued call: its request, and its answer once :meth:`answer` is called.

    Under asyncio the caller waits on a bare future (what an anyio ``Event`` wraps, less
    the ``Event`` objects around it: with thousands of calls queued or in flight, each
    object a call holds is one more the collector walks and one more cache miss when it
    is woken); under another backend on an anyio ``Event``."""

    __slots__ = ("_event", "_future", "answered", "cancelled", "error", "request", "response")

    def __init__(self, request: PolicyRequest, loop: asyncio.AbstractEventLoop | None) -> None:
        self.request = request
        self.response: PolicyResponse | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.answered = False
        self._future: asyncio.Future[None] | None = None
        self._event: anyio.Event | None = None
        if loop is not None:
            self._future = loop.create_future()
        else:
            self._event = anyio.Event()

    def answer(self) -> None:
        """Wake the caller (``response`` or ``error`` is set)."""
        self.answered = True
        future = self._future
        if future is not None:
            if not future.done():  # (cancelled with its caller)
                future.set_result(None)
        else:
            assert self._event is not None
            self._event.set()

    async def wait(self) -> None:
        if self._future is not None:
            await self._future
        else:
            assert self._event is not None
            await self._event.wait()


class BatchingPolicy(BasePolicy):
    """Base class: implement :meth:`act_batch`; episodes call :meth:`act`."""

    name = "batching"

    def __init__(
        self, *, max_batch: int = 64, window_s: float = 0.002, max_inflight_batches: int = 4
    ) -> None:
        if max_batch < 1 or max_inflight_batches < 1 or window_s < 0:
            raise PolicyOptionsError(
                "max_batch and max_inflight_batches must be >= 1, window_s >= 0"
            )
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_inflight_batches = max_inflight_batches
        self._queue: deque[_Pending] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._slots = anyio.Semaphore(max_inflight_batches)
        self.batches = 0
        self.batched_requests = 0
        #: Times the dispatcher skipped the window (heavy or light load).
        self.dispatched_early = 0

    async def act_batch(
        self, requests: Sequence[PolicyRequest]
    ) -> Sequence[PolicyResponse | BaseException]:
        """Answer ``requests`` in order: one response (or exception) per request."""
        raise NotImplementedError

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        if self._tg is None:
            raise PolicyError(f"policy {self.name!r} is not running (use 'async with policy')")
        pending = _Pending(request, self._loop)
        self._queue.append(pending)
        self._wakeup.set()
        try:
            await pending.wait()
        except BaseException:
            pending.cancelled = True
            raise
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None
        return pending.response

    async def aopen(self) -> None:
        """Start the dispatcher in the policy's own task group."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # another backend (trio): calls wait on anyio Events
            self._loop = None
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._dispatch, tg)

    async def aclose(self) -> None:
        """Stop the dispatcher and in-flight batches; fail what is still queued."""
        tg, self._tg = self._tg, None
        if tg is None:
            return
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)
        while self._queue:
            pending = self._queue.popleft()
            pending.error = PolicyError(f"policy {self.name!r} shut down")
            pending.answer()

    def _inflight_batches(self) -> int:
        return self.max_inflight_batches - self._slots.value

    def _dispatch_now(self) -> bool:
        """Whether the queue should go out without waiting for the window (see module doc)."""
        queued = len(self._queue)
        if 2 * queued >= self.max_batch:  # heavy load
            return True
        return queued == 1 and self._inflight_batches() == 0  # light load

    async def _wait_window(self) -> None:
        """Wait up to ``window_s`` for more requests unless :meth:`_dispatch_now` says go."""
        deadline = anyio.current_time() + self.window_s
        while not self._dispatch_now():
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return
            with anyio.move_on_after(remaining):
                await self._wakeup.wait()
            self._wakeup = anyio.Event()

    async def _dispatch(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            # Let callers started in the same tick enqueue before deciding.
            await anyio.lowlevel.checkpoint()
            if self._queue and self.window_s > 0:
                self.dispatched_early += self._dispatch_now()
                await self._wait_window()
            while self._queue:
                # Take a slot first, so that callers cancelled while we wait are skipped.
                await self._slots.acquire()
                batch: list[_Pending] = []
                while self._queue and len(batch) < self.max_batch:
                    pending = self._queue.popleft()
                    if not pending.cancelled:
                        batch.append(pending)
                if not batch:
                    self._slots.release()
                    continue
                tg.start_soon(self._run_batch, batch)

    async def _answer_batch(
        self, requests: Sequence[PolicyRequest], on_result: OnResult
    ) -> Sequence[PolicyResponse | BaseException]:
        """The dispatcher's call for one batch. Subclasses that can answer items before the
        rest of their batch is done override it and call ``on_result(index, result)``."""
        return await self.act_batch(requests)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        def deliver(pending: _Pending, result: object) -> None:
            if pending.answered:
                return  # answered early
            if isinstance(result, PolicyResponse):
                pending.response = result
            elif isinstance(result, BaseException):
                pending.error = result
            else:
                pending.error = PolicyError(
                    f"{self.name}: act_batch returned {type(result).__name__}"
                )
            pending.answer()

        try:
            self.batches += 1
            self.batched_requests += len(batch)
            try:
                results = await self._answer_batch(
                    [p.request for p in batch], lambda i, result: deliver(batch[i], result)
                )
                if len(results) != len(batch):
                    raise PolicyError(
                        f"{self.name}: batch of {len(batch)} got {len(results)} answers"
                    )
            except Exception as exc:
                error = exc if isinstance(exc, PolicyError) else PolicyError(repr(exc))
                results = [error] * len(batch)
            for pending, result in zip(batch, results, strict=True):
                deliver(pending, result)
        finally:
            for pending in batch:
                if not pending.answered:
                    pending.error = PolicyError(f"policy {self.name!r} shut down mid-batch")
                    pending.answer()
            self._slots.release()
