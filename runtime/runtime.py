"""The embedding API: ``async with Runtime(config) as rt: ...``.

::

    async with Runtime(RuntimeConfig(max_concurrent_episodes=512), out="runs/x") as rt:
        handle = await rt.submit(Workload(env="maze", tasks="test", policy="oracle"))
        async for trajectory in handle:          # as episodes finish
            ...
        result = await handle.wait()             # RunResult: trajectories + summary

Leaving the ``async with`` block normally waits for submitted runs; leaving it with an
exception (or being cancelled) cancels them. Either way every instance, policy and sink
is closed before the block exits.

For RL, a trainer updates a running policy's weights without stopping the world::

    report = await rt.update_policy("hf", version="step-3", source="ckpt/step-3")

Dispatch of new policy calls pauses, calls in flight are aborted and redone (``mode=
"abort"``), awaited (``"wait"``) or left to finish under the new weights (``"continue"``),
the weights are loaded, the version bumps, dispatch resumes; episodes keep stepping their
environments meanwhile. ``Runtime.serve_control`` offers the same over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import gc
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import msgspec
import structlog

from gymux.config import ConfigError, RuntimeConfig, Workload
from gymux.env_plugins.registry import Registry, default_registry
from gymux.episode import EpisodeJob, PolicyGate
from gymux.errors import PolicyError
from gymux.events import EpisodeFinished, Event, EventBus, RunFinished, RunStarted
from gymux.log import LogSubscriber, configure_logging
from gymux.metrics import ENV_INSTANCES, EPISODE_SLOTS, POLICY_REQUESTS, Metrics, RunSummary
from gymux.policies.protocol import Policy, UpdateMode, WeightLoader, WeightUpdatable
from gymux.policies.registry import make_policy
from gymux.scheduler import JobPlan, Rollout, RolloutStats, Scheduler, plan_jobs
from gymux.sinks import JsonlSink, Sink, SinkFlusher, write_group
from gymux.trajectory import Trajectory

__all__ = ["RunHandle", "RunResult", "Runtime", "UpdateReport", "new_run_id"]

_log = structlog.get_logger("gymux.runtime")

#: How often buffered sinks are flushed while runs are going.
#: How often a running run samples which limits its episodes wait for (the summary's
#: ``waits`` and ``bound_by``, :meth:`gymux.metrics.Metrics.sample_limits`).
LIMIT_SAMPLE_S = 0.05


def default_sink(out: Path, out_format: str = "store", durability: str = "always") -> Sink:
    """The sink ``Runtime(out=...)`` adds: the store at ``out/store`` (committed with
    ``durability``), or JSONL."""
    if out_format == "jsonl":
        return JsonlSink(out / "trajectories.jsonl")
    if out_format == "store":
        from gymux.stores.sink import StoreSink

        return StoreSink(out / "store", durability=durability)
    raise ConfigError(f"out_format must be 'store' or 'jsonl', got {out_format!r}")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class RunResult(msgspec.Struct, kw_only=True):
    """A finished run: its trajectories in finishing order and the summary."""

    run_id: str
    workload: Workload
    policy: str
    trajectories: list[Trajectory]
    summary: RunSummary
    planned: int
    #: What groups, over-sampling and the staleness bound did (all zero without them).
    rollout: RolloutStats = msgspec.field(default_factory=RolloutStats)


class _UpdateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /update_policy`` (:meth:`Runtime.serve_control`)."""

    policy: str
    version: int | str
    source: str | None = None
    mode: Literal["abort", "wait", "continue"] = "abort"


class UpdateReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one :meth:`Runtime.update_policy` did."""

    policy: str
    #: The new weight version (its label) and its step (staleness counts steps).
    version: str
    step: int
    mode: str
    #: Policy calls in flight when dispatch paused: aborted (``abort``), awaited
    #: (``wait``) or left running (``continue``).
    inflight: int
    #: Seconds from pausing dispatch to resuming it, and of that, loading the weights.
    paused_s: float
    load_s: float


class RunHandle:
    """A submitted run. Iterate it for trajectories as they finish; await :meth:`wait`.

    Unless submitted with ``keep_trajectories=False``, the handle keeps every finished
    trajectory until it is dropped (:attr:`trajectories`, :meth:`result`)."""

    def __init__(
        self,
        run_id: str,
        workload: Workload,
        policy: Policy,
        planned: int,
        *,
        keep_trajectories: bool = True,
    ) -> None:
        self.run_id = run_id
        self.workload = workload
        self.policy = policy
        self.planned = planned
        self.metrics = Metrics()
        self.rollout = RolloutStats()
        self.trajectories: list[Trajectory] = []
        self.keep_trajectories = keep_trajectories
        # Created only while an iterator waits, so finishing an episode costs no Event.
        self._changed: anyio.Event | None = None
        self._done = anyio.Event()
        self._error: BaseException | None = None
        self._scope = anyio.CancelScope()
        self._sampler: anyio.CancelScope | None = None  # the limit sampler's, while it runs

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Cancel the run: running episodes end as ``cancelled``, queued ones never start."""
        self._scope.cancel()

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def _add(self, trajectory: Trajectory) -> None:
        if self.keep_trajectories:
            self.trajectories.append(trajectory)
            self._notify()

    def _finish(self, error: BaseException | None = None) -> None:
        self._error = error
        self._done.set()
        if self._sampler is not None:
            self._sampler.cancel()
        self._notify()

    async def wait(self) -> RunResult:
        """Wait for the run to end; raises what stopped it, if anything did."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self.result()

    def result(self) -> RunResult:
        return RunResult(
            run_id=self.run_id,
            workload=self.workload,
            policy=self.policy.name,
            trajectories=list(self.trajectories),
            summary=self.metrics.summary(),
            planned=self.planned,
            rollout=msgspec.structs.replace(self.rollout),
        )

    async def __aiter__(self) -> AsyncIterator[Trajectory]:
        if not self.keep_trajectories:
            raise ConfigError(
                f"run {self.run_id} was submitted with keep_trajectories=False: its "
                "trajectories went to the sinks and EpisodeFinished events only"
            )
        index = 0
        while True:
            while index < len(self.trajectories):
                yield self.trajectories[index]
                index += 1
            if self._done.is_set():
                if self._error is not None:
                    raise self._error
                return
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()


async def end_runs(
    handles: list[RunHandle],
    tg: anyio.abc.TaskGroup,
    stop: anyio.Event,
    *,
    failed: bool,
    cleanup: Callable[[], Awaitable[object]],
) -> None:
    """How a runtime's ``async with`` ends (the embedded one and ``gymux.scale``'s): wait for
    every run, or cancel them all when the block ``failed`` (or the wait is interrupted);
    then stop the background tasks (``stop``), leave the task group and, shielded, run
    ``cleanup`` (close pools, sinks, ...) whatever happened before."""
    try:
        if not failed:
            for handle in list(handles):
                await handle._done.wait()
        else:
            for handle in handles:
                handle.cancel()
    except BaseException:
        for handle in handles:
            handle.cancel()
        raise
    finally:
        stop.set()
        if failed:
            tg.cancel_scope.cancel()
        try:
            # The caller's exception propagates by itself; passing it in would wrap it in
            # an ExceptionGroup.
            await tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await cleanup()


class Runtime:
    """Runs workloads. Use as ``async with Runtime(config) as rt``.

    Args:
        config: runtime limits (:class:`RuntimeConfig`).
        registry: where env ids are looked up (default: installed plugins).
        sinks: where finished trajectories go, in addition to the run handles.
        out: a directory; adds the default sink there: the append-only store
            ``out/store`` (stream ``trajectories``), or ``out/trajectories.jsonl`` when
            ``out_format="jsonl"``.
        out_format: ``"store"`` (default) or ``"jsonl"``.
        configure_logs: set up structlog output at ``config.log_level`` (stderr).
        executor: run the episodes elsewhere: ``Runtime(config, executor=RayExecutor())``
            gives the executor's runtime (``gymux.scale.RayRuntime``: the same embedding
            API over a Ray cluster) instead of this in-process one.
    """

    def __new__(cls, config: RuntimeConfig | None = None, **kwargs: Any) -> Runtime:
        executor = kwargs.pop("executor", None)
        if executor is not None:
            made: Runtime = executor.runtime(config, **kwargs)
            return made
        return super().__new__(cls)

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        *,
        executor: object | None = None,
        registry: Registry | None = None,
        sinks: list[Sink] | None = None,
        out: str | os.PathLike[str] | None = None,
        out_format: Literal["store", "jsonl"] = "store",
        configure_logs: bool = False,
    ) -> None:
        self.config = config or RuntimeConfig()
        self.registry = registry or default_registry()
        self.bus = EventBus()
        self.scheduler = Scheduler(self.config, self.bus)
        self.sinks: list[Sink] = list(sinks or [])
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            self.sinks.append(default_sink(self.out, out_format, self.config.durability))
        self._configure_logs = configure_logs
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop = anyio.Event()
        self._policies: dict[int, Policy] = {}
        self._shared: dict[str, Policy] = {}  # Workload.shared_policy_key -> its policy
        self._gates: dict[int, PolicyGate] = {}
        self._policy_lock = anyio.Lock()
        self._handles: list[RunHandle] = []
        self._flusher = SinkFlusher(self.sinks)
        self.bus.subscribe(LogSubscriber(self.config.log_level))

    def subscribe(self, subscriber: Callable[[Event], None]) -> Callable[[], None]:
        """Receive every event; returns an unsubscribe function."""
        return self.bus.subscribe(subscriber)

    async def __aenter__(self) -> Self:
        if self._configure_logs:
            configure_logging(self.config.log_level)
        stack = AsyncExitStack()
        if self.config.gc_threshold is not None:
            stack.callback(gc.set_threshold, *gc.get_threshold())
            gc.set_threshold(self.config.gc_threshold, *gc.get_threshold()[1:])
        try:
            for sink in self.sinks:
                await sink.open()
                stack.push_async_callback(sink.aclose)
            stack.push_async_callback(self.scheduler.aclose)
            tg = anyio.create_task_group()
            await tg.__aenter__()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            raise
        self._tg = tg
        tg.start_soon(self._flusher.run_until, self._stop)
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        tg, self._tg = self._tg, None
        if stack is None or tg is None:
            return None
        # Pools, then sinks (the stack unwinds in reverse order of entry).
        await end_runs(
            self._handles, tg, self._stop, failed=exc_type is not None, cleanup=stack.aclose
        )
        return None

    async def _host_policy(
        self, policy: Policy, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with policy:
            task_status.started()
            await self._stop.wait()

    async def _named_policy(self, workload: Workload, plugin: Any) -> Policy:
        """The hosted policy ``workload`` names, built and entered if need be. A model policy
        named with the same options serves every run that names it (one pool, one loaded
        model; ``update_policy`` addresses it by name); ``oracle``/``random``: one per run."""
        async with self._policy_lock:
            key = workload.shared_policy_key
            policy = self._shared.get(key) if key is not None else None
            if policy is None:
                policy = make_policy(
                    workload.policy,
                    plugin,
                    seed=workload.seed,
                    options=workload.policy_options or None,
                    concurrency=self.config.max_concurrent_episodes,
                )
                await self._host(policy)
                if key is not None:
                    self._shared[key] = policy
            return policy

    async def _ensure_policy(self, policy: Policy) -> None:
        async with self._policy_lock:
            await self._host(policy)

    async def _host(self, policy: Policy) -> None:
        """Enter ``policy`` (held by the runtime's task group until it stops); the caller
        holds the policy lock."""
        if id(policy) in self._policies:
            return
        assert self._tg is not None
        await self._tg.start(self._host_policy, policy)
        self._policies[id(policy)] = policy
        step = getattr(policy, "step", None)
        label = getattr(policy, "weight_version", None)
        self._gates[id(policy)] = PolicyGate(
            step if isinstance(step, int) else 0, label if isinstance(label, str) else None
        )

    def gate(self, policy: Policy | str) -> PolicyGate:
        """The dispatch gate of a hosted policy (by object or name): its weight ``step``
        and ``label``, whether it is ``paused``, its calls ``inflight``."""
        return self._gates[id(self._hosted(policy))]

    def _hosted(self, policy: Policy | str) -> Policy:
        if not isinstance(policy, str):
            if id(policy) not in self._policies:
                raise PolicyError(f"policy {policy.name!r} is not hosted by this runtime")
            return policy
        named = [p for p in self._policies.values() if p.name == policy]
        if len(named) != 1:
            hosted = sorted({p.name for p in self._policies.values()})
            what = "no" if not named else f"{len(named)}"
            raise PolicyError(f"{what} hosted policies named {policy!r} (hosted: {hosted})")
        return named[0]

    async def update_policy(
        self,
        policy: Policy | str,
        *,
        version: int | str,
        source: Any = None,
        mode: UpdateMode = "abort",
        loader: WeightLoader | None = None,
    ) -> UpdateReport:
        """Load new weights into a running policy without stopping its episodes.

        ``policy``: a hosted policy object or its name. ``version``: the new version; an
        ``int`` is also its step (it must exceed the current one), a label steps by one.
        ``source``: what to load (a checkpoint folder for servers; anything the policy's
        own ``update_weights`` accepts); ``None`` only bumps the version. ``mode``: what
        happens to calls in flight (:data:`~gymux.policies.protocol.UpdateMode`).
        ``loader``: the servers' loader; by default :func:`gymux.policies.weights.loader_for`
        for ``sglang``/``vllm`` policies, else the policy's ``update_weights``.

        New calls wait while the update runs (their wait is the turn's ``queue_s``);
        aborted calls are redone under the new weights (the turn's ``abort`` says
        ``"weight_update"``). Updates of one policy run one at a time.
        """
        if mode not in ("abort", "wait", "continue"):
            raise ConfigError(f"mode must be 'abort', 'wait' or 'continue', got {mode!r}")
        target = self._hosted(policy)
        gate = self._gates[id(target)]
        if isinstance(version, int) and not isinstance(version, bool):
            label, step = str(version), version
        else:
            label, step = str(version), -1
        if loader is None and source is not None and not isinstance(target, WeightUpdatable):
            from gymux.policies.weights import loader_for  # aiohttp: only when needed

            loader = loader_for(target)
            if loader is None:
                raise PolicyError(
                    f"policy {target.name!r} cannot load weights (no update_weights, no "
                    "server loader); pass loader= or source=None"
                )
        async with gate.lock:
            step = step if step >= 0 else gate.step + 1
            if step <= gate.step:
                raise ConfigError(f"version step {step} is not above the current {gate.step}")
            paused = time.perf_counter()
            gate.pause()
            try:
                inflight = gate.inflight
                if mode == "abort":
                    gate.abort_inflight("weight_update")
                    await gate.drained()
                elif mode == "wait":
                    await gate.drained()
                loading = time.perf_counter()
                await self._load(target, loader, source, label, mode)
                load_s = time.perf_counter() - loading
                gate.set_version(step, label)
            finally:
                gate.resume()
            paused_s = time.perf_counter() - paused
        _log.info(
            "policy weights updated",
            policy=target.name,
            version=label,
            step=step,
            mode=mode,
            inflight=inflight,
            paused_s=round(paused_s, 6),
        )
        return UpdateReport(
            policy=target.name,
            version=label,
            step=step,
            mode=mode,
            inflight=inflight,
            paused_s=paused_s,
            load_s=load_s,
        )

    async def serve_control(self, *, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve weight updates over HTTP for a trainer in another process, until the
        runtime exits; returns the server's URL (asyncio only: aiohttp).

        ``POST /update_policy`` with ``{"policy": name, "version": ..., "source": ...,
        "mode": ...}`` runs :meth:`update_policy` and answers its :class:`UpdateReport`;
        ``GET /policies`` lists the hosted policies with their weight version. Errors
        answer 400 (bad request) or 409 (the update failed) with ``{"error": ...}``.
        Bind it to loopback (the default): it takes no credentials.
        """
        if self._stack is None:
            raise RuntimeError("Runtime is not running; use 'async with Runtime(...)'")
        from aiohttp import web

        async def update(request: web.Request) -> web.Response:
            try:
                body = msgspec.json.decode(await request.read(), type=_UpdateRequest)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return web.json_response({"error": f"bad request: {exc}"}, status=400)
            try:
                report = await self.update_policy(
                    body.policy, version=body.version, source=body.source, mode=body.mode
                )
            except ConfigError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            except Exception as exc:
                return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=409)
            return web.Response(body=msgspec.json.encode(report), content_type="application/json")

        async def policies(request: web.Request) -> web.Response:
            listing = [
                {
                    "name": policy.name,
                    "version": gate.label,
                    "step": gate.step,
                    "paused": gate.paused,
                    "inflight": gate.inflight,
                }
                for key, policy in self._policies.items()
                for gate in [self._gates[key]]
            ]
            return web.json_response(listing)

        app = web.Application()
        app.router.add_post("/update_policy", update)
        app.router.add_get("/policies", policies)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._stack.push_async_callback(runner.cleanup)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        return f"http://{host}:{bound}"

    async def _load(
        self,
        policy: Policy,
        loader: WeightLoader | None,
        source: Any,
        label: str,
        mode: UpdateMode,
    ) -> None:
        if loader is not None:
            try:
                await loader.pause(mode)
                if source is not None:
                    await loader.load(source, version=label)
            finally:
                # Also after a failed pause: some servers may be paused already.
                with anyio.CancelScope(shield=True):
                    await loader.resume()
        elif source is not None and isinstance(policy, WeightUpdatable):
            await policy.update_weights(source, version=label)

    async def submit(
        self,
        workload: Workload,
        *,
        policy: Policy | None = None,
        run_id: str | None = None,
        only: Callable[[EpisodeJob], bool] | None = None,
        keep_trajectories: bool = True,
    ) -> RunHandle:
        """Start a run; returns at once with its :class:`RunHandle`.

        Without ``policy``, the workload's named policy is built and hosted; a model policy
        (``openai``, ``sglang``, ``vllm``, ``hf``) named again with the same options (see
        :attr:`Workload.shared_policy_key`) is the same object, so runs share its pool or
        loaded model and ``update_policy`` finds it by name.

        ``only`` keeps just the planned episodes it accepts (e.g. the ``(task, sample)``
        pairs a resumed evaluation still needs).

        ``keep_trajectories=False``: the handle keeps no trajectories (its result's list
        is empty and iterating it raises ``ConfigError``); they go to the sinks and the
        ``EpisodeFinished`` events only. For long runs that stream into a store, such as RL
        rollouts: kept, 100,000 episodes of 2k-token prompts hold some GB of memory, and a
        heap that only grows makes every turn dearer (see docs/benchmarks.md).

        Raises ``PluginError`` for an unknown or broken env or one whose optional
        dependencies are not installed, ``KeyError`` for an unknown
        split, ``ValueError`` for unknown task ids or policy names.
        """
        if self._tg is None:
            raise RuntimeError("Runtime is not running; use 'async with Runtime(...)'")
        plugin = self.registry.get_runnable(workload.env)
        run_id = run_id or new_run_id()
        plan = plan_jobs(run_id, workload, plugin)
        jobs: Iterable[EpisodeJob] = plan
        planned = len(plan)
        if only is not None and workload.group_size is not None:
            raise ConfigError("a grouped workload (group_size) cannot be filtered with only=")
        if only is not None:
            # Counted without keeping the jobs (the plan is lazy); run as a filtered stream.
            planned = sum(1 for job in plan if only(job))
            jobs = (job for job in plan if only(job))
        self.scheduler.pool_for(plugin)
        if policy is None:
            policy = await self._named_policy(workload, plugin)
        else:
            await self._ensure_policy(policy)
        handle = RunHandle(run_id, workload, policy, planned, keep_trajectories=keep_trajectories)
        self._handles.append(handle)
        rollout = Rollout.of(workload, self._gates[id(policy)])
        rollout.stats = handle.rollout
        work = plan if workload.group_size is not None else jobs
        self._tg.start_soon(self._execute, handle, plugin, work, rollout, name=f"run {run_id}")
        self._tg.start_soon(self._sample_limits, handle, plugin, name=f"limits of {run_id}")
        return handle

    def _waiting(self, handle: RunHandle, plugin: Any) -> dict[str, tuple[int, int]]:
        """``{limit: (cap, episodes of handle's run waiting for it now)}``."""
        metrics = handle.metrics
        cap = self.config.max_concurrent_episodes
        # Episodes not started wait for a slot only while every slot is taken.
        queued = handle.planned - metrics.episodes_started if self.scheduler.running >= cap else 0
        waiting = {EPISODE_SLOTS: (cap, max(0, queued))}
        pool = self.scheduler.pools.get(plugin.id)
        if pool is not None:
            # Running episodes hold an instance unless the pool is full (then they wait).
            holding = pool.live - pool.idle
            short = metrics.running - holding if pool.live >= pool.cap else 0
            waiting[ENV_INSTANCES] = (pool.cap, max(0, short))
        slots = getattr(handle.policy, "request_slots", None)
        if isinstance(slots, tuple) and len(slots) == 2:
            waiting[POLICY_REQUESTS] = (int(slots[0]), int(slots[1]))
        return waiting

    async def _sample_limits(self, handle: RunHandle, plugin: Any) -> None:
        """While ``handle`` runs, sample which limits its episodes wait for (a plain sleep
        between samples; the run's end cancels it, and the last sample covers the rest)."""
        last = time.perf_counter()
        with anyio.CancelScope() as scope:
            handle._sampler = scope
            if handle.done:
                scope.cancel()
            while True:
                await anyio.sleep(LIMIT_SAMPLE_S)
                now = time.perf_counter()
                handle.metrics.sample_limits(now - last, self._waiting(handle, plugin))
                last = now
        now = time.perf_counter()
        handle.metrics.sample_limits(now - last, self._waiting(handle, plugin))

    async def run(self, workload: Workload, *, policy: Policy | None = None) -> RunResult:
        """Submit ``workload`` and wait for its result."""
        handle = await self.submit(workload, policy=policy)
        return await handle.wait()

    async def _execute(
        self,
        handle: RunHandle,
        plugin: Any,
        jobs: Iterable[EpisodeJob],
        rollout: Rollout,
    ) -> None:
        metrics = handle.metrics
        run_id = handle.run_id

        def feed(event: Event) -> None:
            if event.run_id == run_id:
                metrics(event)

        unsubscribe = self.bus.subscribe(feed)
        sinks = self.sinks

        async def record(trajectory: Trajectory) -> None:
            for sink in sinks:
                await sink.write(trajectory)
            handle._add(trajectory)
            self.bus.publish(EpisodeFinished(run_id=run_id, trajectory=trajectory))

        async def record_group(trajectories: list[Trajectory]) -> None:
            for sink in sinks:
                await write_group(sink, trajectories)
            for trajectory in trajectories:
                handle._add(trajectory)
                self.bus.publish(EpisodeFinished(run_id=run_id, trajectory=trajectory))

        started = time.perf_counter()
        error: BaseException | None = None
        self.bus.publish(
            RunStarted(
                run_id=run_id, env_id=plugin.id, policy=handle.policy.name, episodes=handle.planned
            )
        )
        try:
            with handle._scope:
                if isinstance(jobs, JobPlan) and handle.workload.group_size is not None:
                    await self.scheduler.run_groups(
                        jobs.groups(), plugin, handle.policy, record_group, rollout
                    )
                else:
                    await self.scheduler.run_jobs(jobs, plugin, handle.policy, record, rollout)
        except Exception as exc:
            error = _first_leaf(exc)
            # Not an error log: the error is the run's outcome, raised by handle.wait().
            _log.info("run failed", run_id=run_id, error=repr(error))
        finally:
            with anyio.CancelScope(shield=True):
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
            # The caller keeps its handle; the runtime forgets finished runs, so a
            # long-lived runtime does not accumulate their trajectories.
            if handle in self._handles:
                self._handles.remove(handle)
