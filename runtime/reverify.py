"""Recomputing stored rewards by replaying the stored actions (``gymux store reverify``).

A fresh instance of each trajectory's env is reset to the same task and stepped with the
actions the episode took, in order, with no model; the rewards and ``done`` flags the env
gives now are compared with the stored ones. Useful after a reward fix (bump the env's
version, reverify the old store, see which episodes change) or to check that an env is
deterministic. Turns whose action did not parse are skipped, as the episode skipped them.

Disagreements are reported per episode: the first turn whose reward or ``done`` differs,
and the final reward both ways. Trajectories that cannot be replayed are counted by reason:
the env is not installed, or the trajectory holds no actions (imported text, a failed
reset).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import anyio
import msgspec

from gymux.env_plugins.adapters import make_instance
from gymux.env_plugins.protocol import StepResult, Task
from gymux.env_plugins.registry import Registry
from gymux.errors import GymuxError
from gymux.trajectory import Trajectory

__all__ = ["Disagreement", "ReverifyReport", "reverify"]


class Disagreement(msgspec.Struct, kw_only=True):
    """One episode whose replay differs from what was stored."""

    episode_id: str
    env_id: str
    task_id: int
    #: Index of the first turn whose reward or done differs (``None``: only the final
    #: reward does, or the replay failed).
    turn: int | None
    stored_reward: float
    replayed_reward: float | None
    stored_env_version: str
    replayed_env_version: str
    note: str


class ReverifyReport(msgspec.Struct, kw_only=True):
    checked: int = 0
    agreed: int = 0
    disagreements: list[Disagreement] = msgspec.field(default_factory=list)
    #: Trajectories not replayed, by reason.
    skipped: dict[str, int] = msgspec.field(default_factory=dict)
    #: Replayed under another env version than they were recorded with.
    version_changed: int = 0


def _close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance * max(1.0, abs(a), abs(b))


async def _replay(
    trajectory: Trajectory,
    registry: Registry,
    limiter: anyio.CapacityLimiter,
    tolerance: float,
    report: ReverifyReport,
) -> None:
    plugin = registry.get(trajectory.env_id)
    version = plugin.spec.version

    def differ(turn: int | None, replayed: float | None, note: str) -> Disagreement:
        return Disagreement(
            episode_id=trajectory.episode_id,
            env_id=trajectory.env_id,
            task_id=trajectory.task_id,
            turn=turn,
            stored_reward=trajectory.reward,
            replayed_reward=replayed,
            stored_env_version=trajectory.env_version,
            replayed_env_version=version,
            note=note,
        )

    report.checked += 1
    if version != trajectory.env_version:
        report.version_changed += 1
    env = await make_instance(plugin, limiter)
    found: Disagreement | None = None
    replayed: float | None = None
    try:
        await env.reset(Task(id=trajectory.task_id, split=trajectory.split))
        for turn in trajectory.turns:
            if turn.action is None:
                continue
            result = await env.step(turn.action)
            if not isinstance(result, StepResult):
                raise GymuxError(f"step returned {type(result).__name__}")
            replayed = result.reward
            if found is None and (
                not _close(result.reward, turn.reward, tolerance) or result.done != turn.done
            ):
                found = differ(
                    turn.index,
                    result.reward,
                    f"turn {turn.index}: reward {turn.reward:g} -> {result.reward:g}, "
                    f"done {turn.done} -> {result.done}",
                )
            if result.done:
                break
        final = replayed if replayed is not None else 0.0
        if found is None and not _close(final, trajectory.reward, tolerance):
            found = differ(None, final, f"final reward {trajectory.reward:g} -> {final:g}")
    except Exception as exc:  # the env failed on replay: a disagreement, not a crash
        found = differ(None, replayed, f"replay failed: {type(exc).__name__}: {exc}")
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await env.close()  # a failing close does not change the verdict
    if found is None:
        report.agreed += 1
    else:
        report.disagreements.append(found)


async def reverify(
    trajectories: Iterable[Trajectory],
    registry: Registry,
    *,
    concurrency: int = 8,
    tolerance: float = 1e-9,
) -> ReverifyReport:
    """Replay every trajectory's actions in a fresh env instance (``concurrency`` at once)
    and compare the rewards; see the module doc."""
    report = ReverifyReport()
    limiter = anyio.CapacityLimiter(concurrency)
    slots = anyio.Semaphore(concurrency)
    known = set(registry.ids())

    async def one(trajectory: Trajectory) -> None:
        try:
            await _replay(trajectory, registry, limiter, tolerance, report)
        finally:
            slots.release()

    async with anyio.create_task_group() as tg:
        for trajectory in trajectories:
            reason = None
            if trajectory.env_id not in known:
                reason = f"env {trajectory.env_id!r} not installed"
            elif not any(turn.action is not None for turn in trajectory.turns):
                reason = "no actions to replay"
            if reason is not None:
                report.skipped[reason] = report.skipped.get(reason, 0) + 1
                continue
            await slots.acquire()
            tg.start_soon(one, trajectory)
    report.disagreements.sort(key=lambda d: d.episode_id)
    return report
