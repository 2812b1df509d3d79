"""``gymux prepare``: generate or build what an env's tasks need before a run."""

from __future__ import annotations

import argparse
import time
from typing import Any

from gymux.cli.common import EXIT_OK, add_command, out, parse_tasks, split_of
from gymux.env_plugins.registry import Registry

__all__ = ["add_parser", "run"]


#: The one-line description of ``gymux prepare`` and the examples its help shows.
SUMMARY = "generate or build what an env's tasks need before a run"
EXAMPLES = ("gymux prepare textworld --tasks test",)


def add_parser(sub: Any) -> None:
    """Register ``gymux prepare`` on the top-level subparsers."""
    p = add_command(sub, "prepare", SUMMARY, *EXAMPLES)
    p.add_argument("env", help="environment id (see 'gymux envs')")
    p.add_argument("--tasks", default="test", help="split name, or ids like 0,1,2 or 0-9")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run a parsed ``gymux prepare ENV``; returns the exit code."""
    plugin = registry.get(args.env)
    tasks = parse_tasks(args.tasks)
    ids = split_of(plugin.spec, tasks).ids if isinstance(tasks, str) else tasks
    if plugin.prepare is None:
        out(f"{plugin.id}: nothing to prepare (its tasks need no generated data)")
        return EXIT_OK
    started = time.monotonic()
    plugin.prepare(list(ids))
    out(f"{plugin.id}: prepared {len(ids)} tasks in {time.monotonic() - started:.1f} s")
    return EXIT_OK
