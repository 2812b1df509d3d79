"""``gymux envs``: list the installed environments, their splits, and broken plugins."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from gymux.cli.common import EXIT_FAILED, EXIT_OK, add_command, out, with_install_hints
from gymux.env_plugins.registry import PluginError, PluginStatus, Registry

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register ``gymux envs`` on the top-level subparsers."""
    p = add_command(
        sub, "envs", "list installed environments and their splits", "gymux envs --json"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


#: Printed under the table: what the ``agentgym`` column means.
_AGENTGYM_LEGEND = (
    "(agentgym: \"same\" = task id N is AgentGym's item N, AgentEval's <env>_N; "
    '"no" = ids differ, why: gymux envs --json, field agentgym_ids)'
)


def _agentgym_note(registry: Registry, row: PluginStatus) -> str:
    """The env spec's ``agentgym_ids`` note (``""``: none, or a broken plugin)."""
    if not row.ok:
        return ""
    try:
        return registry.get(row.id).spec.agentgym_ids
    except PluginError:
        return ""


def _agentgym_word(note: str) -> str:
    """The column value: the note's first word (``same``, ``no``), ``-`` when there is none."""
    return note.split(":", 1)[0].strip() or "-"


def _line(row: PluginStatus, agentgym: str) -> str:
    if not row.ok:
        return f"{row.id:<12} BROKEN   {row.error}"
    splits = ", ".join(f"{name}={count}" for name, count in row.splits.items())
    oracle = "yes" if row.has_oracle else "no"
    needs = f"  (not installed: {', '.join(row.missing)})" if row.missing else ""
    needs = with_install_hints(needs)
    return (
        f"{row.id:<12} {row.version:<8} {row.execution:<8} {oracle:<7} "
        f"{_agentgym_word(agentgym):<9} {splits}{needs}"
    )


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run a parsed ``gymux envs``: exit 1 when a plugin is broken."""
    rows = registry.status()
    notes = {row.id: _agentgym_note(registry, row) for row in rows}
    if args.json:
        listing = [{**msgspec.to_builtins(row), "agentgym_ids": notes[row.id]} for row in rows]
        out(msgspec.json.encode(listing).decode())
    else:
        out(f"{'env':<12} {'version':<8} {'exec':<8} {'oracle':<7} {'agentgym':<9} splits")
        for row in rows:
            out(_line(row, notes[row.id]))
        if any(notes.values()):
            out(_AGENTGYM_LEGEND)
    return EXIT_OK if all(r.ok for r in rows) else EXIT_FAILED
