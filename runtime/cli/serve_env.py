"""``gymux serve-env NAME``: serve an environment over AgentGym's HTTP protocol until stopped.

The server itself is :mod:`gymux.env_plugins.agentgym.server`; this module is its command
line: the flags, their checks, and the run until SIGINT/SIGTERM
(:func:`gymux.cli.common.cancel_on_signals`), after which every instance is closed and the
command exits 0.
"""

from __future__ import annotations

import argparse
import sys

import anyio

from gymux.cli.common import EXIT_OK, UsageError, add_command, cancel_on_signals, out
from gymux.env_plugins.agentgym.dialects import DIALECTS
from gymux.env_plugins.agentgym.server import EnvServer, serve
from gymux.env_plugins.registry import Registry
from gymux.log import configure_logging

__all__ = ["add_parser", "run"]


#: The one-line description of ``gymux serve-env`` and the examples its help shows.
SUMMARY = "serve an environment over AgentGym's HTTP protocol"
EXAMPLES = ("gymux serve-env textcraft --port 36001",)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve-env`` to the ``gymux`` subcommands (``sub``: argparse subparsers)."""
    p = add_command(sub, "serve-env", SUMMARY, *EXAMPLES)
    p.add_argument("name", help="environment id (see 'gymux envs')")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    p.add_argument("--port", type=int, default=36001, help="TCP port (0: any free port)")
    p.add_argument(
        "--max-instances",
        type=int,
        help=(
            "live instances at most; at the cap the least recently used idle one is closed "
            "to make room (default: the plugin's cap, at least 20, the instances AgentGym's "
            "default evaluator holds)"
        ),
    )
    p.add_argument(
        "--idle-timeout", type=float, default=600.0, help="close instances idle this many seconds"
    )
    p.add_argument(
        "--create-wait",
        type=float,
        default=30.0,
        help="seconds a /create at the cap waits for an instance to finish its call (then 503)",
    )
    p.add_argument("--call-timeout", type=float, default=300.0, help="seconds an env call may take")
    p.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        help="seconds a client may take to send a request body (then 408)",
    )
    p.add_argument(
        "--dialect",
        choices=sorted(DIALECTS),
        help="AgentGym family to speak (default: the env's own, else gymux)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level of the server (default: warning)",
    )


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run ``gymux serve-env``; the exit code."""
    if args.log_level:
        configure_logging(args.log_level)
    for flag, value in (
        ("--max-instances", 1 if args.max_instances is None else args.max_instances),
        ("--idle-timeout", args.idle_timeout),
        ("--call-timeout", args.call_timeout),
        ("--read-timeout", args.read_timeout),
        ("--create-wait", args.create_wait),
    ):
        if not 0 < value < float("inf"):
            raise UsageError(f"{flag} must be positive, got {value}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    server = EnvServer(
        registry.get(args.name),
        dialect=DIALECTS[args.dialect] if args.dialect else None,
        max_instances=args.max_instances,
        idle_timeout_s=args.idle_timeout,
        call_timeout_s=args.call_timeout,
        read_timeout_s=args.read_timeout,
        create_wait_s=args.create_wait,
    )

    async def main() -> None:
        def stopping(signum: int) -> None:
            _say(f"gymux serve-env: signal {signum}, shutting down")

        async with cancel_on_signals(stopping):
            await serve(server, args.host, args.port, out=_say)

    anyio.run(main)
    return EXIT_OK


def _say(text: str) -> None:
    out(text)
    sys.stdout.flush()  # the listening line is what a supervising process waits for
