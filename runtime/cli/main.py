"""The ``gymux`` command: builds the top parser, registers every subcommand, dispatches, and
maps errors to exit codes.

Each subcommand lives in its own module with ``add_parser(sub)`` and ``run(args, registry)``
(see :data:`SUBCOMMANDS`); the pieces they share are in :mod:`gymux.cli.common`. Only a
:class:`~gymux.errors.GymuxError` is reported as one line ``gymux: error: ...`` (exit 2 for
bad input, 1 for other failures, see :func:`~gymux.cli.common.exit_code_for`); any other
exception is a bug and keeps its traceback.

Bare ``gymux`` (no subcommand) prints the help with the list of commands and exits 0, as
``gymux --help`` does; so does a command group without its subcommand (``gymux store``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn

from gymux import __version__
from gymux.cli import envs, evolve, prepare, report, run, serve_env, serve_policy, store
from gymux.cli import eval as eval_
from gymux.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    err,
    error_line,
    exit_code_for,
    out,
)
from gymux.env_plugins.registry import Registry, default_registry
from gymux.errors import GymuxError
from gymux.log import configure_logging

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "SUBCOMMANDS",
    "build_parser",
    "console_main",
    "main",
]


# -- the table of subcommands -------------------------------------------------------------


class Subcommand(NamedTuple):
    add_parser: Callable[[Any], None]
    run: Callable[[argparse.Namespace, Registry], int]


#: Every subcommand, in the order ``gymux --help`` lists them.
SUBCOMMANDS: dict[str, Subcommand] = {
    "run": Subcommand(run.add_parser, run.run),
    "serve-policy": Subcommand(serve_policy.add_parser, serve_policy.run),
    "envs": Subcommand(envs.add_parser, envs.run),
    "prepare": Subcommand(prepare.add_parser, prepare.run),
    "eval": Subcommand(eval_.add_parser, eval_.run),
    "evolve": Subcommand(evolve.add_parser, evolve.run),
    "store": Subcommand(store.add_parser, store.run),
    "report": Subcommand(report.add_parser, report.run),
    "serve-env": Subcommand(serve_env.add_parser, serve_env.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gymux",
        description="Run LLM agents over text environments.",
        epilog="example:\n  gymux run --env maze --policy oracle --tasks test --out runs/demo\n\n"
        "'gymux COMMAND --help' shows a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"gymux {__version__}")
    sub = parser.add_subparsers(
        dest="command", title="commands", metavar="COMMAND", parser_class=Parser
    )
    for command in SUBCOMMANDS.values():
        command.add_parser(sub)
    return parser


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
        if args.command is None:  # bare gymux: the command list
            out(parser.format_help().rstrip())
            return EXIT_OK
        return SUBCOMMANDS[args.command].run(args, registry)
    except GymuxError as exc:
        err(error_line(exc))
        return exit_code_for(exc)


def console_main() -> NoReturn:
    sys.exit(main())
