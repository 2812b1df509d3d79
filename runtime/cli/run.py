"""``gymux run``: run workloads (from flags or a ``--config`` file) and write their
trajectories, a summary table and ``OUT/summary.json``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from gymux.cli import flags
from gymux.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    add_command,
    cancel_on_signals,
    err,
    error_line,
    out,
    parse_tasks,
    positive_int,
    split_of,
)
from gymux.cli.preflight import check_servers
from gymux.cli.progress import ProgressDisplay
from gymux.config import MODEL_POLICIES, RuntimeConfig, Workload, checked, load_config
from gymux.env_plugins.registry import Registry
from gymux.episode import EpisodeJob
from gymux.errors import ConfigError, GymuxError, PolicyOptionsError
from gymux.eval.run import read_store
from gymux.events import EpisodeFinished, Event, RunFinished, RunStarted
from gymux.log import configure_logging
from gymux.policies.protocol import Policy
from gymux.policies.registry import make_policy
from gymux.runtime import RunHandle, Runtime
from gymux.scheduler import plan_jobs
from gymux.sinks import read_jsonl
from gymux.trajectory import FinishReason, Trajectory

__all__ = ["add_parser", "run"]


#: The one-line description of ``gymux run`` and the examples its help shows.
SUMMARY = "run a workload and write its trajectories"
EXAMPLES = (
    "gymux run --env wordle --policy oracle --tasks test --samples 2 -o runs/w",
    "gymux run --ray 127.0.0.1:6379 --env textcraft --policy oracle -o runs/tc",
)


def add_parser(sub: Any) -> None:
    """Register ``gymux run`` on the top-level subparsers."""
    p = add_command(sub, "run", SUMMARY, *EXAMPLES)
    p.add_argument("--env", help="environment id (see 'gymux envs')")
    p.add_argument(
        "--agentgym-url", help="with --env agentgym/<name>: the AgentGym server's base URL"
    )
    p.add_argument("--agentgym-dialect", help="AgentGym dialect (default: from the name)")
    p.add_argument(
        "--agentgym-max-instances",
        type=positive_int,
        help="with --agentgym-url: instances the AgentGym server holds at once (default: the "
        "family's, e.g. 8 for sqlgym, else 16); episodes beyond it wait for a free one",
    )
    flags.add_policy_flag(p)
    p.add_argument("--tasks", default="test", help="split name, or ids like 0,1,2 or 0-9")
    p.add_argument("--samples", type=positive_int, default=1, help="episodes per task")
    p.add_argument("--limit", type=positive_int, help="only the first N tasks")
    p.add_argument("--max-turns", type=positive_int, help="turn budget (default: the env's)")
    flags.add_runtime_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the policy (random)")
    p.add_argument("--out", "-o", help="output folder (default: runs/<env>-<policy>-<time>)")
    p.add_argument("--config", help="TOML config ([runtime] and [[workloads]])")
    p.add_argument(
        "--format",
        choices=["store", "jsonl"],
        default="store",
        help="trajectory output: the append-only store (OUT/store) or OUT/trajectories.jsonl",
    )
    p.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="live progress line on stderr (auto: when stderr is a terminal)",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="--out holds an earlier run of these workloads: run only the episodes not yet in "
        "its store (cancelled, policy_error and env_error episodes run again)",
    )
    again.add_argument(
        "--append", action="store_true", help="add this run's episodes to the store in --out"
    )
    p.add_argument(
        "--events",
        metavar="FILE",
        help="write one JSON line per run_started, episode_finished and run_finished event "
        "to FILE ('-': stdout), each as it happens",
    )
    flags.add_ray_flag(p, "the episodes")
    flags.add_model_flags(p)


#: The flags that set a checked option, named in its error.
_FLAG_OF = {
    "samples": "--samples",
    "limit": "--limit",
    "max_turns": "--max-turns",
    "seed": "--seed",
}


def _workloads(args: argparse.Namespace, file_workloads: list[Workload]) -> list[Workload]:
    if args.env:
        return [
            checked(
                Workload(
                    env=args.env,
                    tasks=parse_tasks(args.tasks),
                    samples=args.samples,
                    policy=args.policy,
                    max_turns=args.max_turns,
                    limit=args.limit,
                    seed=args.seed,
                ),
                labels=_FLAG_OF,
            )
        ]
    if not file_workloads:
        raise UsageError("--env is required (or a --config with [[workloads]])")
    return file_workloads


def _rate(x: float | None) -> str:
    return "not run" if x is None else f"{x * 100:.1f}%"


def _summary_table(rows: list[dict[str, Any]]) -> list[str]:
    header = (
        f"{'env':<10} {'policy':<10} {'episodes':>8} {'success':>8} {'mean reward':>11} "
        f"{'mean turns':>10} {'invalid':>7} {'wall s':>7} {'turns/s':>8}"
    )
    lines = [header, "-" * len(header)]
    for s in rows:
        reward = "-" if s["mean_reward"] is None else f"{s['mean_reward']:.3f}"
        turns = "-" if s["mean_turns"] is None else f"{s['mean_turns']:.2f}"
        lines.append(
            f"{s['env']:<10} {s['policy']:<10} {s['episodes']:>8} "
            f"{_rate(s['success_rate']):>8} {reward:>11} {turns:>10} "
            f"{s['invalid_actions']:>7} {s['wall_s']:>7.2f} {s['turns_per_s']:>8.0f}"
        )
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(s["finish_reasons"].items()))
        lines.append(f"  finish reasons: {reasons or 'none'}")
        if s["cancelled"]:
            lines.append(f"  {s['cancelled']} cancelled episode(s) are not in the success rate")
        lines.append(_limits_line(s))
        times = s.get("time_s") or {}
        if any(times.values()):
            spent = ", ".join(f"{k.removesuffix('_s')} {v:.3g}" for k, v in times.items())
            lines.append(f"  time (episode-s): {spent}")
    return lines


def _limits_line(s: dict[str, Any]) -> str:
    """``  bound by: <limit> (cap N); waited (episode-s): <limit> (cap N) W, ...``: the limit
    that held the run back, and the episode-seconds waited for each."""
    waits = s.get("waits") or {}
    bound = s.get("bound_by")
    if bound not in waits:
        return "  bound by: no limit (no episode waited for a slot, an instance or a request)"
    waited = ", ".join(f"{k} (cap {w['cap']}) {w['wait_s']:.1f}" for k, w in waits.items())
    return f"  bound by: {bound} (cap {waits[bound]['cap']}); waited (episode-s): {waited}"


def _policies(
    args: argparse.Namespace,
    registry: Registry,
    workloads: list[Workload],
    concurrency: int | None = None,
) -> list[Policy]:
    """Check every workload before anything starts; build each workload's policy (model
    policies: one object per :attr:`Workload.shared_policy_key`, shared by the workloads
    naming it)."""
    shared: dict[str, Policy] = {}
    policies: list[Policy] = []
    for workload in workloads:
        plugin = registry.get_runnable(workload.env)
        if isinstance(workload.tasks, str):
            split_of(plugin.spec, workload.tasks)
        plan_jobs("check", workload, plugin)
        flags.check_policy_name(workload.policy)
        key = workload.shared_policy_key
        if key is None:
            policies.append(make_policy(workload.policy, plugin, seed=workload.seed))
            continue
        if key not in shared:
            options = flags.policy_options(args, workload.policy, workload.policy_options)
            try:
                shared[key] = make_policy(
                    workload.policy,
                    plugin,
                    seed=workload.seed,
                    options=options,
                    concurrency=concurrency,  # the policy's caps follow --concurrency
                )
            except PolicyOptionsError as exc:
                if workload.policy_options:
                    label = f"workload {workload.env}/{workload.policy}"
                    raise ConfigError(f"{label}: policy_options: {exc}") from None
                raise
        policies.append(shared[key])
    return policies


def _check_servers(args: argparse.Namespace, workloads: list[Workload]) -> None:
    """Every model server and AgentGym server the workloads need answers (one line naming
    the URL that does not)."""
    seen: set[str] = set()
    for workload in workloads:
        key = workload.shared_policy_key
        if key is not None and key not in seen:
            seen.add(key)
            options = flags.policy_options(args, workload.policy, workload.policy_options)
            check_servers(workload.policy, options)
    if args.agentgym_url:
        check_servers("", {}, [args.agentgym_url])


#: Finish reasons a resumed run runs again (as ``gymux eval`` does).
RERUN_REASONS = frozenset(
    {FinishReason.CANCELLED, FinishReason.POLICY_ERROR, FinishReason.ENV_ERROR}
)
#: Finish reasons of episodes that did not finish normally.
ABNORMAL_REASONS = RERUN_REASONS
Key = tuple[str, str, int, int]


def _key(t: Trajectory) -> Key:
    return (t.env_id, t.policy, t.task_id, t.sample)


def _check_out(args: argparse.Namespace, out_dir: Path) -> list[Trajectory]:
    """Refuse an ``--out`` that already holds results unless ``--resume`` or ``--append``;
    returns the trajectories already in the store (``--resume`` and ``--append``)."""
    if (out_dir / "eval.json").exists():
        raise UsageError(f"{out_dir} holds a gymux eval; use another --out for gymux run")
    store = out_dir / "store"
    jsonl = out_dir / "trajectories.jsonl"
    if args.resume and args.format != "store":
        raise UsageError("--resume needs --format store")
    held = [store / "STORE", jsonl, out_dir / "summary.json"]
    if not any(path.exists() for path in held):
        return []
    if not (args.resume or args.append):
        raise UsageError(
            f"{out_dir} already holds a run; add --resume to run only the episodes not yet in "
            "it, --append to add episodes to it, or use another --out"
        )
    if args.format == "jsonl":
        return list(read_jsonl(jsonl)) if jsonl.exists() else []
    return read_store(out_dir)


def _done_keys(existing: list[Trajectory]) -> set[Key]:
    latest: dict[Key, Trajectory] = {}
    for t in existing:
        latest[_key(t)] = t
    return {k for k, t in latest.items() if t.finish_reason not in RERUN_REASONS}


class _EventLog:
    """``--events FILE``: one JSON line per event (``run_started``, ``episode_finished``,
    ``run_finished``), each written as it is published. An ``episode_finished`` line is
    written after the episode's record is committed (with ``--durability always``:
    durably), so every episode it names is in the store even after a crash."""

    def __init__(self, path: str) -> None:
        if path == "-":
            self._fd, self._own = sys.stdout.fileno(), False
            sys.stdout.flush()
        else:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                raise UsageError(f"--events {path}: {exc.strerror or exc}") from None
            self._own = True
        self._encode = msgspec.json.Encoder().encode

    def __call__(self, event: Event) -> None:
        if isinstance(event, EpisodeFinished):
            t = event.trajectory
            doc: dict[str, Any] = {
                "type": "episode_finished",
                "run_id": t.run_id,
                "episode_id": t.episode_id,
                "env": t.env_id,
                "policy": t.policy,
                "task": t.task_id,
                "sample": t.sample,
                "finish_reason": t.finish_reason.value,
                "success": t.success,
                "reward": t.reward,
            }
        elif isinstance(event, RunStarted | RunFinished):
            doc = msgspec.to_builtins(event)
        else:
            return
        # One small write(2) per line: the line is out before the next event.
        os.write(self._fd, self._encode(doc) + b"\n")

    def close(self) -> None:
        if self._own:
            os.close(self._fd)


def _runtime(
    args: argparse.Namespace, config: RuntimeConfig, registry: Registry, out_dir: Path
) -> Any:
    """The embedded runtime, or with ``--ray`` the Ray driver (same embedding API)."""
    if args.ray is None:
        return Runtime(config, registry=registry, out=out_dir, out_format=args.format)
    from gymux.scale import RayRuntime

    executor = flags.ray_executor(args)
    return RayRuntime(
        config, executor=executor, registry=registry, out=out_dir, out_format=args.format
    )


def _for_ray(args: argparse.Namespace, workload: Workload) -> Workload:
    """Ray workers build their policies from the workload: carry the model flags in it."""
    if workload.policy not in MODEL_POLICIES:
        return workload
    options = flags.policy_options(args, workload.policy, workload.policy_options)
    return msgspec.structs.replace(workload, policy_options=options)


async def _run_async(
    args: argparse.Namespace,
    config: RuntimeConfig,
    workloads: list[Workload],
    out_dir: Path,
    registry: Registry,
    policies: list[Policy],
    done: set[Key],
    events: _EventLog | None,
) -> tuple[list[RunHandle], bool, BaseException | None]:
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    label = ",".join(f"{w.env}/{w.policy}" for w in workloads)
    progress = ProgressDisplay(sys.stderr, label=label) if show else None
    handles: list[RunHandle] = []
    error: BaseException | None = None
    interrupted = False
    try:
        async with cancel_on_signals() as interrupt:
            try:
                async with _runtime(args, config, registry, out_dir) as rt:
                    if progress is not None:
                        rt.subscribe(progress)
                    if events is not None:
                        rt.subscribe(events)
                    for workload, policy in zip(workloads, policies, strict=True):
                        only = _not_done(done, policy.name) if done else None
                        work = _for_ray(args, workload) if args.ray is not None else workload
                        handles.append(await rt.submit(work, policy=policy, only=only))
                    for handle in handles:
                        await handle.wait()
            finally:
                if progress is not None:
                    progress.close()
        interrupted = interrupt.interrupted
    except Exception as exc:  # reported as one line by run(), after the summary
        error = exc
    return handles, interrupted, error


def _not_done(done: set[Key], policy: str) -> Callable[[EpisodeJob], bool]:
    def keep(job: EpisodeJob) -> bool:
        return (job.env_id, policy, job.task_id, job.sample) not in done

    return keep


def _summary_rows(
    workloads: list[Workload],
    policies: list[Policy],
    handles: list[RunHandle],
    existing: list[Trajectory],
    planned: list[int],
) -> list[dict[str, Any]]:
    """One summary per workload over everything the output holds for it: the episodes
    already there (``--resume``/``--append``) and this run's; the latest of each
    ``(task, sample)``. Cancelled episodes are counted but left out of the rates."""
    rows = []
    for i, (workload, policy) in enumerate(zip(workloads, policies, strict=True)):
        handle = handles[i] if i < len(handles) else None
        result = handle.result() if handle is not None else None
        mine = [t for t in existing if t.env_id == workload.env and t.policy == policy.name]
        if result is not None:
            mine += result.trajectories
        latest: dict[Key, Trajectory] = {}
        for t in mine:
            old = latest.get(_key(t))
            # A cancelled episode never replaces one that finished.
            if old is None or t.finish_reason != FinishReason.CANCELLED:
                latest[_key(t)] = t
        trajs = list(latest.values())
        cancelled = sum(1 for t in trajs if t.finish_reason == FinishReason.CANCELLED)
        rated = [t for t in trajs if t.finish_reason != FinishReason.CANCELLED]
        n = len(rated)
        successes = sum(1 for t in rated if t.success)
        summary = result.summary if result is not None else None
        rows.append(
            {
                "run_id": result.run_id if result is not None else None,
                "env": workload.env,
                "policy": policy.name,
                "planned": planned[i],
                "episodes": len(trajs),
                "ran": len(result.trajectories) if result is not None else 0,
                "cancelled": cancelled,
                "successes": successes,
                "success_rate": successes / n if n else None,
                "mean_reward": sum(t.reward for t in rated) / n if n else None,
                "mean_turns": sum(len(t.turns) for t in rated) / n if n else None,
                "turns": sum(len(t.turns) for t in trajs),
                "invalid_actions": sum(t.invalid_actions for t in trajs),
                "retries": summary.retries if summary is not None else 0,
                "finish_reasons": dict(
                    sorted(Counter(t.finish_reason.value for t in trajs).items())
                ),
                "wall_s": summary.wall_s if summary is not None else 0.0,
                "turns_per_s": summary.turns_per_s if summary is not None else 0.0,
                "bound_by": summary.bound_by if summary is not None else None,
                "waits": {
                    w.limit: {"cap": w.cap, "wait_s": round(w.wait_s, 3)}
                    for w in (summary.waits if summary is not None else [])
                },
                # Episode-seconds waiting, in policy calls and in the env (turn timings).
                "time_s": _summed_timings(trajs),
            }
        )
    return rows


def _summed_timings(trajs: list[Trajectory]) -> dict[str, float]:
    """Each kind of turn time (``Trajectory.timings``) summed over ``trajs``."""
    total = {"queue_s": 0.0, "policy_s": 0.0, "env_s": 0.0}
    for t in trajs:
        for key, value in t.timings.items():
            total[key] += value
    return {key: round(value, 6) for key, value in total.items()}


def _write_summary(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    tmp.replace(out_dir / "summary.json")


def _error_of(exc: BaseException) -> GymuxError | None:
    """The gymux error inside ``exc`` (possibly nested in exception groups)."""
    if isinstance(exc, GymuxError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _error_of(inner)
            if found is not None:
                return found
    return None


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run a parsed ``gymux run ...``; returns the exit code."""
    file_config = load_config(args.config) if args.config else None
    config = flags.runtime_config(args, file_config.runtime if file_config else RuntimeConfig())
    configure_logging(config.log_level)
    workloads = _workloads(args, file_config.workloads if file_config else [])
    bridged = [w.env for w in workloads if w.env.startswith("agentgym/")]
    if bridged and not args.agentgym_url:
        raise UsageError(f"--env {bridged[0]} needs --agentgym-url URL (the AgentGym server)")
    if bridged and args.ray is not None:
        # Ray workers find envs through the installed entry points, not this registry.
        raise UsageError(f"--ray cannot run --env {bridged[0]}: AgentGym bridges run embedded")
    if args.agentgym_url:
        from gymux.env_plugins.agentgym.client import register_bridges

        register_bridges(
            registry,
            workloads,
            args.agentgym_url,
            dialect=args.agentgym_dialect,
            max_instances=args.agentgym_max_instances,
        )
    config = flags.follow_instance_caps(args, config, (w.env for w in workloads), registry)
    policies = _policies(args, registry, workloads, config.max_concurrent_episodes)
    out_text = args.out or (file_config.out if file_config else None)
    if out_text is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_text = f"runs/{workloads[0].env}-{workloads[0].policy}-{stamp}"
    out_dir = Path(out_text)
    existing = _check_out(args, out_dir)
    _check_servers(args, workloads)
    done = _done_keys(existing) if args.resume else set()
    planned = [len(plan_jobs("plan", w, registry.get(w.env))) for w in workloads]
    events = _EventLog(args.events) if args.events else None
    try:
        handles, interrupted, error = anyio.run(
            _run_async, args, config, workloads, out_dir, registry, policies, done, events
        )
    finally:
        if events is not None:
            events.close()
    failure = _error_of(error) if error is not None else None
    if error is not None and failure is None:
        raise error  # not a gymux error: a bug, with its traceback
    if (failure is not None or interrupted) and handles and args.format == "store":
        # The store may hold records written but never acknowledged (an episode cancelled
        # while its group was being fsynced, the group a full disk cut short): summarize
        # exactly what it holds.
        with contextlib.suppress(GymuxError, OSError):
            existing = read_store(out_dir)
    rows = _summary_rows(workloads, policies, handles, existing, planned)
    if handles:  # the output opened: summarize what it holds
        for line in _summary_table(rows):
            out(line)
        where = out_dir / "trajectories.jsonl" if args.format == "jsonl" else out_dir / "store"
        out(f"trajectories: {where}")
        _write_summary(out_dir, rows)
    if failure is not None:
        err(error_line(failure))
        return EXIT_FAILED
    if interrupted:
        err("gymux: interrupted; finished episodes were saved")
        return EXIT_INTERRUPTED
    ran = [t for h in handles for t in h.result().trajectories]
    if ran and all(t.finish_reason in ABNORMAL_REASONS for t in ran):
        reasons = Counter(t.finish_reason.value for t in ran)
        text = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
        err(f"gymux: error: no episode finished normally ({text}); see the trajectories' errors")
        return EXIT_FAILED
    return EXIT_OK
