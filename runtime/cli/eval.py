"""``gymux eval``: evaluate a policy over a suite, resumably, and write its reports.

SIGINT/SIGTERM stop the eval (exit 130) with every finished episode saved; running the same
command again resumes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import anyio

from gymux.cli import flags
from gymux.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_command,
    cancel_on_signals,
    check_installed,
    err,
    out,
)
from gymux.cli.preflight import check_servers
from gymux.cli.report import write_eval_reports
from gymux.config import RuntimeConfig
from gymux.env_plugins.registry import Registry
from gymux.eval.run import EvalRun
from gymux.eval.suite import load_suite
from gymux.log import configure_logging

__all__ = ["add_parser", "run"]


#: The one-line description of ``gymux eval`` and the examples its help shows.
SUMMARY = "evaluate a policy over a suite (resumable)"
EXAMPLES = (
    "gymux eval --suite smoke --policy oracle -o runs/eval",
    "gymux eval --ray 127.0.0.1:6379 --suite smoke --policy oracle -o runs/eval",
)


def add_parser(sub: Any) -> None:
    """Register ``gymux eval`` on the top-level subparsers."""
    p = add_command(sub, "eval", SUMMARY, *EXAMPLES)
    p.add_argument("--suite", required=True, help="smoke, agenteval-offline, or a TOML path")
    flags.add_policy_flag(p)
    p.add_argument("--out", "-o", help="output folder (default: runs/eval-<suite>-<policy>)")
    p.add_argument(
        "--rerun-failures", action="store_true", help="run failed episodes again on resume"
    )
    p.add_argument(
        "--keep-errors",
        action="store_true",
        help="on resume, count policy_error/env_error episodes as done (default: run them again)",
    )
    flags.add_runtime_flags(p)
    flags.add_ray_flag(p, "the episodes")
    flags.add_model_flags(p)


async def _run_until_signal(ev: EvalRun) -> bool:
    """Run ``ev``; ``True`` when SIGINT/SIGTERM stopped it. The handlers are in place
    before the store opens."""
    async with cancel_on_signals() as interrupt:
        await ev.run()
    return interrupt.interrupted


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run a parsed ``gymux eval ...``; returns the exit code."""
    config = flags.runtime_config(args, RuntimeConfig())
    configure_logging(config.log_level)
    suite = load_suite(args.suite)
    check_installed(registry, (env.id for env in suite.envs), what=f"suite {suite.name!r}")
    flags.check_policy_name(args.policy)
    options = flags.policy_options(args, args.policy, suite.sampling)
    out_dir = Path(args.out or f"runs/eval-{suite.name}-{args.policy}")
    config = flags.follow_instance_caps(args, config, (env.id for env in suite.envs), registry)
    ev = EvalRun(
        suite,
        args.policy,
        out_dir,
        rerun_failures=args.rerun_failures,
        registry=registry,
        config=config,
        options=options,
        keep_errors=args.keep_errors,
        executor=flags.ray_executor(args),
    )
    if ev.pending:
        # The servers answer, and what they say about their model is part of the identity.
        urls = [env.url for env in suite.envs if env.url]
        reported = check_servers(args.policy, ev.options, urls)
        if reported:
            ev.pin_server_identity(reported)
    interrupted = anyio.run(_run_until_signal, ev) if ev.pending else False
    outcome = ev.outcome(interrupted=interrupted)
    for line in write_eval_reports(out_dir, suite, args.policy, outcome.metrics, registry):
        out(line)
    identity = ", ".join(f"{k}={v}" for k, v in outcome.identity.items() if k != "policy")
    if identity:
        out(f"policy: {args.policy} ({identity})")
    out(f"episodes run: {outcome.ran}, already done: {outcome.skipped}")
    out(f"report: {out_dir / 'report.md'}, {out_dir / 'report.html'}")
    if outcome.interrupted:
        err("gymux: interrupted; finished episodes were saved (run again to resume)")
        return EXIT_INTERRUPTED
    reasons = outcome.metrics.overall.finish_reasons
    errors = sum(reasons.get(k, 0) for k in ("policy_error", "env_error"))
    if outcome.metrics.overall.episodes and errors == outcome.metrics.overall.episodes:
        err(
            f"gymux: error: no episode finished normally ({errors} ended policy_error or "
            "env_error); run the same command again to rerun them"
        )
        return EXIT_FAILED
    return EXIT_OK
