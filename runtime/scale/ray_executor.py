"""Running gymux workloads on a Ray cluster: a runtime per worker, the store on the driver.

Design (docs/scale-out.md):

* The driver (:class:`RayRuntime`) plans the workload exactly like the embedded runtime
  (:func:`~gymux.scheduler.plan_jobs`: episode ids are ``run:env:task:sample``, so they are
  the same wherever an episode runs) and cuts it into *chunks* of whole tasks (all samples,
  so RL groups stay whole).
* Each Ray actor (:class:`_Worker`) hosts one embedded :class:`~gymux.runtime.Runtime`
  with its share of the global episode cap and runs the chunks it is handed, under the
  run's own run id. Actors are placed by the resources the env asks for
  (:class:`EnvResources`: CPUs, memory, custom resources), spread over the nodes.
* A finished chunk comes back as its events (episode started, turns, errors, finished
  with the trajectory); the driver replays them on its event bus (progress, metrics and
  the summary cover the whole cluster) and writes the trajectories to its sinks: the one
  store. A chunk is written only once it has come back whole, so when an actor or its
  node dies, its chunks in flight are queued again and run on another actor; nothing of
  them was written, and every episode reaches the store exactly once.
* Cancelling the run (Ctrl-C) cancels the chunk calls; each actor cancels its runs, closes
  its envs and policies, and is then killed.

Ray is imported lazily, so ``import gymux.scale`` works without it; asyncio only.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import msgspec
import structlog

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.protocol import EnvPlugin
from gymux.env_plugins.registry import Registry, default_registry
from gymux.episode import EpisodeJob
from gymux.errors import GymuxError, ScaleError
from gymux.events import EpisodeFinished, Event, EventBus, RunFinished, RunStarted
from gymux.log import LogSubscriber, configure_logging
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy
from gymux.policies.protocol import Policy
from gymux.policies.registry import make_policy
from gymux.runtime import RunHandle, RunResult, Runtime, default_sink, end_runs, new_run_id
from gymux.scheduler import RolloutStats, plan_jobs
from gymux.sinks import Sink, SinkFlusher, write_group
from gymux.trajectory import Trajectory

__all__ = [
    "DEFAULT_ENV_RESOURCES",
    "EnvResources",
    "RayExecutor",
    "RayRuntime",
    "ScaleError",
    "ScaleStats",
]

_log = structlog.get_logger("gymux.scale")

#: How often buffered sinks are flushed while runs go (as the embedded runtime does).
#: How long a worker may take to start (its Ray worker process, importing gymux).
WORKER_START_S = 120.0
#: Once one worker of a run has started, how much longer the others may take to be placed
#: (resources still held by a run that just ended are freed a moment after it).
WORKER_GRACE_S = 20.0
#: How long a worker may take to close its runtime before it is killed.
WORKER_CLOSE_S = 15.0


class EnvResources(msgspec.Struct, frozen=True, kw_only=True):
    """What one worker (one embedded runtime) of an env asks Ray for.

    A worker runs many episodes of its env at once; give the resources the worker's share
    of instances needs (a JVM env: a core and its heap per few instances).
    """

    #: Cores per worker (Ray ``num_cpus``): one for its event loop plus what its env
    #: instances' threads or processes use.
    num_cpus: float = 1.0
    #: Memory per worker in MiB (Ray ``memory``), 0: not stated.
    memory_mb: int = 0
    #: Custom Ray resources per worker (``ray start --resources '{"jvm": 4}'``).
    resources: dict[str, float] = msgspec.field(default_factory=dict)


#: Per-env defaults; an env not listed gets ``EnvResources()`` (one core).
DEFAULT_ENV_RESOURCES: dict[str, EnvResources] = {
    # A JVM per instance, ~250 MB each and ~20 ms a step.
    "sciworld": EnvResources(num_cpus=2.0, memory_mb=2048),
    # Worker processes per instance.
    "babyai": EnvResources(num_cpus=1.0, memory_mb=512),
    "textworld": EnvResources(num_cpus=1.0, memory_mb=1024),
}


class ScaleStats(msgspec.Struct, kw_only=True):
    """What the cluster did for one run (``RayRuntime.stats(handle)``)."""

    workers: int = 0
    #: Nodes that hosted a worker of the run.
    nodes: int = 0
    chunks: int = 0
    #: Workers that died during the run, and the chunks and episodes run again elsewhere.
    workers_lost: int = 0
    chunks_rerun: int = 0
    episodes_rerun: int = 0
    #: Seconds the driver spent starting the run's workers.
    start_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RayExecutor:
    """Where and how :class:`RayRuntime` runs episodes.

    Args:
        address: the cluster (``"auto"``, ``"127.0.0.1:6379"``, ``"ray://..."``); ``None``:
            Ray's default (``RAY_ADDRESS``, a cluster started on this machine, else a
            local one using every core).
        workers: embedded runtimes per run; ``None``: as many as the cluster's free
            resources hold for the env (a runtime per core by default).
        resources: per env id, what a worker asks for (over :data:`DEFAULT_ENV_RESOURCES`).
        chunk_tasks: tasks per chunk (a chunk is the unit re-run after a worker dies);
            ``None``: about half a worker's share of the cap, at least 4 chunks per worker.
        num_cpus: cores of a local cluster started by ``ray.init`` (``None``: all).
        init_options: more keyword arguments for ``ray.init``.
    """

    address: str | None = None
    workers: int | None = None
    resources: Mapping[str, EnvResources] | None = None
    chunk_tasks: int | None = None
    num_cpus: int | None = None
    init_options: Mapping[str, Any] | None = None

    def runtime(self, config: RuntimeConfig | None = None, **kwargs: Any) -> RayRuntime:
        """The runtime ``Runtime(config, executor=self, **kwargs)`` stands for."""
        return RayRuntime(config, executor=self, **kwargs)

    def resources_for(self, env_id: str) -> EnvResources:
        if self.resources is not None and env_id in self.resources:
            return self.resources[env_id]
        return DEFAULT_ENV_RESOURCES.get(env_id, EnvResources())


# --- what crosses between the driver and the workers ------------------------------------


class _Chunk(msgspec.Struct, frozen=True, array_like=True):
    """Whole tasks of a run, optionally only some ``(task, sample)`` pairs of them."""

    index: int
    task_ids: list[int]
    keys: list[tuple[int, int]] | None
    episodes: int


class _ChunkResult(msgspec.Struct, frozen=True, kw_only=True):
    events: list[Event]
    rollout: RolloutStats
    node: str


_encode = msgspec.msgpack.Encoder().encode
_decode_result = msgspec.msgpack.Decoder(_ChunkResult).decode


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ScaleError("Ray is not installed; pip install 'gymux[ray]'") from exc
    return ray


class _Worker:
    """A Ray actor hosting one embedded :class:`Runtime` (no sinks of its own)."""

    def __init__(self, config: bytes) -> None:
        self._config = msgspec.msgpack.decode(config, type=RuntimeConfig)
        self._runtime: Runtime | None = None
        self._ready: anyio.Event | None = None
        self._stop: anyio.Event | None = None
        self._host_task: Any = None
        self._failure: BaseException | None = None
        self._handles: set[RunHandle] = set()
        #: The run's policies, built once per worker from the workload (a model client,
        #: or an in-process ``hf`` model: one copy per worker) and shared by its chunks.
        self._policies: dict[str, Policy] = {}

    def node(self) -> str:
        return _import_ray().get_runtime_context().get_node_id()  # type: ignore[no-any-return]

    async def start(self, env_id: str) -> str:
        """Start the runtime and load ``env_id``'s plugin (so that a run's wall time does
        not include them); returns the worker's node id."""
        rt = await self._rt()
        rt.registry.get_runnable(env_id)
        return self.node()

    async def _host(self) -> None:
        assert self._ready is not None and self._stop is not None
        try:
            async with Runtime(self._config) as rt:
                self._runtime = rt
                self._ready.set()
                await self._stop.wait()
                for handle in list(self._handles):
                    handle.cancel()
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._runtime = None
            self._ready.set()

    async def _rt(self) -> Runtime:
        if self._ready is None:
            import asyncio

            self._ready, self._stop = anyio.Event(), anyio.Event()
            self._host_task = asyncio.get_running_loop().create_task(self._host())
        await self._ready.wait()
        if self._runtime is None:
            raise ScaleError(f"worker runtime failed to start: {self._failure!r}")
        return self._runtime

    async def run_chunk(self, run_id: str, workload: bytes, chunk: bytes) -> bytes:
        rt = await self._rt()
        work = msgspec.msgpack.decode(workload, type=Workload)
        part = msgspec.msgpack.decode(chunk, type=_Chunk)
        sub = msgspec.structs.replace(work, tasks=list(part.task_ids), limit=None)
        keys = None if part.keys is None else set(map(tuple, part.keys))

        def keep(job: EpisodeJob) -> bool:
            return keys is None or (job.task_id, job.sample) in keys

        plugin = rt.registry.get_runnable(sub.env)
        policy = self._policy(sub, plugin)
        episodes = {job.episode_id for job in plan_jobs(run_id, sub, plugin) if keep(job)}
        events: list[Event] = []

        def collect(event: Event) -> None:
            if isinstance(event, EpisodeFinished):
                if event.trajectory.episode_id in episodes:
                    events.append(event)
            elif not isinstance(event, RunStarted | RunFinished) and event.episode_id in episodes:
                events.append(event)

        unsubscribe = rt.subscribe(collect)
        try:
            # The chunk's trajectories travel back in its events, not in the handle.
            handle = await rt.submit(
                sub,
                policy=policy,
                run_id=run_id,
                only=None if keys is None else keep,
                keep_trajectories=False,
            )
            self._handles.add(handle)
            try:
                await handle.wait()
            except BaseException:
                handle.cancel()
                raise
            finally:
                self._handles.discard(handle)
        finally:
            unsubscribe()
        result = _ChunkResult(events=events, rollout=handle.rollout, node=self.node())
        return _encode(result)

    def _policy(self, work: Workload, plugin: EnvPlugin) -> Policy:
        """The workload's policy on this worker: built on its first chunk, then shared by
        the others (one model client or ``hf`` model per worker, batching all its calls)."""
        # Model policies: shared as the Runtime shares them; oracle/random: per env.
        key = work.shared_policy_key or f"{work.policy} {work.env} seed={work.seed}"
        policy = self._policies.get(key)
        if policy is None:
            policy = make_policy(
                work.policy,
                plugin,
                seed=work.seed,
                options=work.policy_options or None,
                concurrency=self._config.max_concurrent_episodes,
            )
            self._policies[key] = policy
        return policy

    async def close(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        if self._host_task is not None:
            import contextlib

            with contextlib.suppress(BaseException):
                await self._host_task


# --- the driver ---------------------------------------------------------------------------


@dataclass
class _Member:
    actor: Any
    lanes: int
    node: str = ""
    alive: bool = True


class _Queue:
    """The chunks of one run not yet come back; lanes take from the front."""

    def __init__(self, chunks: list[_Chunk]) -> None:
        self.pending: deque[_Chunk] = deque(chunks)
        self.outstanding = len(chunks)
        self._changed = anyio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self) -> None:
        await self._changed.wait()


def split_cap(cap: int, workers: int) -> list[int]:
    """Each worker's share of the global episode cap: they sum to ``cap``, none is zero
    (callers use at most ``cap`` workers)."""
    workers = max(1, min(workers, cap))
    return [cap // workers + (1 if i < cap % workers else 0) for i in range(workers)]


def _chunks(
    plugin: EnvPlugin,
    run_id: str,
    workload: Workload,
    only: Callable[[EpisodeJob], bool] | None,
    per_chunk: int,
) -> tuple[list[_Chunk], int, str]:
    """The run's chunks, its planned episodes and its split name."""
    plan = plan_jobs(run_id, workload, plugin)
    tasks: dict[int, list[tuple[int, int]]] = {}
    split = ""
    total = 0
    for job in plan:
        split = job.split
        if only is None or only(job):
            tasks.setdefault(job.task_id, []).append((job.task_id, job.sample))
            total += 1
    order = list(tasks)
    chunks: list[_Chunk] = []
    for start in range(0, len(order), per_chunk):
        ids = order[start : start + per_chunk]
        keys = [key for tid in ids for key in tasks[tid]]
        chunks.append(_Chunk(len(chunks), ids, None if only is None else keys, len(keys)))
    return chunks, total, split


def _merge(chunks: list[_Chunk], size: int) -> list[_Chunk]:
    """One-task chunks joined ``size`` tasks at a time, in order."""
    if size <= 1:
        return chunks
    merged: list[_Chunk] = []
    for start in range(0, len(chunks), size):
        part = chunks[start : start + size]
        keys = None if part[0].keys is None else [k for c in part for k in c.keys or []]
        ids = [tid for c in part for tid in c.task_ids]
        merged.append(_Chunk(len(merged), ids, keys, sum(c.episodes for c in part)))
    return merged


class RayRuntime:
    """Runs workloads on a Ray cluster; the embedding API of :class:`Runtime`.

    ::

        async with RayRuntime(RuntimeConfig(max_concurrent_episodes=512),
                              executor=RayExecutor(address="auto"), out="runs/x") as rt:
            result = await rt.run(Workload(env="textcraft", policy="oracle"))

    The global episode cap (``config.max_concurrent_episodes``) is split between the run's
    workers. Policies are built on the workers from the workload (``policy``,
    ``policy_options``): model servers are shared by every worker, each batching its own
    episodes' calls. Trajectories go to this process's sinks (``out=``: one store).
    """

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        *,
        executor: RayExecutor | None = None,
        registry: Registry | None = None,
        sinks: list[Sink] | None = None,
        out: str | os.PathLike[str] | None = None,
        out_format: Literal["store", "jsonl"] = "store",
        configure_logs: bool = False,
    ) -> None:
        self.config = config or RuntimeConfig()
        self.executor = executor or RayExecutor()
        self.registry = registry or default_registry()
        self.bus = EventBus()
        self.sinks: list[Sink] = list(sinks or [])
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            self.sinks.append(default_sink(self.out, out_format, self.config.durability))
        self._configure_logs = configure_logs
        self._ray: Any = None
        self._owns_ray = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop = anyio.Event()
        self._opened: list[Sink] = []
        self._handles: list[RunHandle] = []
        self._stats: dict[str, ScaleStats] = {}
        self._flusher = SinkFlusher(self.sinks)
        self.bus.subscribe(LogSubscriber(self.config.log_level))

    def subscribe(self, subscriber: Callable[[Event], None]) -> Callable[[], None]:
        """Receive every event of every node; returns an unsubscribe function."""
        return self.bus.subscribe(subscriber)

    def stats(self, handle: RunHandle) -> ScaleStats:
        """What the cluster did for ``handle``'s run."""
        return self._stats[handle.run_id]

    async def __aenter__(self) -> Self:
        if self._configure_logs:
            configure_logging(self.config.log_level)
        self._ray = _import_ray()
        if not self._ray.is_initialized():
            await anyio.to_thread.run_sync(self._init_ray)
            self._owns_ray = True
        try:
            for sink in self.sinks:
                await sink.open()
                self._opened.append(sink)
            tg = anyio.create_task_group()
            await tg.__aenter__()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_sinks()
            raise
        self._tg = tg
        tg.start_soon(self._flusher.run_until, self._stop)
        return self

    def _init_ray(self) -> None:
        options: dict[str, Any] = {
            "namespace": "gymux",
            "log_to_driver": False,
            "configure_logging": False,
        }
        if self.executor.address is None:
            options["include_dashboard"] = False
        if self.executor.num_cpus is not None:
            options["num_cpus"] = self.executor.num_cpus
        options.update(self.executor.init_options or {})
        try:
            self._ray.init(address=self.executor.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ScaleError(f"cannot reach the Ray cluster: {exc}") from exc

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        if tg is None:
            return
        await end_runs(
            self._handles, tg, self._stop, failed=exc_type is not None, cleanup=self._release
        )

    async def _release(self) -> None:
        """The sinks, then Ray itself when this driver started it."""
        await self._close_sinks()
        if self._owns_ray:
            await anyio.to_thread.run_sync(self._ray.shutdown)
            self._owns_ray = False

    async def _close_sinks(self) -> None:
        while self._opened:
            await self._opened.pop().aclose()

    async def run(self, workload: Workload, *, policy: Policy | None = None) -> RunResult:
        """Submit ``workload`` and wait for its result."""
        handle = await self.submit(workload, policy=policy)
        return await handle.wait()

    async def submit(
        self,
        workload: Workload,
        *,
        policy: Policy | None = None,
        run_id: str | None = None,
        only: Callable[[EpisodeJob], bool] | None = None,
        keep_trajectories: bool = True,
    ) -> RunHandle:
        """Start a run on the cluster; returns at once with its :class:`RunHandle`.

        ``policy`` only names the run's policy (the workers build their own from the
        workload); ``only`` keeps the planned episodes it accepts (not with groups);
        ``keep_trajectories`` as :meth:`gymux.runtime.Runtime.submit`'s.
        """
        if self._tg is None:
            raise RuntimeError("RayRuntime is not running; use 'async with RayRuntime(...)'")
        if only is not None and workload.group_size is not None:
            raise ScaleError("a grouped workload (group_size) cannot be filtered with only=")
        plugin = self.registry.get_runnable(workload.env)
        run_id = run_id or new_run_id()
        chunks, planned, split = _chunks(plugin, run_id, workload, only, 1)
        if policy is None:
            policy = _Named(workload.policy)
        handle = RunHandle(run_id, workload, policy, planned, keep_trajectories=keep_trajectories)
        self._handles.append(handle)
        self._stats[run_id] = ScaleStats(chunks=len(chunks))
        self._tg.start_soon(self._execute, handle, plugin, chunks, split, name=f"ray run {run_id}")
        return handle

    # --- one run -----------------------------------------------------------------------

    def _plan_workers(self, env_id: str, episodes: int) -> tuple[int, EnvResources]:
        ray = self._ray
        need = self.executor.resources_for(env_id)
        count = self.executor.workers
        # Sized by the cluster's resources: a run's workers are placed as the resources
        # of the previous run's workers come free.
        if count is None:
            free = ray.cluster_resources()
            fits = [math.floor(free.get("CPU", 0.0) / need.num_cpus)] if need.num_cpus else []
            if need.memory_mb:
                fits.append(math.floor(free.get("memory", 0.0) / (need.memory_mb << 20)))
            fits += [math.floor(free.get(k, 0.0) / v) for k, v in need.resources.items() if v]
            count = min(fits) if fits else 1
        count = max(1, min(count, self.config.max_concurrent_episodes, max(1, episodes)))
        return count, need

    def _chunk_size(self, chunks: list[_Chunk], workers: int) -> int:
        """Tasks per chunk: the executor's, or about half a worker's share of the cap in
        episodes, keeping at least 4 chunks per worker (balance; a lost node's cost)."""
        if self.executor.chunk_tasks is not None:
            return max(1, self.executor.chunk_tasks)
        share = self.config.max_concurrent_episodes // max(1, workers)
        per_task = max(1, max(c.episodes for c in chunks))
        size = max(1, (share // 2) // per_task)
        return max(1, min(size, len(chunks) // (4 * workers), 64))

    async def _start_workers(
        self, env_id: str, count: int, need: EnvResources, largest: int
    ) -> list[_Member]:
        ray = self._ray
        shares = split_cap(self.config.max_concurrent_episodes, count)
        members: list[_Member] = []
        remote = ray.remote(_Worker)
        for share in shares:
            config = msgspec.structs.replace(self.config, max_concurrent_episodes=share)
            # Enough chunks in flight to fill the share, plus one queued on the worker so
            # that it never idles while a result travels back.
            lanes = -(-share // max(1, largest)) + 1
            options: dict[str, Any] = {
                "num_cpus": need.num_cpus,
                "max_concurrency": lanes + 4,
                "max_restarts": 0,
                "max_task_retries": 0,
                "scheduling_strategy": "SPREAD",
            }
            if need.memory_mb:
                options["memory"] = need.memory_mb << 20
            if need.resources:
                options["resources"] = dict(need.resources)
            actor = remote.options(**options).remote(_encode(config))
            members.append(_Member(actor=actor, lanes=lanes))
        # Wait until each worker is placed, its runtime started and the env loaded.
        refs = [m.actor.start.remote(env_id) for m in members]
        await anyio.to_thread.run_sync(
            lambda: ray.wait(refs, num_returns=1, timeout=WORKER_START_S)
        )
        ready, _ = await anyio.to_thread.run_sync(
            lambda: ray.wait(refs, num_returns=len(refs), timeout=WORKER_GRACE_S)
        )
        started = {ref.hex() for ref in ready}
        placed: list[_Member] = []
        for member, ref in zip(members, refs, strict=True):
            if ref.hex() in started:
                try:
                    member.node = await ref
                except ray.exceptions.RayError:
                    ray.kill(member.actor)
                    continue
                placed.append(member)
            else:
                ray.kill(member.actor)
        if not placed:
            raise ScaleError(
                f"no Ray worker for env {env_id!r} could be placed within {WORKER_START_S:.0f}s "
                f"(each asks for {msgspec.to_builtins(need)})"
            )
        return placed

    async def _stop_workers(self, members: list[_Member]) -> None:
        ray = self._ray
        with anyio.CancelScope(shield=True):
            refs = [m.actor.close.remote() for m in members if m.alive]
            if refs:
                await anyio.to_thread.run_sync(
                    lambda: ray.wait(refs, num_returns=len(refs), timeout=WORKER_CLOSE_S)
                )
            for member in members:
                ray.kill(member.actor, no_restart=True)

    async def _execute(
        self, handle: RunHandle, plugin: EnvPlugin, chunks: list[_Chunk], split: str
    ) -> None:
        run_id = handle.run_id
        metrics = handle.metrics

        def feed(event: Event) -> None:
            if event.run_id == run_id:
                metrics(event)

        unsubscribe = self.bus.subscribe(feed)
        started = time.perf_counter()
        error: BaseException | None = None
        stats = self._stats[run_id]
        members: list[_Member] = []
        self.bus.publish(
            RunStarted(
                run_id=run_id, env_id=plugin.id, policy=handle.policy.name, episodes=handle.planned
            )
        )
        try:
            with handle._scope:
                if chunks:
                    count, need = self._plan_workers(plugin.id, handle.planned)
                    chunks = _merge(chunks, self._chunk_size(chunks, count))
                    stats.chunks = len(chunks)
                    largest = max(c.episodes for c in chunks)
                    members = await self._start_workers(plugin.id, count, need, largest)
                    stats.workers = len(members)
                    stats.nodes = len({m.node for m in members})
                    stats.start_s = time.perf_counter() - started
                    queue = _Queue(chunks)
                    workload = _encode(handle.workload)
                    async with anyio.create_task_group() as tg:
                        for member in members:
                            for _ in range(member.lanes):
                                tg.start_soon(
                                    self._lane, handle, member, members, queue, workload, split
                                )
        except Exception as exc:
            error = exc
            while isinstance(error, BaseExceptionGroup) and error.exceptions:
                error = error.exceptions[0]
            _log.info("run failed", run_id=run_id, error=repr(error))
        finally:
            with anyio.CancelScope(shield=True):
                if members:
                    await self._stop_workers(members)
                await self._flusher.flush()
            self.bus.publish(
                RunFinished(
                    run_id=run_id,
                    episodes=len(handle.trajectories),
                    wall_s=time.perf_counter() - started,
                )
            )
            unsubscribe()
            handle._finish(error)
            if handle in self._handles:
                self._handles.remove(handle)

    async def _lane(
        self,
        handle: RunHandle,
        member: _Member,
        members: list[_Member],
        queue: _Queue,
        workload: bytes,
        split: str,
    ) -> None:
        ray = self._ray
        stats = self._stats[handle.run_id]
        while member.alive:
            if not queue.pending:
                if queue.outstanding == 0:
                    return
                await queue.wait()
                continue
            chunk = queue.pending.popleft()
            ref = member.actor.run_chunk.remote(handle.run_id, workload, _encode(chunk))
            try:
                data = await ref
            except ray.exceptions.RayTaskError as exc:
                # One line: what the worker raised (a policy that cannot be built from
                # the workload's options, ...), not Ray's traceback.
                cause = getattr(exc, "cause", None)
                detail = str(cause) if isinstance(cause, GymuxError) else str(exc)
                raise ScaleError(f"a Ray worker failed chunk {chunk.index}: {detail}") from exc
            except ray.exceptions.RayError as exc:
                # The actor or its node died: the chunk runs again on another worker.
                queue.pending.appendleft(chunk)
                stats.chunks_rerun += 1
                stats.episodes_rerun += chunk.episodes
                if member.alive:
                    member.alive = False
                    stats.workers_lost += 1
                    # An actor only unreachable for a while must not come back and run
                    # episodes beside their reruns (the cap, and wasted work).
                    ray.kill(member.actor, no_restart=True)
                    _log.warning(
                        "ray worker lost; its chunks run again elsewhere",
                        run_id=handle.run_id,
                        node=member.node,
                        error=type(exc).__name__,
                    )
                queue.changed()
                if not any(m.alive for m in members):
                    raise ScaleError("every Ray worker of the run died") from exc
                return
            except BaseException:
                ray.cancel(ref)  # the worker cancels the chunk's episodes
                raise
            await self._record(handle, _decode_result(data), split)
            queue.outstanding -= 1
            queue.changed()

    async def _record(self, handle: RunHandle, result: _ChunkResult, split: str) -> None:
        run_id = handle.run_id
        finished: list[Trajectory] = []
        for event in result.events:
            if isinstance(event, EpisodeFinished):
                trajectory = event.trajectory
                if trajectory.split != split:
                    trajectory = msgspec.structs.replace(trajectory, split=split)
                finished.append(trajectory)
            else:
                self.bus.publish(event)
        for name in RolloutStats.__struct_fields__:
            setattr(
                handle.rollout, name, getattr(handle.rollout, name) + getattr(result.rollout, name)
            )
        if handle.workload.group_size is not None:
            for group in _groups(finished):
                for sink in self.sinks:
                    await write_group(sink, group)
                for trajectory in group:
                    self._publish(handle, run_id, trajectory)
        else:
            for trajectory in finished:
                for sink in self.sinks:
                    await sink.write(trajectory)
                self._publish(handle, run_id, trajectory)

    def _publish(self, handle: RunHandle, run_id: str, trajectory: Trajectory) -> None:
        handle._add(trajectory)
        self.bus.publish(EpisodeFinished(run_id=run_id, trajectory=trajectory))


class _Named(SimplePolicy):
    """Names a run's policy on the driver; the workers run the real one."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        raise ScaleError(f"policy {self.name!r} runs on the Ray workers, not the driver")


def _groups(trajectories: list[Trajectory]) -> Iterator[list[Trajectory]]:
    by_group: dict[str | None, list[Trajectory]] = {}
    for trajectory in trajectories:
        by_group.setdefault(trajectory.group_id, []).append(trajectory)
    yield from by_group.values()
