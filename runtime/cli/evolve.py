"""``gymux evolve``: behavioural cloning then AgentEvol iterations with a real model.

Resumable: killed at any point (SIGKILL included), the same command continues from the last
finished stage; episodes already stored are not run again. SIGINT/SIGTERM stop it (exit 130)
with every finished stage and episode kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anyio

from gymux.cli import flags
from gymux.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    add_command,
    cancel_on_signals,
    check_installed,
    err,
    out,
)
from gymux.env_plugins.registry import Registry
from gymux.log import configure_logging

__all__ = ["add_parser", "run"]

#: The one-line description of ``gymux evolve`` and the examples its help shows.
SUMMARY = "train a model by behavioural cloning then AgentEvol iterations (resumable)"
EXAMPLES = (
    "gymux evolve --config evolve.toml --out runs/evolve",
    "gymux evolve --ray 127.0.0.1:6379 --config evolve.toml --out runs/evolve",
)


def add_parser(sub: Any) -> None:
    """Register ``gymux evolve`` on the top-level subparsers."""
    p = add_command(sub, "evolve", SUMMARY, *EXAMPLES)
    p.add_argument("--config", required=True, help="evolve TOML (see docs/agentevol.md)")
    p.add_argument("--out", "-o", required=True, help="the run's folder (resumed if it exists)")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="log on stderr from this level (default: warning)",
    )
    flags.add_ray_flag(p, "the expert, explore and eval episodes (learning stays here)")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run a parsed ``gymux evolve ...``; returns the exit code."""
    from gymux.evolve import Evolve, load_evolve_config, write_evolve_report
    from gymux.policies.hf.models import StageDisplay, is_builtin, materialise_smollm2

    configure_logging(args.log_level)
    config = load_evolve_config(args.config)
    executor = flags.ray_executor(args)
    if executor is not None:
        bridged = [env.id for env in config.envs if env.id.startswith("agentgym/")]
        if bridged:
            raise UsageError(f"--ray cannot run env {bridged[0]}: AgentGym bridges run embedded")
    check_installed(registry, (env.id for env in config.envs), what="the evolve config")
    out_dir = Path(args.out)
    evolve = Evolve(config, out_dir, registry=registry, on_event=err, executor=executor)
    if is_builtin(config.base_model):
        materialise_smollm2(progress=StageDisplay(sys.stderr))
    pending = evolve.pending()
    if pending:
        err(f"gymux evolve: {len(pending)} stage(s) to run: {', '.join(pending)}")

    async def main() -> bool:
        async with cancel_on_signals() as interrupt:
            await evolve.run()
        return interrupt.interrupted

    interrupted = anyio.run(main) if pending else False
    for path in write_evolve_report(out_dir, evolve.journal):
        out(f"wrote {path}")
    if interrupted:
        err("gymux: interrupted; finished stages and episodes were saved (run again to resume)")
        return EXIT_INTERRUPTED
    return EXIT_OK
