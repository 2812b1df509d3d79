"""``gymux envs``: list the installed environments, their splits, and broken plugins."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from gymux.cli.common import EXIT_FAILED, EXIT_OK, add_command, out, with_install_hints
from gymux.env_plugins.registry import PluginStatus, Registry

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register ``gymux envs`` on the top-level subparsers."""
    p = add_command(
        sub, "envs", "list installed environments and their splits", "gymux envs --json"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _line(row: PluginStatus) -> str:
    if not row.ok:
        return f"{row.id:<12} BROKEN   {row.error}"
    splits = ", ".join(f"{name}={count}" for name, count in row.splits.items())
    oracle = "yes" if row.has_oracle else "no"
    needs = f"  (not installed: {', '.join(row.missing)})" if row.missing else ""
    needs = with_install_hints(needs)
    return f"{row.id:<12} {row.version:<8} {row.execution:<8} {oracle:<7} {splits}{needs}"


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run a parsed ``gymux envs``: exit 1 when a plugin is broken."""
    rows = registry.status()
    if args.json:
        out(msgspec.json.encode(rows).decode())
    else:
        out(f"{'env':<12} {'version':<8} {'exec':<8} {'oracle':<7} splits")
        for row in rows:
            out(_line(row))
    return EXIT_OK if all(r.ok for r in rows) else EXIT_FAILED
