"""Running a suite, resumably: ``gymux eval``'s engine.

Trajectories go to the append-only store ``OUT/store`` (the runtime's default sink).
Before running, the store is read and every ``(env, task, sample)`` already finished by an
earlier run of the same suite and policy (``OUT/eval.json``) is skipped; with
``rerun_failures`` triples whose latest episode failed are run again. Metrics always come
from the latest finished trajectory of each triple in the store.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec

from gymux.config import MODEL_POLICIES, RuntimeConfig, Workload
from gymux.env_plugins.registry import Registry, default_registry
from gymux.episode import EpisodeJob
from gymux.eval.metrics import (
    EvalMetrics,
    Triple,
    compute_metrics,
    latest_per_triple,
    score_ranges_for,
)
from gymux.eval.suite import Suite
from gymux.policies.protocol import Policy
from gymux.policies.registry import make_policy
from gymux.runtime import RunHandle, Runtime
from gymux.scheduler import plan_jobs
from gymux.trajectory import FinishReason, Trajectory

__all__ = [
    "EvalOutcome",
    "EvalPlan",
    "plan_eval",
    "read_store",
    "register_suite_bridges",
    "run_eval",
]

MANIFEST = "eval.json"
#: Finish reasons ``--rerun-failures`` treats as failures even when the episode succeeded.
ERROR_REASONS = frozenset({FinishReason.ENV_ERROR, FinishReason.POLICY_ERROR, FinishReason.TIMEOUT})


class EvalOutcome(msgspec.Struct, kw_only=True):
    suite: str
    policy: str
    #: Episodes run by this invocation, and triples skipped as already done.
    ran: int
    skipped: int
    interrupted: bool
    metrics: EvalMetrics


class EvalPlan(msgspec.Struct, kw_only=True):
    #: Per env: the jobs' triples still to run, in order.
    todo: dict[str, list[Triple]]
    skipped: int


def read_store(out: Path) -> list[Trajectory]:
    """Every trajectory in ``OUT/store`` (empty when there is none yet)."""
    from gymux.stores import Store

    path = out / "store"
    if not (path / "STORE").exists():
        return []
    store = Store(path, create=False)
    if "trajectories" not in store.streams():
        return []
    return list(store.trajectories())


def _workload(suite: Suite, index: int, policy: str, options: Mapping[str, Any]) -> Workload:
    env = suite.envs[index]
    return Workload(
        env=env.id,
        tasks=suite.env_split(env),
        samples=suite.env_samples(env),
        policy=policy,
        max_turns=env.max_turns,
        limit=suite.env_tasks(env),
        seed=suite.seed,
        policy_options=dict(options) if policy in MODEL_POLICIES else {},
    )


def suite_triples(suite: Suite, registry: Registry) -> dict[str, list[Triple]]:
    """Every ``(env, task, sample)`` the suite covers, per env, in run order."""
    result: dict[str, list[Triple]] = {}
    for i, env in enumerate(suite.envs):
        jobs = plan_jobs("plan", _workload(suite, i, "oracle", {}), registry.get(env.id))
        result[env.id] = [(j.env_id, j.task_id, j.sample) for j in jobs]
    return result


def _keep_in(keys: set[Triple]) -> Callable[[EpisodeJob], bool]:
    def keep(job: EpisodeJob) -> bool:
        return (job.env_id, job.task_id, job.sample) in keys

    return keep


def _needs_run(t: Trajectory | None, rerun_failures: bool) -> bool:
    if t is None:
        return True
    return rerun_failures and (not t.success or t.finish_reason in ERROR_REASONS)


def plan_eval(
    suite: Suite, registry: Registry, existing: list[Trajectory], *, rerun_failures: bool = False
) -> EvalPlan:
    latest = latest_per_triple(existing)
    todo: dict[str, list[Triple]] = {}
    skipped = 0
    for env, triples in suite_triples(suite, registry).items():
        todo[env] = [k for k in triples if _needs_run(latest.get(k), rerun_failures)]
        skipped += len(triples) - len(todo[env])
    return EvalPlan(todo=todo, skipped=skipped)


def _check_manifest(out: Path, suite: Suite, policy: str) -> None:
    path = out / MANIFEST
    mine = {"suite": suite.name, "policy": policy, "suite_spec": msgspec.to_builtins(suite)}
    if path.exists():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is unreadable: {exc}") from None
        if theirs.get("suite") != suite.name or theirs.get("policy") != policy:
            raise ValueError(
                f"{out} holds an eval of suite {theirs.get('suite')!r} with policy "
                f"{theirs.get('policy')!r}; use another --out for suite {suite.name!r} "
                f"with policy {policy!r}"
            )
        if theirs.get("suite_spec") != mine["suite_spec"]:
            raise ValueError(f"{out}: suite {suite.name!r} changed since the earlier run")
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(mine, indent=2) + "\n")
    tmp.replace(path)


async def _run_async(
    suite: Suite,
    policy: str,
    out: Path,
    plan: EvalPlan,
    registry: Registry,
    config: RuntimeConfig,
    options: Mapping[str, Any],
    max_episodes: int | None,
    handle_signals: bool,
) -> tuple[int, bool]:
    interrupted = False
    budget = max_episodes
    handles: list[RunHandle] = []
    shared: Policy | None = None
    if policy in MODEL_POLICIES and any(plan.todo.values()):
        # Built before any task starts, so bad options are one clean error, not a crash
        # inside the task group.
        first = next(env.id for env in suite.envs if plan.todo.get(env.id))
        shared = make_policy(policy, registry.get(first), seed=suite.seed, options=options)
    async with anyio.create_task_group() as tg:

        async def watch_signals(
            *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()  # handlers are in place before the store opens
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        if handle_signals:
            await tg.start(watch_signals)
        async with Runtime(config, registry=registry, out=out) as rt:
            for i, env in enumerate(suite.envs):
                wanted = plan.todo.get(env.id, [])
                if budget is not None:
                    wanted, budget = wanted[:budget], budget - len(wanted[:budget])
                if not wanted:
                    continue
                workload = _workload(suite, i, policy, options)
                plugin = registry.get(env.id)
                # Model policies: the one object built above serves every env.
                env_policy = (
                    shared if shared is not None else make_policy(policy, plugin, seed=suite.seed)
                )
                handles.append(
                    await rt.submit(workload, policy=env_policy, only=_keep_in(set(wanted)))
                )
            for handle in handles:
                await handle.wait()
        tg.cancel_scope.cancel()
    ran = sum(len(h.result().trajectories) for h in handles)
    return ran, interrupted


def run_eval(
    suite: Suite,
    policy: str,
    out: str | Path,
    *,
    rerun_failures: bool = False,
    registry: Registry | None = None,
    config: RuntimeConfig | None = None,
    options: Mapping[str, Any] | None = None,
    max_episodes: int | None = None,
    handle_signals: bool = True,
) -> EvalOutcome:
    """Run what is left of ``suite`` with ``policy`` into ``out`` and compute the metrics.

    ``options``: model-policy options (the suite's ``[sampling]`` table is merged under
    them). ``max_episodes``: run at most that many episodes (a test hook that stands in
    for an interruption).
    """
    out = Path(out)
    registry = registry or default_registry()
    register_suite_bridges(suite, registry)
    for env in suite.envs:
        registry.get_runnable(env.id)  # unknown or not installed: fail before anything runs
    _check_manifest(out, suite, policy)
    plan = plan_eval(suite, registry, read_store(out), rerun_failures=rerun_failures)
    opts: dict[str, Any] = {**suite.sampling, **(options or {})}
    ran, interrupted = 0, False
    if any(plan.todo.values()) and max_episodes != 0:
        ran, interrupted = anyio.run(
            _run_async,
            suite,
            policy,
            out,
            plan,
            registry,
            config or RuntimeConfig(),
            opts,
            max_episodes,
            handle_signals,
        )
    return EvalOutcome(
        suite=suite.name,
        policy=policy,
        ran=ran,
        skipped=plan.skipped,
        interrupted=interrupted,
        metrics=metrics_for(suite, registry, read_store(out)),
    )


def register_suite_bridges(suite: Suite, registry: Registry) -> None:
    """Register an ``agentgym/<env>`` plugin for each suite env that names a server ``url``."""
    from gymux.env_plugins.agentgym.client import agentgym_plugin, bridge_name

    for env in suite.envs:
        name = bridge_name(env.id)
        if env.url is None or name is None:
            continue
        count = suite.env_tasks(env) or 0
        plugin = agentgym_plugin(
            name,
            env.url,
            tasks=range(env.first_task, env.first_task + count),
            dialect=env.dialect,
            split=suite.env_split(env),
            max_turns=env.max_turns,
        )
        registry.register(plugin, replace=True)


def metrics_for(suite: Suite, registry: Registry, trajectories: list[Trajectory]) -> EvalMetrics:
    """Metrics over the suite's triples only (latest finished trajectory of each)."""
    covered = {k for triples in suite_triples(suite, registry).values() for k in triples}
    mine = [t for t in trajectories if (t.env_id, t.task_id, t.sample) in covered]
    envs = [env.id for env in suite.envs]
    ranges = score_ranges_for(envs, registry)
    return compute_metrics(mine, envs=envs, seed=suite.seed, score_ranges=ranges)
