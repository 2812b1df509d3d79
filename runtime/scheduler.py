"""Scheduling episodes: a global cap on running episodes, per-env instance pools, and
isolation (one episode's failure is recorded on that episode and stops nothing else).

Workloads are planned lazily (:class:`JobPlan`): episodes are created as slots free up, so
memory follows the running episodes, not the planned ones."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence

import anyio
import structlog

from gymux.config import MAX_EPISODES, ConfigError, RuntimeConfig, Workload
from gymux.env_plugins.protocol import EnvPlugin
from gymux.episode import EpisodeJob, run_episode
from gymux.events import EventBus
from gymux.policies.protocol import Policy
from gymux.pool import EnvPool
from gymux.trajectory import Trajectory

__all__ = ["JobPlan", "Scheduler", "plan_jobs"]

_log = structlog.get_logger("gymux.scheduler")

Record = Callable[[Trajectory], Awaitable[None]]


class JobPlan:
    """The episodes of a workload, planned lazily: task ids x samples, in that order.

    Iterating yields fresh :class:`EpisodeJob` objects one at a time (a plan of 10^8
    episodes costs no memory until they run, and the scheduler holds only the running
    ones); ``len()`` is computed, not counted.
    """

    __slots__ = ("_ids", "_max_turns", "_run_id", "_samples", "_spec_id", "_split")

    def __init__(
        self,
        run_id: str,
        spec_id: str,
        ids: Sequence[int],
        split: str,
        samples: int,
        max_turns: int,
    ) -> None:
        self._run_id = run_id
        self._spec_id = spec_id
        self._ids = ids
        self._split = split
        self._samples = samples
        self._max_turns = max_turns

    def __len__(self) -> int:
        return len(self._ids) * self._samples

    def __iter__(self) -> Iterator[EpisodeJob]:
        run_id, env_id, split = self._run_id, self._spec_id, self._split
        for task_id in self._ids:
            for sample in range(self._samples):
                yield EpisodeJob(
                    run_id=run_id,
                    episode_id=f"{run_id}:{env_id}:{task_id}:{sample}",
                    env_id=env_id,
                    task_id=task_id,
                    split=split,
                    sample=sample,
                    max_turns=self._max_turns,
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
    total = len(ids) * workload.samples
    if total > MAX_EPISODES:
        raise ConfigError(
            f"workload {spec.id}: {len(ids):,} tasks x {workload.samples:,} samples = "
            f"{total:,} episodes; a workload may plan at most {MAX_EPISODES:,}"
        )
    max_turns = workload.max_turns or spec.max_turns
    return JobPlan(run_id, spec.id, ids, split_name, workload.samples, max_turns)


class Scheduler:
    """Runs episodes under the runtime's limits. Shared by all runs of a runtime."""

    def __init__(self, config: RuntimeConfig, bus: EventBus) -> None:
        self.config = config
        self.bus = bus
        self._slots = anyio.Semaphore(config.max_concurrent_episodes, fast_acquire=True)
        self._pools: dict[str, EnvPool] = {}
        self.running = 0

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
        self, jobs: Iterable[EpisodeJob], plugin: EnvPlugin, policy: Policy, record: Record
    ) -> None:
        """Run every job; returns when all have finished. Cancelling it cancels them all."""
        pool = self.pool_for(plugin)
        jobs_iter: Iterator[EpisodeJob] = iter(jobs)
        async with anyio.create_task_group() as tg:
            for job in jobs_iter:
                await self._slots.acquire()
                try:
                    tg.start_soon(self._one, job, plugin, pool, policy, record, name=job.episode_id)
                except BaseException:
                    self._slots.release()
                    raise

    async def _one(
        self, job: EpisodeJob, plugin: EnvPlugin, pool: EnvPool, policy: Policy, record: Record
    ) -> None:
        self.running += 1
        try:
            await run_episode(
                job,
                plugin=plugin,
                pool=pool,
                policy=policy,
                bus=self.bus,
                config=self.config,
                record=record,
            )
        finally:
            self.running -= 1
            self._slots.release()

    async def aclose(self) -> None:
        """Close every pool's instances."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for pool in self._pools.values():
                    tg.start_soon(pool.aclose)
