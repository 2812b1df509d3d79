"""Scheduling episodes: a global cap on running episodes, per-env instance pools, and
isolation (one episode's failure is recorded on that episode and stops nothing else).

Workloads are planned lazily (:class:`JobPlan`): episodes are created as slots free up, so
memory follows the running episodes, not the planned ones.

RL workloads (``Workload.group_size``) run in groups: each group starts ``group_size +
oversample`` episodes, keeps the first ``group_size`` that finish, cancels the rest, and
hands the kept ones to the sinks together (``record_group``). With ``max_staleness`` an
episode that finishes with a turn older than that many weight versions is discarded or
restarted. :class:`RolloutStats` counts what happened."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Literal

import anyio
import anyio.abc
import msgspec
import structlog

from gymux.config import MAX_EPISODES, ConfigError, RuntimeConfig, Workload
from gymux.env_plugins.protocol import EnvPlugin
from gymux.episode import EpisodeJob, PolicyGate, Watchdog, run_episode
from gymux.events import EventBus
from gymux.policies.protocol import Policy
from gymux.pool import EnvPool
from gymux.trajectory import FinishReason, Trajectory

__all__ = ["JobPlan", "Rollout", "RolloutStats", "Scheduler", "plan_jobs"]

_log = structlog.get_logger("gymux.scheduler")

Record = Callable[[Trajectory], Awaitable[None]]
RecordGroup = Callable[[list[Trajectory]], Awaitable[None]]

#: Restarts of one stale episode before it is discarded (a bound, so that weight updates
#: faster than an episode cannot keep it running for ever).
MAX_STALE_RESTARTS = 8


class RolloutStats(msgspec.Struct, kw_only=True):
    """What the RL options of a run did (``RunResult.rollout``)."""

    #: Groups handed to the sinks.
    groups_kept: int = 0
    #: Groups dropped because all their rewards were equal (``drop_zero_variance``).
    groups_zero_variance: int = 0
    #: Groups dropped because fewer than ``group_size`` of their episodes finished (errors
    #: discarded as stale, or the run was cancelled).
    groups_incomplete: int = 0
    #: Groups dropped because a kept episode had become stale by the time the group was
    #: complete.
    groups_stale: int = 0
    #: Over-sampled episodes cancelled (or never started) once their group was complete.
    surplus_cancelled: int = 0
    #: Episodes discarded as stale.
    stale_discarded: int = 0
    #: Stale episodes restarted from their reset.
    stale_restarted: int = 0


class Rollout:
    """A run's RL options and counters: groups and the staleness bound."""

    __slots__ = ("drop_zero_variance", "gate", "keep", "max_staleness", "restart", "stats")

    def __init__(
        self,
        gate: PolicyGate,
        *,
        keep: int | None = None,
        drop_zero_variance: bool = False,
        max_staleness: int | None = None,
        stale: Literal["discard", "restart"] = "discard",
    ) -> None:
        self.gate = gate
        self.keep = keep
        self.drop_zero_variance = drop_zero_variance
        self.max_staleness = max_staleness
        self.restart = stale == "restart"
        self.stats = RolloutStats()

    @classmethod
    def of(cls, workload: Workload, gate: PolicyGate) -> Rollout:
        return cls(
            gate,
            keep=workload.group_size,
            drop_zero_variance=workload.drop_zero_variance,
            max_staleness=workload.max_staleness,
            stale=workload.stale,
        )

    def stale(self, trajectory: Trajectory) -> bool:
        """Whether ``trajectory`` has a turn more than ``max_staleness`` versions old now."""
        limit = self.max_staleness
        if limit is None or not trajectory.turns:
            return False
        oldest = trajectory.policy_step
        if oldest is None:  # finished before the first update: every turn at the base step
            oldest = self.gate.base
        return self.gate.step - oldest > limit


class JobPlan:
    """The episodes of a workload, planned lazily: task ids x samples, in that order.

    Iterating yields fresh :class:`EpisodeJob` objects one at a time (a plan of 10^8
    episodes costs no memory until they run, and the scheduler holds only the running
    ones); ``len()`` is computed, not counted.
    """

    __slots__ = ("_group", "_ids", "_max_turns", "_run_id", "_samples", "_spec_id", "_split")

    def __init__(
        self,
        run_id: str,
        spec_id: str,
        ids: Sequence[int],
        split: str,
        samples: int,
        max_turns: int,
        group: int | None = None,
    ) -> None:
        self._run_id = run_id
        self._spec_id = spec_id
        self._ids = ids
        self._split = split
        self._samples = samples
        self._max_turns = max_turns
        #: Episodes started per group (``group_size + oversample``); ``None``: no groups.
        self._group = group

    def __len__(self) -> int:
        return len(self._ids) * self._samples * (self._group or 1)

    def __iter__(self) -> Iterator[EpisodeJob]:
        if self._group is not None:
            for _, members in self.groups():
                yield from members
            return
        for task_id in self._ids:
            for sample in range(self._samples):
                yield self._job(task_id, sample, None)

    def groups(self) -> Iterator[tuple[str, list[EpisodeJob]]]:
        """``(group_id, episodes)`` per group: ``samples`` groups per task, each of
        ``group_size + oversample`` episodes (sample indices ``g * size .. g * size + size-1``)."""
        size = self._group or 1
        for task_id in self._ids:
            for g in range(self._samples):
                group_id = f"{self._run_id}:{self._spec_id}:{task_id}:g{g}"
                members = [self._job(task_id, g * size + i, group_id) for i in range(size)]
                yield group_id, members

    def _job(self, task_id: int, sample: int, group_id: str | None) -> EpisodeJob:
        run_id, env_id = self._run_id, self._spec_id
        return EpisodeJob(
            run_id=run_id,
            episode_id=f"{run_id}:{env_id}:{task_id}:{sample}",
            env_id=env_id,
            task_id=task_id,
            split=self._split,
            sample=sample,
            max_turns=self._max_turns,
            group_id=group_id,
        )


def plan_jobs(run_id: str, workload: Workload, plugin: EnvPlugin) -> JobPlan:
    """Expand a workload into episodes: task ids x samples, in that order (lazily).

    Raises :class:`ConfigError` for unknown task ids and for a workload of more than
    :data:`~gymux.config.MAX_EPISODES` episodes.
    """
    spec = plugin.spec
    ids: Sequence[int]
    if isinstance(workload.tasks, str):
        split = spec.split(workload.tasks)
        ids, split_name = split.ids, split.name
    else:
        ids, split_name = list(workload.tasks), ""
        membership = {tid: name for name, s in spec.splits.items() for tid in s.ids}
        unknown = [tid for tid in ids if tid not in membership]
        if unknown:
            raise ConfigError(f"env {spec.id!r} has no task ids {unknown[:10]}")
        names = {membership[tid] for tid in ids}
        split_name = names.pop() if len(names) == 1 else ""
    if workload.limit is not None:
        ids = ids[: workload.limit]
    group = None if workload.group_size is None else workload.group_size + workload.oversample
    total = len(ids) * workload.samples * (group or 1)
    if total > MAX_EPISODES:
        per = "" if group is None else f" x {group:,} episodes per group"
        raise ConfigError(
            f"workload {spec.id}: {len(ids):,} tasks x {workload.samples:,} samples{per} = "
            f"{total:,} episodes; a workload may plan at most {MAX_EPISODES:,}"
        )
    max_turns = workload.max_turns or spec.max_turns
    return JobPlan(run_id, spec.id, ids, split_name, workload.samples, max_turns, group)


class Scheduler:
    """Runs episodes under the runtime's limits. Shared by all runs of a runtime."""

    def __init__(self, config: RuntimeConfig, bus: EventBus) -> None:
        self.config = config
        self.bus = bus
        self._slots = anyio.Semaphore(config.max_concurrent_episodes, fast_acquire=True)
        self._pools: dict[str, EnvPool] = {}
        self.running = 0
        #: Enforces the time limits of every episode of the runs in progress.
        self.watchdog = Watchdog(config)
        self._watchers = 0
        self._watcher_stop: anyio.Event | None = None

    @asynccontextmanager
    async def _watched(self) -> AsyncIterator[None]:
        """Keep the watchdog running while a run's episodes do: the first run in progress
        runs it in its task group; it stops when that run ends, and the next run in
        progress (if any) takes it over."""
        error: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            try:
                yield
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # re-raised as it is, not in an exception group
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _watch(self) -> None:
        # One scanning task at a time: a later run's watcher waits while one is running.
        while self._watchers:
            stop = self._watcher_stop
            if stop is None:
                stop = self._watcher_stop = anyio.Event()
            await stop.wait()
        self._watchers += 1
        try:
            await self.watchdog.run()
        finally:
            self._watchers -= 1
            stop, self._watcher_stop = self._watcher_stop, None
            if stop is not None:
                stop.set()

    def pool_for(self, plugin: EnvPlugin) -> EnvPool:
        """The instance pool of ``plugin``'s env (created on first use)."""
        pool = self._pools.get(plugin.id)
        if pool is None or pool.plugin is not plugin:
            cap = self.config.env_instances.get(plugin.id, plugin.max_instances)
            pool = EnvPool(plugin, cap, close_timeout_s=self.config.close_timeout_s)
            self._pools[plugin.id] = pool
        return pool

    @property
    def pools(self) -> dict[str, EnvPool]:
        return dict(self._pools)

    async def run_jobs(
        self,
        jobs: Iterable[EpisodeJob],
        plugin: EnvPlugin,
        policy: Policy,
        record: Record,
        rollout: Rollout | None = None,
    ) -> None:
        """Run every job; returns when all have finished. Cancelling it cancels them all.

        ``rollout``: the policy's gate and the staleness bound (groups: :meth:`run_groups`).
        """
        pool = self.pool_for(plugin)
        jobs_iter: Iterator[EpisodeJob] = iter(jobs)
        async with self._watched(), anyio.create_task_group() as tg:
            for job in jobs_iter:
                await self._slots.acquire()
                try:
                    tg.start_soon(
                        self._one, job, plugin, pool, policy, record, rollout, name=job.episode_id
                    )
                except BaseException:
                    self._slots.release()
                    raise

    async def _one(
        self,
        job: EpisodeJob,
        plugin: EnvPlugin,
        pool: EnvPool,
        policy: Policy,
        record: Record,
        rollout: Rollout | None,
    ) -> None:
        self.running += 1
        try:
            if rollout is None:
                await run_episode(
                    job,
                    plugin=plugin,
                    pool=pool,
                    policy=policy,
                    bus=self.bus,
                    config=self.config,
                    record=record,
                    watchdog=self.watchdog,
                )
            else:
                await self._checked(job, plugin, pool, policy, record, rollout)
        finally:
            self.running -= 1
            self._slots.release()

    async def _checked(
        self,
        job: EpisodeJob,
        plugin: EnvPlugin,
        pool: EnvPool,
        policy: Policy,
        record: Record,
        rollout: Rollout,
    ) -> None:
        """Run ``job`` through ``rollout``'s gate; a stale ending is restarted or discarded
        instead of recorded. A cancelled episode is recorded as it is."""
        restarts = 0
        finished: list[Trajectory] = []

        async def capture(trajectory: Trajectory) -> None:
            if trajectory.finish_reason is FinishReason.CANCELLED:
                await record(trajectory)
            else:
                finished.append(trajectory)

        while True:
            finished.clear()
            await run_episode(
                job,
                plugin=plugin,
                pool=pool,
                policy=policy,
                bus=self.bus,
                config=self.config,
                record=capture,
                gate=rollout.gate,
                watchdog=self.watchdog,
            )
            trajectory = finished[0]
            if not rollout.stale(trajectory):
                await record(trajectory)
                return
            if rollout.restart and restarts < MAX_STALE_RESTARTS:
                restarts += 1
                rollout.stats.stale_restarted += 1
                _log.debug("stale episode restarted", episode_id=job.episode_id)
                continue
            rollout.stats.stale_discarded += 1
            _log.debug("stale episode discarded", episode_id=job.episode_id)
            return

    async def run_groups(
        self,
        groups: Iterable[tuple[str, list[EpisodeJob]]],
        plugin: EnvPlugin,
        policy: Policy,
        record_group: RecordGroup,
        rollout: Rollout,
    ) -> None:
        """Run groups of episodes (``rollout.keep`` kept of each); each complete group goes
        to ``record_group`` at once. Groups start in order, each of its episodes as a slot
        of the global cap frees up."""
        pool = self.pool_for(plugin)
        async with self._watched(), anyio.create_task_group() as tg:
            for group_id, members in groups:
                await tg.start(
                    self._group, group_id, members, plugin, pool, policy, record_group, rollout
                )

    async def _group(
        self,
        group_id: str,
        members: list[EpisodeJob],
        plugin: EnvPlugin,
        pool: EnvPool,
        policy: Policy,
        record_group: RecordGroup,
        rollout: Rollout,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        keep = rollout.keep or len(members)
        stats = rollout.stats
        kept: list[Trajectory] = []
        # Each member's task handle, by episode id: cancelling one cancels the task's own
        # scope (anyio gives every task one), so a member needs no scope of its own.
        handles: dict[str, anyio.TaskHandle[None]] = {}
        complete = anyio.Event()

        async def collect(trajectory: Trajectory) -> None:
            # Never recorded: a surplus episode, or one the run's cancellation ended.
            if len(kept) >= keep:
                stats.surplus_cancelled += 1
                return
            if trajectory.finish_reason is FinishReason.CANCELLED:
                return
            kept.append(trajectory)
            if len(kept) == keep:
                complete.set()
                # The surplus still running; not the member whose trajectory this is, and
                # not those that have ended (cancelling a scope formats the current task's
                # repr, ~15 us, once per member without this).
                for episode_id, handle in list(handles.items()):
                    if episode_id != trajectory.episode_id:
                        handle.cancel()

        async def member(job: EpisodeJob) -> None:
            self.running += 1
            try:
                await self._checked(job, plugin, pool, policy, collect, rollout)
            finally:
                self.running -= 1
                self._slots.release()
                handles.pop(job.episode_id, None)

        started = 0
        try:
            async with anyio.create_task_group() as tg:
                try:
                    for job in members:
                        await self._slots.acquire()
                        if complete.is_set():
                            self._slots.release()
                            break
                        coro = member(job)
                        try:
                            handles[job.episode_id] = tg.create_task(coro, name=job.episode_id)
                        except BaseException:
                            coro.close()  # never started
                            self._slots.release()
                            raise
                        started += 1
                finally:
                    task_status.started()
        except anyio.get_cancelled_exc_class():
            if len(kept) < keep:
                stats.groups_incomplete += 1
            raise
        # Every member has ended: kept, cancelled as surplus, or discarded.
        if len(kept) < keep:
            stats.groups_incomplete += 1
            return
        stats.surplus_cancelled += len(members) - started  # never started
        if rollout.restart:
            await self._refresh(kept, members, plugin, pool, policy, rollout)
        if any(rollout.stale(t) for t in kept):
            stats.groups_stale += 1
            return
        if rollout.drop_zero_variance and len({t.reward for t in kept}) <= 1:
            stats.groups_zero_variance += 1
            return
        for trajectory in kept:
            trajectory.group_size = keep
        await record_group(kept)
        stats.groups_kept += 1

    async def _refresh(
        self,
        kept: list[Trajectory],
        members: list[EpisodeJob],
        plugin: EnvPlugin,
        pool: EnvPool,
        policy: Policy,
        rollout: Rollout,
    ) -> None:
        """``stale = "restart"``: rerun the members of a complete group that went stale
        while it waited for the others, in place, until none is (a bounded number of
        rounds); the group keeps its other members."""
        jobs = {job.episode_id: job for job in members}
        for _ in range(MAX_STALE_RESTARTS):
            stale = [i for i, t in enumerate(kept) if rollout.stale(t)]
            if not stale:
                return
            rollout.stats.stale_restarted += len(stale)

            async def rerun(index: int, job: EpisodeJob) -> None:
                async def replace(trajectory: Trajectory) -> None:
                    if trajectory.finish_reason is not FinishReason.CANCELLED:
                        kept[index] = trajectory

                self.running += 1
                try:
                    await self._checked(job, plugin, pool, policy, replace, rollout)
                finally:
                    self.running -= 1
                    self._slots.release()

            async with anyio.create_task_group() as tg:
                for index in stale:
                    await self._slots.acquire()
                    try:
                        tg.start_soon(rerun, index, jobs[kept[index].episode_id])
                    except BaseException:
                        self._slots.release()
                        raise

    async def aclose(self) -> None:
        """Close every pool's instances."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for pool in self._pools.values():
                    tg.start_soon(pool.aclose)
