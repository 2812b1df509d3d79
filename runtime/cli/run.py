"""``gymux run``: run workloads (from flags or a ``--config`` file) and write their
trajectories, a summary table and ``OUT/summary.json``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from gymux.cli import flags
from gymux.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    cancel_on_signals,
    err,
    out,
    parse_tasks,
    positive_int,
    split_of,
)
from gymux.cli.progress import ProgressDisplay
from gymux.config import MODEL_POLICIES, RuntimeConfig, Workload, load_config
from gymux.env_plugins.registry import Registry
from gymux.errors import ConfigError, PolicyOptionsError
from gymux.log import configure_logging
from gymux.policies.protocol import Policy
from gymux.policies.registry import make_policy
from gymux.runtime import RunResult, Runtime
from gymux.scheduler import plan_jobs

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register ``gymux run`` on the top-level subparsers."""
    p = sub.add_parser("run", help="run a workload and write its trajectories")
    p.add_argument("--env", help="environment id (see 'gymux envs')")
    p.add_argument(
        "--agentgym-url", help="with --env agentgym/<name>: the AgentGym server's base URL"
    )
    p.add_argument("--agentgym-dialect", help="AgentGym dialect (default: from the name)")
    flags.add_policy_flag(p)
    p.add_argument("--tasks", default="test", help="split name, or ids like 0,1,2 or 0-9")
    p.add_argument("--samples", type=positive_int, default=1, help="episodes per task")
    p.add_argument("--limit", type=positive_int, help="only the first N tasks")
    p.add_argument("--max-turns", type=positive_int, help="turn budget (default: the env's)")
    flags.add_runtime_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default runs/<env>-<policy>-<time>)")
    p.add_argument("--config", help="TOML config ([runtime] and [[workloads]])")
    p.add_argument(
        "--format",
        choices=["store", "jsonl"],
        default="store",
        help="trajectory output: the append-only store (OUT/store) or OUT/trajectories.jsonl",
    )
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto")
    flags.add_model_flags(p)


def _workloads(args: argparse.Namespace, file_workloads: list[Workload]) -> list[Workload]:
    if args.env:
        return [
            Workload(
                env=args.env,
                tasks=parse_tasks(args.tasks),
                samples=args.samples,
                policy=args.policy,
                max_turns=args.max_turns,
                limit=args.limit,
                seed=args.seed,
            )
        ]
    if not file_workloads:
        raise UsageError("--env is required (or a --config with [[workloads]])")
    return file_workloads


def _summary_table(results: list[RunResult]) -> list[str]:
    header = (
        f"{'env':<10} {'policy':<10} {'episodes':>8} {'success':>8} {'mean reward':>11} "
        f"{'mean turns':>10} {'invalid':>7} {'wall s':>7} {'turns/s':>8}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        s = result.summary
        lines.append(
            f"{result.workload.env:<10} {result.policy:<10} {s.episodes:>8} "
            f"{s.success_rate * 100:>7.1f}% {s.mean_reward:>11.3f} {s.mean_turns:>10.2f} "
            f"{s.invalid_actions:>7} {s.wall_s:>7.2f} {s.turns_per_s:>8.0f}"
        )
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(s.finish_reasons.items()))
        lines.append(f"  finish reasons: {reasons or 'none'}")
    return lines


def _policy_key(workload: Workload) -> str:
    """Workloads naming the same model policy with the same options share one object."""
    if not workload.policy_options:
        return workload.policy
    return workload.policy + json.dumps(workload.policy_options, sort_keys=True)


def _model_policies(
    args: argparse.Namespace, registry: Registry, workloads: list[Workload]
) -> dict[str, Policy]:
    """Check every workload before anything starts; build the model policies (one object
    per :func:`_policy_key`, shared by the workloads naming it)."""
    policies: dict[str, Policy] = {}
    for workload in workloads:
        plugin = registry.get_runnable(workload.env)
        if isinstance(workload.tasks, str):
            split_of(plugin.spec, workload.tasks)
        plan_jobs("check", workload, plugin)
        flags.check_policy_name(workload.policy)
        key = _policy_key(workload)
        if workload.policy not in MODEL_POLICIES or key in policies:
            continue
        options = flags.policy_options(args, workload.policy, workload.policy_options)
        try:
            policies[key] = make_policy(
                workload.policy, plugin, seed=workload.seed, options=options
            )
        except PolicyOptionsError as exc:
            if workload.policy_options:
                label = f"workload {workload.env}/{workload.policy}"
                raise ConfigError(f"{label}: policy_options: {exc}") from None
            raise
    return policies


async def _run_async(
    args: argparse.Namespace,
    config: RuntimeConfig,
    workloads: list[Workload],
    out_dir: Path,
    registry: Registry,
    policies: dict[str, Policy],
) -> tuple[list[RunResult], bool]:
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    label = ",".join(f"{w.env}/{w.policy}" for w in workloads)
    progress = ProgressDisplay(sys.stderr, label=label) if show else None
    handles = []
    async with cancel_on_signals() as interrupt:
        try:
            async with Runtime(
                config, registry=registry, out=out_dir, out_format=args.format
            ) as rt:
                if progress is not None:
                    rt.subscribe(progress)
                for workload in workloads:
                    policy = policies.get(_policy_key(workload))
                    handles.append(await rt.submit(workload, policy=policy))
                for handle in handles:
                    await handle.wait()
        finally:
            if progress is not None:
                progress.close()
    return [handle.result() for handle in handles], interrupt.interrupted


def _write_summary(out_dir: Path, results: list[RunResult]) -> None:
    summary = [
        {
            "run_id": r.run_id,
            "env": r.workload.env,
            "policy": r.policy,
            "planned": r.planned,
            **msgspec.to_builtins(r.summary),
        }
        for r in results
    ]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run a parsed ``gymux run ...``; returns the exit code."""
    file_config = load_config(args.config) if args.config else None
    config = flags.runtime_config(args, file_config.runtime if file_config else RuntimeConfig())
    configure_logging(config.log_level)
    workloads = _workloads(args, file_config.workloads if file_config else [])
    if args.agentgym_url:
        from gymux.env_plugins.agentgym.client import register_bridges

        register_bridges(registry, workloads, args.agentgym_url, dialect=args.agentgym_dialect)
    policies = _model_policies(args, registry, workloads)
    out_text = args.out or (file_config.out if file_config else None)
    if out_text is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_text = f"runs/{workloads[0].env}-{workloads[0].policy}-{stamp}"
    out_dir = Path(out_text)
    results, interrupted = anyio.run(
        _run_async, args, config, workloads, out_dir, registry, policies
    )
    for line in _summary_table(results):
        out(line)
    where = out_dir / "trajectories.jsonl" if args.format == "jsonl" else out_dir / "store"
    out(f"trajectories: {where}")
    _write_summary(out_dir, results)
    if interrupted:
        err("gymux: interrupted; finished episodes were saved")
        return EXIT_INTERRUPTED
    return EXIT_OK
