"""The ``gymux`` command line: ``gymux run``, ``gymux eval``, ``gymux report``,
``gymux envs``, ``gymux prepare``, ``gymux store``, ``gymux serve-policy``,
``gymux serve-env``."""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import anyio
import msgspec

from gymux import __version__
from gymux.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from gymux.cli.common import Parser as _Parser
from gymux.cli.common import err as _err
from gymux.cli.common import out as _out
from gymux.cli.progress import ProgressDisplay
from gymux.cli.report import add_report_parser, run_report
from gymux.cli.store import add_store_parser, run_store
from gymux.config import MODEL_POLICIES, ConfigError, RuntimeConfig, Workload, load_config
from gymux.env_plugins.agentgym.server import add_serve_env_parser, run_serve_env
from gymux.env_plugins.registry import PluginError, Registry, default_registry
from gymux.log import configure_logging
from gymux.policies.protocol import Policy
from gymux.policies.registry import (
    POLICY_NAMES,
    PolicyOptionsError,
    UnknownPolicyError,
    make_policy,
)
from gymux.runtime import RunResult, Runtime
from gymux.scheduler import plan_jobs

__all__ = ["main"]

EXIT_INTERRUPTED = 130


def _parse_tasks(text: str) -> str | list[int]:
    """``test`` / ``train`` / ``0,3,5`` / ``0-9`` / ``0-9,20``."""
    if not text or not any(ch.isdigit() for ch in text[:1]):
        return text
    ids: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.partition("-")
            if sep:
                first, last = int(lo), int(hi)
                if last < first:
                    raise UsageError(f"--tasks: empty range {part!r}")
                ids.extend(range(first, last + 1))
            else:
                ids.append(int(part))
    except ValueError:
        raise UsageError(
            f"--tasks: cannot read {text!r} (use a split name, 0,1,2 or 0-9)"
        ) from None
    return ids


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gymux", description="Run LLM agents over text environments.")
    parser.add_argument("--version", action="version", version=f"gymux {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a workload and write its trajectories")
    run.add_argument("--env", help="environment id (see 'gymux envs')")
    run.add_argument(
        "--agentgym-url", help="with --env agentgym/<name>: the AgentGym server's base URL"
    )
    run.add_argument("--agentgym-dialect", help="AgentGym dialect (default: from the name)")
    run.add_argument("--policy", default="oracle", help=f"policy: {', '.join(POLICY_NAMES)}")
    run.add_argument("--tasks", default="test", help="split name, or ids like 0,1,2 or 0-9")
    run.add_argument("--samples", type=_positive, default=1, help="episodes per task")
    run.add_argument("--limit", type=_positive, help="only the first N tasks")
    run.add_argument("--max-turns", type=_positive, help="turn budget (default: the env's)")
    run.add_argument("--concurrency", type=_positive, help="max concurrent episodes")
    run.add_argument("--step-timeout", type=_positive_float, help="seconds per env call")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", help="output folder (default runs/<env>-<policy>-<time>)")
    run.add_argument("--config", help="TOML config ([runtime] and [[workloads]])")
    run.add_argument(
        "--format",
        choices=["store", "jsonl"],
        default="store",
        help="trajectory output: the append-only store (OUT/store) or OUT/trajectories.jsonl",
    )
    run.add_argument("--progress", choices=["auto", "on", "off"], default="auto")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    model = run.add_argument_group("model policies (--policy openai / sglang)")
    model.add_argument("--base-url", help="openai: server URL, with or without /v1")
    model.add_argument("--model", help="openai: model name sent with each request")
    model.add_argument(
        "--api-key-env", help="openai: environment variable holding the API key (OPENAI_API_KEY)"
    )
    model.add_argument("--max-concurrency", type=_positive, help="openai: requests in flight")
    model.add_argument(
        "--server", action="append", help="sglang: server URL (repeat for several servers)"
    )
    model.add_argument("--tokenizer", help="sglang: local model path to load the tokenizer from")
    model.add_argument("--temperature", type=float, help="sampling temperature")
    model.add_argument("--max-tokens", type=_positive, help="max tokens generated per turn")

    serve = sub.add_parser(
        "serve-policy", help="run an SGLang server for --policy sglang (needs sglang and a GPU)"
    )
    serve.add_argument("--model", required=True, help="model path or id for sglang")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_positive, default=30000)
    serve.add_argument("--tp", type=_positive, default=1, help="tensor-parallel GPUs")
    serve.add_argument(
        "--extra",
        action="append",
        default=[],
        help="argument for sglang.launch_server (repeat; e.g. --extra=--mem-fraction-static=0.8)",
    )
    serve.add_argument("--startup-timeout", type=_positive_float, default=900.0)
    # Internal, for tests: a JSON list replacing the launch command (skips the checks).
    serve.add_argument("--test-command", help=argparse.SUPPRESS)

    envs = sub.add_parser("envs", help="list installed environments and their splits")
    envs.add_argument("--json", action="store_true", help="print JSON")

    prep = sub.add_parser("prepare", help="generate or build what an env's tasks need before a run")
    prep.add_argument("env", help="environment id (see 'gymux envs')")
    prep.add_argument("--tasks", default="test", help="split name, or ids like 0,1,2 or 0-9")

    ev = sub.add_parser("eval", help="evaluate a policy over a suite (resumable)")
    ev.add_argument("--suite", required=True, help="smoke, agenteval-offline, or a TOML path")
    ev.add_argument("--policy", default="oracle", help=f"policy: {', '.join(POLICY_NAMES)}")
    ev.add_argument("--out", help="output folder (default runs/eval-<suite>-<policy>)")
    ev.add_argument(
        "--rerun-failures", action="store_true", help="run failed episodes again on resume"
    )
    ev.add_argument("--concurrency", type=_positive, help="max concurrent episodes")
    ev.add_argument("--step-timeout", type=_positive_float, help="seconds per env call")
    ev.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    evm = ev.add_argument_group("model policies (--policy openai / sglang)")
    evm.add_argument("--base-url", help="openai: server URL, with or without /v1")
    evm.add_argument("--model", help="openai: model name sent with each request")
    evm.add_argument("--api-key-env", help="openai: environment variable holding the API key")
    evm.add_argument("--max-concurrency", type=_positive, help="openai: requests in flight")
    evm.add_argument("--server", action="append", help="sglang: server URL (repeatable)")
    evm.add_argument("--tokenizer", help="sglang: local model path to load the tokenizer from")
    evm.add_argument("--temperature", type=float, help="sampling temperature")
    evm.add_argument("--max-tokens", type=_positive, help="max tokens generated per turn")

    add_store_parser(sub)
    add_report_parser(sub)
    add_serve_env_parser(sub)
    return parser


def _cmd_prepare(args: argparse.Namespace, registry: Registry) -> int:
    plugin = registry.get(args.env)
    tasks = _parse_tasks(args.tasks)
    ids = plugin.spec.split(tasks).ids if isinstance(tasks, str) else tasks
    if plugin.prepare is None:
        _out(f"{plugin.id}: nothing to prepare (its tasks need no generated data)")
        return EXIT_OK
    started = time.monotonic()
    plugin.prepare(list(ids))
    _out(f"{plugin.id}: prepared {len(ids)} tasks in {time.monotonic() - started:.1f} s")
    return EXIT_OK


def _cmd_envs(args: argparse.Namespace, registry: Registry) -> int:
    rows = registry.status()
    if args.json:
        _out(msgspec.json.encode(rows).decode())
        return EXIT_OK if all(r.ok for r in rows) else EXIT_FAILED
    _out(f"{'env':<12} {'version':<8} {'exec':<8} {'oracle':<7} splits")
    for row in rows:
        if row.ok:
            splits = ", ".join(f"{name}={count}" for name, count in row.splits.items())
            oracle = "yes" if row.has_oracle else "no"
            needs = f"  (not installed: {', '.join(row.missing)})" if row.missing else ""
            _out(f"{row.id:<12} {row.version:<8} {row.execution:<8} {oracle:<7} {splits}{needs}")
        else:
            _out(f"{row.id:<12} BROKEN   {row.error}")
    return EXIT_OK if all(r.ok for r in rows) else EXIT_FAILED


def _workloads(args: argparse.Namespace, file_workloads: list[Workload]) -> list[Workload]:
    if args.env:
        return [
            Workload(
                env=args.env,
                tasks=_parse_tasks(args.tasks),
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


def _runtime_config(args: argparse.Namespace, base: RuntimeConfig) -> RuntimeConfig:
    changes: dict[str, object] = {}
    if args.concurrency:
        changes["max_concurrent_episodes"] = args.concurrency
    if args.step_timeout:
        changes["step_timeout_s"] = args.step_timeout
    if args.log_level:
        changes["log_level"] = args.log_level
    return msgspec.structs.replace(base, **changes) if changes else base


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


def _policy_options(
    args: argparse.Namespace, name: str, base: Mapping[str, object] | None = None
) -> dict[str, object]:
    """Options for ``make_policy``: the workload's ``policy_options`` (``base``), overridden
    by the ``--policy openai/sglang`` flags."""
    base = base or {}
    opts: dict[str, object] = dict(base)
    if name == "openai":
        if args.base_url:
            opts["base_url"] = args.base_url
        if args.model:
            opts["model"] = args.model
        missing = [
            flag
            for flag, key in (("--base-url URL", "base_url"), ("--model NAME", "model"))
            if not opts.get(key)
        ]
        if missing:
            raise UsageError(f"--policy openai needs {' and '.join(missing)}")
        if args.api_key_env:
            opts["api_key_env"] = args.api_key_env
        if args.max_concurrency:
            opts["max_concurrency"] = args.max_concurrency
        if args.max_tokens:
            opts["max_tokens"] = args.max_tokens
    elif name == "sglang":
        if args.server:
            opts["urls"] = list(args.server)
        if args.tokenizer:
            opts.pop("tokenizer", None)
            opts["tokenizer_path"] = args.tokenizer
        if not opts.get("urls"):
            raise UsageError("--policy sglang needs --server URL (repeat for several servers)")
        if not (opts.get("tokenizer_path") or opts.get("tokenizer")):
            raise UsageError("--policy sglang needs --tokenizer PATH (the model's local path)")
        if args.max_tokens:
            opts["max_new_tokens"] = args.max_tokens
    if args.temperature is not None:
        opts["temperature"] = args.temperature
    return opts


async def _run_async(
    args: argparse.Namespace,
    config: RuntimeConfig,
    workloads: list[Workload],
    out: Path,
    registry: Registry,
    policies: dict[str, Policy],
) -> tuple[list[RunResult], bool]:
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    label = ",".join(f"{w.env}/{w.policy}" for w in workloads)
    progress = ProgressDisplay(sys.stderr, label=label) if show else None
    interrupted = False
    handles = []
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch_signals)
        try:
            async with Runtime(config, registry=registry, out=out, out_format=args.format) as rt:
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
        tg.cancel_scope.cancel()
    return [handle.result() for handle in handles], interrupted


def _cmd_run(args: argparse.Namespace, registry: Registry) -> int:
    file_config = load_config(args.config) if args.config else None
    config = _runtime_config(args, file_config.runtime if file_config else RuntimeConfig())
    configure_logging(config.log_level)
    workloads = _workloads(args, file_config.workloads if file_config else [])
    if args.agentgym_url:
        from gymux.env_plugins.agentgym.client import register_bridges

        register_bridges(registry, workloads, args.agentgym_url, dialect=args.agentgym_dialect)
    # Check everything that can be checked before starting anything.
    policies: dict[str, Policy] = {}  # model policies, one object shared by workloads
    for workload in workloads:
        plugin = registry.get_runnable(workload.env)
        plan_jobs("check", workload, plugin)
        if workload.policy not in POLICY_NAMES:
            raise UnknownPolicyError(
                f"unknown policy {workload.policy!r} (choose from: {', '.join(POLICY_NAMES)})"
            )
        key = _policy_key(workload)
        if workload.policy in MODEL_POLICIES and key not in policies:
            options = _policy_options(args, workload.policy, workload.policy_options)
            try:
                policies[key] = make_policy(
                    workload.policy, plugin, seed=workload.seed, options=options
                )
            except PolicyOptionsError as exc:
                label = f"workload {workload.env}/{workload.policy}"
                if workload.policy_options:
                    raise ConfigError(f"{label}: policy_options: {exc}") from None
                raise
    out_text = args.out or (file_config.out if file_config else None)
    if out_text is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_text = f"runs/{workloads[0].env}-{workloads[0].policy}-{stamp}"
    out = Path(out_text)
    results, interrupted = anyio.run(_run_async, args, config, workloads, out, registry, policies)
    for line in _summary_table(results):
        _out(line)
    where = out / "trajectories.jsonl" if args.format == "jsonl" else out / "store"
    _out(f"trajectories: {where}")
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
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if interrupted:
        _err("gymux: interrupted; finished episodes were saved")
        return EXIT_INTERRUPTED
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace, registry: Registry) -> int:
    from gymux.cli.report import write_eval_reports
    from gymux.eval.run import run_eval
    from gymux.eval.suite import load_suite

    config = _runtime_config(args, RuntimeConfig())
    configure_logging(config.log_level)
    suite = load_suite(args.suite)
    if args.policy not in POLICY_NAMES:
        raise UnknownPolicyError(
            f"unknown policy {args.policy!r} (choose from: {', '.join(POLICY_NAMES)})"
        )
    options = _policy_options(args, args.policy, suite.sampling)
    out = Path(args.out or f"runs/eval-{suite.name}-{args.policy}")
    outcome = run_eval(
        suite,
        args.policy,
        out,
        rerun_failures=args.rerun_failures,
        registry=registry,
        config=config,
        options=options,
    )
    for line in write_eval_reports(out, suite, args.policy, outcome.metrics, registry):
        _out(line)
    _out(f"episodes run: {outcome.ran}, already done: {outcome.skipped}")
    _out(f"report: {out / 'report.md'}, {out / 'report.html'}")
    if outcome.interrupted:
        _err("gymux: interrupted; finished episodes were saved (run again to resume)")
        return EXIT_INTERRUPTED
    return EXIT_OK


def _cmd_serve_policy(args: argparse.Namespace) -> int:
    from gymux.policies.sglang.launch import build_command, serve, unavailable_reason

    if args.test_command:
        command = json.loads(args.test_command)
    else:
        reason = unavailable_reason()
        if reason is not None:
            _err(f"gymux: {reason}")
            return EXIT_USAGE
        command = build_command(
            args.model, host=args.host, port=args.port, tp=args.tp, extra=args.extra
        )
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    url = f"http://{host}:{args.port}"

    def say(text: str) -> None:
        _out(text)
        sys.stdout.flush()

    return anyio.run(
        functools.partial(
            serve, command, url, out=say, err=_err, startup_timeout_s=args.startup_timeout
        )
    )


def main(argv: Sequence[str] | None = None, *, registry: Registry | None = None) -> int:
    """Entry point of the ``gymux`` console script; returns the exit code."""
    parser = build_parser()
    registry = registry or default_registry()
    configure_logging("warning")
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        if args.command == "envs":
            return _cmd_envs(args, registry)
        if args.command == "prepare":
            return _cmd_prepare(args, registry)
        if args.command == "store":
            return run_store(args)
        if args.command == "report":
            return run_report(args)
        if args.command == "serve-env":
            return run_serve_env(args, registry)
        if args.command == "serve-policy":
            return _cmd_serve_policy(args)
        if args.command == "eval":
            return _cmd_eval(args, registry)
        return _cmd_run(args, registry)
    except UsageError as exc:
        _err(f"gymux: error: {exc}")
        return EXIT_USAGE
    except (ConfigError, PluginError, UnknownPolicyError, ValueError) as exc:
        _err(f"gymux: error: {exc}")
        return EXIT_USAGE
    except KeyError as exc:
        _err(f"gymux: error: {exc.args[0] if exc.args else exc}")
        return EXIT_USAGE


def console_main() -> NoReturn:
    sys.exit(main())
