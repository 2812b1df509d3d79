"""The episode loop: instruction + observation -> policy -> action -> env.step -> ...

:func:`run_episode` never raises for anything that goes wrong inside an episode: every
failure becomes the trajectory's ``finish_reason`` (and ``error``). Only cancellation
propagates, after the trajectory has been recorded as ``cancelled``.
"""

from __future__ import annotations

import functools
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

__all__ = ["EpisodeJob", "run_episode"]

_log = structlog.get_logger("gymux.episode")
_T = TypeVar("_T")
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
    __slots__ = ("bus", "config", "job", "plugin", "policy", "pool")

    def __init__(
        self,
        job: EpisodeJob,
        plugin: EnvPlugin,
        pool: EnvPool,
        policy: Policy,
        bus: EventBus,
        config: RuntimeConfig,
    ) -> None:
        self.job = job
        self.plugin = plugin
        self.pool = pool
        self.policy = policy
        self.bus = bus
        self.config = config


async def run_episode(
    job: EpisodeJob,
    *,
    plugin: EnvPlugin,
    pool: EnvPool,
    policy: Policy,
    bus: EventBus,
    config: RuntimeConfig,
    record: Callable[[Trajectory], Awaitable[None]],
) -> Trajectory:
    """Run one episode to its end, hand its trajectory to ``record`` and return it.

    On cancellation the trajectory is recorded as ``cancelled`` (shielded, bounded by
    ``close_timeout_s``) before the cancellation propagates.
    """
    policy = with_defaults(policy)  # a policy written without the optional members runs too
    ctx = _Context(job, plugin, pool, policy, bus, config)
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
    )
    start = _clock()
    try:
        with anyio.move_on_after(config.episode_timeout_s) as scope:
            await _run_attempts(ctx, traj)
        if scope.cancelled_caught:
            _finish(traj, FinishReason.TIMEOUT, f"episode exceeded {config.episode_timeout_s}s")
    except anyio.get_cancelled_exc_class():
        _finish(traj, FinishReason.CANCELLED, "run cancelled")
        traj.wall_s = _clock() - start
        traj.tokens = _take_tokens(policy, job.episode_id)
        with anyio.CancelScope(shield=True), anyio.move_on_after(config.close_timeout_s):
            await record(traj)
        raise
    traj.wall_s = _clock() - start
    traj.success = traj.finish_reason is FinishReason.DONE and spec.success.is_success(traj.reward)
    traj.tokens = _take_tokens(policy, job.episode_id)
    await record(traj)
    return traj


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
        return await _loop(ctx, traj, lease)
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


async def _bounded(
    call: Callable[[], Awaitable[object]],
    expected: type[_T],
    *,
    what: str,
    limit_s: float,
    failure: FinishReason,
    passthrough: tuple[type[BaseException], ...],
) -> _T:
    """Await ``call()`` within ``timeout``; any failure becomes an :class:`_End`.

    Exceptions in ``passthrough`` (cancellation, transient env errors) propagate as they
    are; other exceptions and a result that is not ``expected`` end the episode with
    ``failure``; running out of time ends it with ``timeout``.
    """
    result: object = None
    with anyio.move_on_after(limit_s) as scope:
        try:
            result = await call()
        except passthrough:
            raise
        except Exception as exc:
            raise _End(failure, f"{what} failed: {_describe(exc)}") from None
    if scope.cancelled_caught:
        raise _End(FinishReason.TIMEOUT, f"{what} exceeded {limit_s}s")
    if not isinstance(result, expected):
        raise _End(
            failure,
            f"protocol violation: {what} returned {type(result).__name__}, not {expected.__name__}",
        )
    return result


async def _env_call(
    ctx: _Context, call: Callable[[], Awaitable[object]], kind: type[_T], what: str
) -> _T:
    """One env call under the step time limit; a transient failure or a cancel passes through."""
    return await _bounded(
        call,
        kind,
        what=what,
        limit_s=ctx.config.step_timeout_s,
        failure=FinishReason.ENV_ERROR,
        passthrough=(TransientEnvError, anyio.get_cancelled_exc_class()),
    )


async def _call_policy(ctx: _Context, request: PolicyRequest) -> PolicyResponse:
    return await _bounded(
        lambda: ctx.policy.act(request),
        PolicyResponse,
        what="policy call",
        limit_s=ctx.config.policy_timeout_s,
        failure=FinishReason.POLICY_ERROR,
        passthrough=(anyio.get_cancelled_exc_class(),),
    )


async def _loop(ctx: _Context, traj: Trajectory, lease: Lease) -> FinishReason:
    job = ctx.job
    spec = ctx.plugin.spec
    parse = ctx.plugin.parse_action
    bus = ctx.bus

    t = _clock()
    task = Task(id=ctx.job.task_id, split=ctx.job.split)
    observation = await _env_call(ctx, lambda: lease.env.reset(task), Observation, "env reset")
    reset_s = _clock() - t
    messages = traj.messages
    messages.append(Message(role="user", content=spec.instruction))
    messages.append(Message(role="assistant", content="OK"))
    messages.append(Message(role="user", content=observation.text))
    obs_text = observation.text
    admissible = observation.admissible_actions

    for index in range(job.max_turns):
        request = PolicyRequest(
            episode_id=job.episode_id,
            env_id=job.env_id,
            task_id=job.task_id,
            turn=index,
            messages=list(messages),
            admissible_actions=admissible,
            sample=job.sample,
        )
        t = _clock()
        response = await _call_policy(ctx, request)
        policy_s = _clock() - t
        if response.finish_reason == "context_limit":
            raise _End(FinishReason.CONTEXT_LIMIT, "prompt exceeds the model's context")
        messages.append(Message(role="assistant", content=response.text, loss=True))
        turn = Turn(
            index=index,
            observation=obs_text,
            raw_output=response.text,
            action=None,
            policy_s=policy_s,
            env_s=reset_s if index == 0 else 0.0,
            prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens,
            policy_finish=response.finish_reason,
            weight_version=response.weight_version,
        )
        try:
            action = parse(response.text)
        except ActionParseError as exc:
            traj.invalid_actions += 1
            turn.parse_error = str(exc)
            traj.turns.append(turn)
            obs_text = f"Invalid action: {exc}"
            messages.append(Message(role="user", content=obs_text))
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
        t = _clock()
        try:
            result = await _env_call(
                ctx, functools.partial(lease.env.step, action), StepResult, "env step"
            )
        finally:
            turn.env_s += _clock() - t
            traj.turns.append(turn)
        turn.reward = result.reward
        turn.done = result.done
        traj.reward = result.reward
        bus.publish(
            TurnFinished(run_id=job.run_id, episode_id=job.episode_id, env_id=job.env_id, turn=turn)
        )
        if result.done:
            return FinishReason.DONE
        obs_text = result.observation.text
        admissible = result.observation.admissible_actions
        messages.append(Message(role="user", content=obs_text))
    return FinishReason.MAX_TURNS
