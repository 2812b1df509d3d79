"""The episode loop: instruction + observation -> policy -> action -> env.step -> ...

:func:`run_episode` never raises for anything that goes wrong inside an episode: every
failure becomes the trajectory's ``finish_reason`` (and ``error``). Only cancellation
propagates, after the trajectory has been recorded as ``cancelled``.

Every policy call goes through the policy's :class:`PolicyGate`, which the runtime uses to
update weights without stopping the world: it pauses dispatch, aborts (and resamples) or
waits for the calls in flight, and stamps each turn with the weight version that made it.

Time limits (policy call, env reset/step, the episode) are enforced by a :class:`Watchdog`
shared by the scheduler's episodes, not by a timer per call: an episode stores the
deadline of the call it is in and runs under one cancel scope, which the watchdog cancels
once that deadline (or the episode's) has passed; the episode ends as ``timeout`` with the
same message a per-call timer gave ("policy call exceeded 300.0s").

Per-turn timings tile the episode's wall time: ``queue_s`` (waiting at a paused gate; the
first turn's also holds the wait for an env instance and any failed attempt with its
backoff), ``policy_s`` (policy calls, aborted ones included) and ``env_s`` (reset, parsing,
step; the last turn's also holds returning the instance) add up to ``wall_s``, less a few
microseconds of bookkeeping (and the turns of a failed attempt, which are not kept).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import msgspec
import structlog

from gymux._backoff import backoff_delay
from gymux.config import RuntimeConfig
from gymux.env_plugins.protocol import (
    ActionParseError,
    EnvPlugin,
    Observation,
    StepResult,
    Task,
    TransientEnvError,
)
from gymux.env_plugins.registry import PluginError
from gymux.events import EpisodeError, EpisodeStarted, EventBus, TurnFinished
from gymux.messages import Message, PolicyRequest, PolicyResponse
from gymux.policies.base import with_defaults
from gymux.policies.protocol import Policy
from gymux.pool import EnvPool, Lease
from gymux.trajectory import FinishReason, TokenData, Trajectory, Turn

__all__ = ["EpisodeJob", "PolicyGate", "Watchdog", "run_episode"]

_log = structlog.get_logger("gymux.episode")
_T = TypeVar("_T")
_A = TypeVar("_A")
_clock = time.perf_counter


class EpisodeJob(msgspec.Struct, frozen=True, kw_only=True):
    """One episode to run."""

    run_id: str
    episode_id: str
    env_id: str
    task_id: int
    split: str
    sample: int
    max_turns: int
    #: The RL group the episode belongs to (``Workload.group_size``), if any.
    group_id: str | None = None


class _Call:
    """One policy call in flight: the version it started under, how to abort it."""

    __slots__ = ("abort", "label", "scope", "step")

    def __init__(self, step: int, label: str) -> None:
        self.step = step
        self.label = label
        self.scope: anyio.CancelScope | None = None
        self.abort: str | None = None


class PolicyGate:
    """Dispatch control of one policy: pause and resume new calls, abort or await the calls
    in flight, and the weight version (``step``, ``label``) new calls run under.

    The runtime keeps one per hosted policy (``Runtime.update_policy`` drives it); every
    episode's policy calls pass through it. While the gate is open a call costs a set
    insert and removal.
    """

    __slots__ = ("_drained", "_inflight", "_resumed", "base", "label", "lock", "step", "updates")

    def __init__(self, step: int = 0, label: str | None = None) -> None:
        #: The weight version new calls run under (an integer for staleness) and its label.
        self.step = step
        self.label = label if label is not None else str(step)
        #: The step before any update (the step of turns in a trajectory whose
        #: ``policy_step`` is ``None``: it finished before the first update).
        self.base = step
        #: Weight updates applied through this gate.
        self.updates = 0
        #: Held by one weight update at a time.
        self.lock = anyio.Lock()
        self._resumed: anyio.Event | None = None  # set (and dropped) on resume
        self._inflight: set[_Call] = set()
        self._drained: anyio.Event | None = None

    @property
    def paused(self) -> bool:
        return self._resumed is not None

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def pause(self) -> None:
        """Hold new calls until :meth:`resume` (calls in flight go on)."""
        if self._resumed is None:
            self._resumed = anyio.Event()

    def resume(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.set()

    def abort_inflight(self, reason: str) -> int:
        """Cancel every call in flight; their episodes redo the call once the gate opens
        and record ``reason`` as the turn's ``abort``. Returns how many were cancelled."""
        for call in self._inflight:
            call.abort = reason
            if call.scope is not None:
                call.scope.cancel()
        return len(self._inflight)

    async def drained(self) -> None:
        """Wait until no call is in flight."""
        while self._inflight:
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()

    def set_version(self, step: int, label: str) -> None:
        self.step = step
        self.label = label
        self.updates += 1

    async def _opened(self) -> None:
        while self._resumed is not None:
            await self._resumed.wait()

    def _enter(self) -> _Call:
        call = _Call(self.step, self.label)
        self._inflight.add(call)
        return call

    def _leave(self, call: _Call) -> None:
        self._inflight.discard(call)
        if not self._inflight and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.set()


_NEVER = float("inf")


class Watchdog:
    """The time limits of many episodes, enforced by one task (:meth:`run`).

    Instead of a timer per policy call and env step (``anyio.move_on_after``), an episode
    stores the deadline of the call it is in (and what it is) and runs under one cancel
    scope without a deadline; the watchdog cancels the scope of any episode past its call's
    or its own deadline, which the episode then ends as ``timeout``.

    It scans only when a deadline can be due: after a scan at time ``t`` it sleeps until
    the earliest deadline it saw, or until ``t`` plus the shortest limit (``min_limit_s``:
    a deadline set later is at least that far away), whichever comes first. A deadline
    armed sooner than that (a limit shorter than the config's) wakes it at once. So a
    limit is enforced on time, and thousands of episodes waiting on a slow server cost no
    scan at all until one of them could be late.
    """

    __slots__ = ("_contexts", "_nudge", "_wake_at", "min_limit_s", "scans")

    def __init__(self, config: RuntimeConfig) -> None:
        limits = [config.policy_timeout_s, config.step_timeout_s]
        if config.episode_timeout_s is not None:
            limits.append(config.episode_timeout_s)
        #: The shortest limit of the config: the longest the watchdog sleeps.
        self.min_limit_s = min(limits)
        #: Scans so far (each looks at every watched episode once).
        self.scans = 0
        self._contexts: set[_Context] = set()
        self._wake_at = -_NEVER  # when the sleeping scan loop wakes next (-inf: awake)
        self._nudge: anyio.Event | None = None

    @property
    def watched(self) -> int:
        return len(self._contexts)

    async def run(self) -> None:
        """Scan until cancelled (run it in the task group of the episodes it watches)."""
        while True:
            now = _clock()
            wake = now + self.min_limit_s
            self.scans += 1
            for ctx in list(self._contexts):
                deadline = ctx.deadline if ctx.deadline < ctx.ends else ctx.ends
                if deadline <= now:
                    ctx.expire(now)
                elif deadline < wake:
                    wake = deadline
            nudge = self._nudge = anyio.Event()
            self._wake_at = wake
            try:
                with anyio.move_on_after(max(0.0, wake - _clock())):
                    await nudge.wait()
            finally:
                self._wake_at = -_NEVER
                self._nudge = None

    def _due(self, deadline: float) -> None:
        """A deadline was set: wake the scan loop if it would sleep past it."""
        if deadline < self._wake_at and self._nudge is not None:
            self._wake_at = -_NEVER
            self._nudge.set()

    def _add(self, ctx: _Context) -> None:
        self._contexts.add(ctx)
        ctx.watchdog = self  # its later deadlines wake this watchdog when sooner than due
        self._due(ctx.ends)

    def _discard(self, ctx: _Context) -> None:
        self._contexts.discard(ctx)


class _End(Exception):
    """Ends an attempt with a finish reason (internal control flow)."""

    def __init__(self, reason: FinishReason, message: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Context:
    __slots__ = (
        "bus",
        "calls",
        "config",
        "deadline",
        "ends",
        "expired",
        "gate",
        "job",
        "limit_s",
        "mark",
        "oldest",
        "passthrough",
        "plugin",
        "policy",
        "pool",
        "scope",
        "watchdog",
        "what",
    )

    def __init__(
        self,
        job: EpisodeJob,
        plugin: EnvPlugin,
        pool: EnvPool,
        policy: Policy,
        bus: EventBus,
        config: RuntimeConfig,
        gate: PolicyGate,
    ) -> None:
        self.job = job
        self.plugin = plugin
        self.pool = pool
        self.policy = policy
        self.bus = bus
        self.config = config
        self.gate = gate
        #: What an env call lets through as it is: a transient error (retried) and the
        #: backend's cancellation (looked up once, not per call).
        self.passthrough = (TransientEnvError, anyio.get_cancelled_exc_class())
        #: The oldest weight step among the current attempt's turns.
        self.oldest: int | None = None
        #: Where the episode's time was last attributed to a turn (queue, policy, env).
        self.mark = _clock()
        #: The watchdog's view: the episode's scope (no deadline of its own), the deadline
        #: of the call in progress (``inf`` between calls), what that call is and its
        #: limit, the episode's own deadline, and why the watchdog cancelled the scope.
        self.scope: anyio.CancelScope | None = None
        #: The scope the episode's turns run in: a weight update's abort cancels it.
        self.calls: anyio.CancelScope | None = None
        self.deadline = _NEVER
        self.what = ""
        self.limit_s = 0.0
        self.ends = _NEVER
        self.expired: str | None = None
        self.watchdog: Watchdog | None = None

    def arm(self, what: str, limit_s: float) -> None:
        """The next ``limit_s`` seconds are ``what``'s (a policy call, an env call)."""
        self.what = what
        self.limit_s = limit_s
        self.deadline = _clock() + limit_s
        if self.watchdog is not None:
            self.watchdog._due(self.deadline)

    def expire(self, now: float) -> None:
        """Called by the watchdog: a deadline has passed; cancel the episode's scope."""
        scope = self.scope
        if scope is None or self.expired is not None:
            return
        if self.deadline <= now:
            self.expired = f"{self.what} exceeded {self.limit_s}s"
        else:
            self.expired = f"episode exceeded {self.config.episode_timeout_s}s"
        scope.cancel()


async def run_episode(
    job: EpisodeJob,
    *,
    plugin: EnvPlugin,
    pool: EnvPool,
    policy: Policy,
    bus: EventBus,
    config: RuntimeConfig,
    record: Callable[[Trajectory], Awaitable[None]],
    gate: PolicyGate | None = None,
    watchdog: Watchdog | None = None,
) -> Trajectory:
    """Run one episode to its end, hand its trajectory to ``record`` and return it.

    On cancellation the trajectory is recorded as ``cancelled`` (shielded, bounded by
    ``close_timeout_s``) before the cancellation propagates. ``gate``: the policy's
    :class:`PolicyGate` (the runtime's; a private one when ``None``). ``watchdog``: the
    :class:`Watchdog` that enforces the time limits, whose :meth:`Watchdog.run` the caller
    runs (the scheduler's); when ``None`` the episode runs a private one.
    """
    if watchdog is None:
        ended: Trajectory | None = None
        private = Watchdog(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(private.run)
            try:
                ended = await run_episode(
                    job,
                    plugin=plugin,
                    pool=pool,
                    policy=policy,
                    bus=bus,
                    config=config,
                    record=record,
                    gate=gate,
                    watchdog=private,
                )
            finally:
                tg.cancel_scope.cancel()
        assert ended is not None  # only cancellation leaves without one, and it propagates
        return ended
    if gate is None:
        step = getattr(policy, "step", None)
        gate = PolicyGate(step if isinstance(step, int) else 0)
    policy = with_defaults(policy)  # a policy written without the optional members runs too
    ctx = _Context(job, plugin, pool, policy, bus, config, gate)
    spec = plugin.spec
    traj = Trajectory(
        run_id=job.run_id,
        episode_id=job.episode_id,
        env_id=job.env_id,
        env_version=spec.version,
        task_id=job.task_id,
        split=job.split,
        sample=job.sample,
        policy=policy.name,
        policy_version=policy.version,
        policy_step=policy.step,
        started_at=time.time(),
        group_id=job.group_id,
    )
    start = ctx.mark = _clock()
    if config.episode_timeout_s is not None:
        ctx.ends = start + config.episode_timeout_s
    try:
        with anyio.CancelScope() as scope:
            ctx.scope = scope
            watchdog._add(ctx)
            try:
                await _run_attempts(ctx, traj)
            finally:
                watchdog._discard(ctx)
                ctx.scope = None
        if scope.cancelled_caught:
            message = ctx.expired or f"episode exceeded {config.episode_timeout_s}s"
            _finish(traj, FinishReason.TIMEOUT, message)
            if not message.startswith("episode "):  # a call's limit, as an _End would
                _publish_error(ctx, traj, traj.attempts, will_retry=False)
    except anyio.get_cancelled_exc_class():
        _finish(traj, FinishReason.CANCELLED, "run cancelled")
        traj.wall_s = _clock() - start
        traj.tokens = _take_tokens(policy, job.episode_id)
        _complete(ctx, traj)
        with anyio.CancelScope(shield=True), anyio.move_on_after(config.close_timeout_s):
            await record(traj)
        raise
    traj.wall_s = _clock() - start
    traj.success = traj.finish_reason is FinishReason.DONE and spec.success.is_success(traj.reward)
    traj.tokens = _take_tokens(policy, job.episode_id)
    _complete(ctx, traj)
    await record(traj)
    return traj


_TRUNCATED = (FinishReason.MAX_TURNS, FinishReason.CONTEXT_LIMIT, FinishReason.TIMEOUT)


def _complete(ctx: _Context, traj: Trajectory) -> None:
    """What is known only at the end: terminal/truncated, each turn's token span, the
    weight-version offsets, and the oldest weight step (``policy_step``)."""
    traj.terminal = traj.finish_reason is FinishReason.DONE
    traj.truncated = traj.finish_reason in _TRUNCATED
    if ctx.oldest is not None and (ctx.gate.updates or traj.policy_step is not None):
        traj.policy_step = ctx.oldest
    spans = _response_spans(traj.tokens.loss_mask) if traj.tokens is not None else []
    if len(spans) != len(traj.turns):
        spans = []  # the mask does not hold one run per turn: no spans rather than wrong ones
    for i, turn in enumerate(traj.turns):
        start = 0
        if spans:
            turn.span = spans[i]
            start = spans[i][0]
        if turn.weight_versions is not None:
            turn.weight_versions = [(start + offset, v) for offset, v in turn.weight_versions]


def _response_spans(mask: bytes) -> list[tuple[int, int]]:
    """The ``[start, end)`` runs of 1s in a loss mask: one per model response."""
    spans: list[tuple[int, int]] = []
    n = len(mask)
    i = mask.find(1)
    while i != -1:
        j = mask.find(0, i)
        end = n if j == -1 else j
        spans.append((i, end))
        if j == -1:
            break
        i = mask.find(1, j)
    return spans


def _take_tokens(policy: Policy, episode_id: str) -> TokenData | None:
    """The episode's exact token record from a policy that keeps one
    (``finish_episode(episode_id) -> TokenData | None``), which also frees its state."""
    try:
        tokens: object = policy.finish_episode(episode_id)
    except Exception as exc:
        _log.warning("policy finish_episode failed", episode_id=episode_id, error=repr(exc))
        return None
    if tokens is not None and not isinstance(tokens, TokenData):
        _log.warning(
            "finish_episode returned no TokenData",
            episode_id=episode_id,
            returned=type(tokens).__name__,
        )
        return None
    return tokens


def _finish(traj: Trajectory, reason: FinishReason, message: str | None = None) -> None:
    traj.finish_reason = reason
    traj.error = message


async def _run_attempts(ctx: _Context, traj: Trajectory) -> None:
    config = ctx.config
    attempt = 0
    while True:
        attempt += 1
        traj.attempts = attempt
        traj.messages = []
        traj.turns = []
        traj.reward = 0.0
        traj.invalid_actions = 0
        ctx.oldest = None
        ctx.bus.publish(
            EpisodeStarted(
                run_id=ctx.job.run_id,
                episode_id=ctx.job.episode_id,
                env_id=ctx.job.env_id,
                task_id=ctx.job.task_id,
                sample=ctx.job.sample,
                attempt=attempt,
            )
        )
        try:
            reason = await _attempt(ctx, traj)
            _finish(traj, reason)
            return
        except _End as end:
            _finish(traj, end.reason, end.message)
            if end.reason is not FinishReason.DONE:
                _publish_error(ctx, traj, attempt, will_retry=False)
            return
        except TransientEnvError as exc:
            message = f"transient env error: {_describe(exc)}"
            _finish(traj, FinishReason.ENV_ERROR, message)
            retry = attempt <= config.env_retries
            _publish_error(ctx, traj, attempt, will_retry=retry)
            if not retry:
                traj.error = f"{message} (after {attempt} attempts)"
                return
            _take_tokens(ctx.policy, ctx.job.episode_id)  # the failed attempt's tokens go
            await anyio.sleep(
                backoff_delay(attempt, config.retry_backoff_s, config.retry_backoff_max_s)
            )


def _publish_error(ctx: _Context, traj: Trajectory, attempt: int, *, will_retry: bool) -> None:
    ctx.bus.publish(
        EpisodeError(
            run_id=ctx.job.run_id,
            episode_id=ctx.job.episode_id,
            env_id=ctx.job.env_id,
            reason=traj.finish_reason,
            message=traj.error or "",
            attempt=attempt,
            will_retry=will_retry,
        )
    )


async def _attempt(ctx: _Context, traj: Trajectory) -> FinishReason:
    config = ctx.config
    # Time not yet attributed (before the first attempt's lease, or a failed attempt and
    # its backoff) goes to the first turn's queue_s.
    begun = ctx.mark
    try:
        lease_cm = ctx.pool.lease(create_timeout_s=config.step_timeout_s)
        lease = await lease_cm.__aenter__()
    except TimeoutError:
        raise _End(
            FinishReason.TIMEOUT, f"creating an env instance exceeded {config.step_timeout_s}s"
        ) from None
    except (TransientEnvError, anyio.get_cancelled_exc_class()):
        raise
    except PluginError as exc:
        raise _End(FinishReason.ENV_ERROR, str(exc)) from None
    except Exception as exc:
        raise _End(FinishReason.ENV_ERROR, f"creating env failed: {_describe(exc)}") from None
    try:
        return await _loop(ctx, traj, lease, begun)
    except BaseException as exc:
        # Anything but a clean ending leaves the instance in an unknown state.
        if not isinstance(exc, _End) or exc.reason in (
            FinishReason.ENV_ERROR,
            FinishReason.TIMEOUT,
        ):
            lease.broken = True
        raise
    finally:
        await lease_cm.__aexit__(None, None, None)
        if traj.turns:  # returning the instance counts as the last turn's env time
            now = _clock()
            traj.turns[-1].env_s += now - ctx.mark
            ctx.mark = now


async def _env_call(
    ctx: _Context,
    call: Callable[[_A], Awaitable[object]],
    arg: _A,
    expected: type[_T],
    what: str,
) -> _T:
    """Await ``call(arg)`` (an env call) within the step time limit; any failure becomes an
    :class:`_End` (``env_error``).

    A transient env error and the backend's cancellation (``ctx.passthrough``) propagate as
    they are; another exception, and a result that is not ``expected``, end the episode.
    Running out of time is the watchdog's: it cancels the episode's scope, which ends the
    episode as ``timeout`` ("``what`` exceeded ``limit``s").
    """
    ctx.arm(what, ctx.config.step_timeout_s)
    try:
        result = await call(arg)
    except ctx.passthrough:
        raise
    except Exception as exc:
        raise _End(FinishReason.ENV_ERROR, f"{what} failed: {_describe(exc)}") from None
    finally:
        ctx.deadline = _NEVER
    if not isinstance(result, expected):
        raise _End(
            FinishReason.ENV_ERROR,
            f"protocol violation: {what} returned {type(result).__name__}, not {expected.__name__}",
        )
    return result


class _Progress:
    """Where an episode's turns are: the turn, its request and its policy call's timing so
    far. A weight update that aborts the call cancels the cancel scope the turns run in
    (one scope per episode, not one per call: with thousands of episodes a scope per call
    was ~10% of a turn's CPU); :func:`_loop` then goes on in a new scope from here."""

    __slots__ = (
        "abort",
        "admissible",
        "answer",
        "index",
        "lease_s",
        "obs_text",
        "policy_s",
        "queue_s",
        "request",
        "reset_s",
        "since",
    )

    def __init__(self, obs_text: str, admissible: list[str] | None, since: float) -> None:
        self.index = 0
        self.request: PolicyRequest | None = None  # the current turn's, once built
        #: A call answered after the gate had aborted it (kept, as if not aborted).
        self.answer: tuple[PolicyResponse, _Call] | None = None
        self.obs_text = obs_text
        self.admissible = admissible
        self.since = since  # where the current call's queue time counts from
        self.queue_s = 0.0
        self.policy_s = 0.0
        self.abort: str | None = None
        self.lease_s = 0.0  # the first turn's wait for an env instance
        self.reset_s = 0.0  # and its reset

    def next_turn(self, since: float) -> None:
        self.index += 1
        self.request = None
        self.since = since
        self.queue_s = self.policy_s = 0.0
        self.abort = None


async def _call_policy(ctx: _Context, p: _Progress) -> tuple[PolicyResponse, _Call] | None:
    """The current turn's policy call through the gate; ``None``: the gate aborted it (the
    turns' scope is cancelled) and the caller must leave that scope before awaiting anything
    else (the call is redone, or its late answer used, in the next scope).

    Waits while the gate is paused (``p.queue_s``, from ``p.since``); an aborted call's time
    counts as ``p.policy_s`` and its reason as ``p.abort``."""
    gate = ctx.gate
    request = p.request
    assert request is not None
    if gate._resumed is not None:
        await gate._opened()
    sent = _clock()
    p.queue_s += sent - p.since
    call = gate._enter()
    call.scope = ctx.calls
    result: object = None
    # The watchdog enforces the limit (it cancels the episode's scope).
    ctx.arm("policy call", ctx.config.policy_timeout_s)
    try:
        result = await ctx.policy.act(request)
    except anyio.get_cancelled_exc_class():
        if call.abort is not None:  # the gate's: the turns' scope catches it
            p.abort = call.abort
        raise
    except Exception as exc:
        if call.abort is None:
            raise _End(FinishReason.POLICY_ERROR, f"policy call failed: {_describe(exc)}") from None
    finally:
        ctx.deadline = _NEVER
        gate._leave(call)
        p.since = _clock()
        p.policy_s += p.since - sent
    if call.abort is not None:
        if result is None:  # failed once aborted: redone
            p.abort = call.abort
        elif isinstance(result, PolicyResponse):
            p.answer = (result, call)  # answered before the abort landed: kept
        return None
    if not isinstance(result, PolicyResponse):
        raise _End(
            FinishReason.POLICY_ERROR,
            f"protocol violation: policy call returned {type(result).__name__}, not PolicyResponse",
        )
    return result, call


def _versions(
    call: _Call, gate: PolicyGate, response: PolicyResponse
) -> list[tuple[int, str]] | None:
    """A turn's weight versions by token offset (relative to its response) when it was
    generated under more than one; ``None`` when under one."""
    if response.weight_versions:
        return list(response.weight_versions)
    if gate.step == call.step:
        return None
    # The call spanned an update and the policy did not say where: the whole response is
    # attributed to the version it started under (the older one, safe for staleness), and
    # the new version is recorded as starting after it.
    end = len(response.token_ids) if response.token_ids is not None else response.completion_tokens
    return [(0, call.label), (end or 0, gate.label)]


async def _loop(ctx: _Context, traj: Trajectory, lease: Lease, begun: float) -> FinishReason:
    t = _clock()
    task = Task(id=ctx.job.task_id, split=ctx.job.split)
    observation = await _env_call(ctx, lease.env.reset, task, Observation, "env reset")
    mark = ctx.mark = _clock()
    messages = traj.messages
    messages.append(Message(role="user", content=ctx.plugin.spec.instruction))
    messages.append(Message(role="assistant", content="OK"))
    messages.append(Message(role="user", content=observation.text))
    p = _Progress(observation.text, observation.admissible_actions, mark)
    # The first turn carries the wait for an env instance (queue) and the reset (env).
    p.lease_s = t - begun
    p.reset_s = mark - t
    while True:
        reason: FinishReason | None = None
        with anyio.CancelScope() as scope:
            ctx.calls = scope
            reason = await _turns(ctx, traj, lease, p)
        ctx.calls = None
        if reason is not None:
            return reason
        # The gate aborted a policy call (and cancelled this scope): on in a new scope.


async def _turns(
    ctx: _Context, traj: Trajectory, lease: Lease, p: _Progress
) -> FinishReason | None:
    """The turns from ``p`` on; ``None`` when a weight update aborted a policy call."""
    job = ctx.job
    parse = ctx.plugin.parse_action
    bus = ctx.bus
    gate = ctx.gate
    messages = traj.messages

    while p.index < job.max_turns:
        index = p.index
        if p.answer is not None:
            (response, call), p.answer = p.answer, None
        else:
            if p.request is None:
                p.request = PolicyRequest(
                    episode_id=job.episode_id,
                    env_id=job.env_id,
                    task_id=job.task_id,
                    turn=index,
                    messages=list(messages),
                    admissible_actions=p.admissible,
                    sample=job.sample,
                )
            got = await _call_policy(ctx, p)
            if got is None:
                return None
            response, call = got
            del got  # (not held through the next call: see below)
        answered = _clock()
        if ctx.oldest is None or call.step < ctx.oldest:
            ctx.oldest = call.step
        if response.finish_reason == "context_limit":
            raise _End(FinishReason.CONTEXT_LIMIT, "prompt exceeds the model's context")
        messages.append(Message(role="assistant", content=response.text, loss=True))
        turn = Turn(
            index=index,
            observation=p.obs_text,
            raw_output=response.text,
            action=None,
            policy_s=p.policy_s,
            env_s=p.reset_s if index == 0 else 0.0,
            queue_s=p.queue_s + p.lease_s if index == 0 else p.queue_s,
            prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens,
            policy_finish=response.finish_reason,
            weight_version=response.weight_version or call.label,
            abort=p.abort,
            weight_versions=_versions(call, gate, response),
        )
        # Not held through the next turn's policy call: with thousands of episodes
        # waiting on the policy, what each one holds is what the collector walks.
        text = response.text
        del response, call
        try:
            action = parse(text)
        except ActionParseError as exc:
            traj.invalid_actions += 1
            turn.parse_error = str(exc)
            traj.turns.append(turn)
            p.obs_text = f"Invalid action: {exc}"
            messages.append(Message(role="user", content=p.obs_text))
            mark = ctx.mark = _clock()
            turn.env_s += mark - answered
            p.next_turn(mark)
            bus.publish(
                TurnFinished(
                    run_id=job.run_id, episode_id=job.episode_id, env_id=job.env_id, turn=turn
                )
            )
            continue
        except Exception as exc:
            traj.turns.append(turn)
            raise _End(FinishReason.ENV_ERROR, f"action parser crashed: {_describe(exc)}") from None
        turn.action = action
        try:
            result = await _env_call(ctx, lease.env.step, action, StepResult, "env step")
        finally:
            mark = ctx.mark = _clock()
            turn.env_s += mark - answered
            traj.turns.append(turn)
        turn.reward = result.reward
        turn.done = result.done
        traj.reward = result.reward
        bus.publish(
            TurnFinished(run_id=job.run_id, episode_id=job.episode_id, env_id=job.env_id, turn=turn)
        )
        if result.done:
            return FinishReason.DONE
        p.obs_text = result.observation.text
        p.admissible = result.observation.admissible_actions
        del result
        messages.append(Message(role="user", content=p.obs_text))
        p.next_turn(mark)
    return FinishReason.MAX_TURNS
