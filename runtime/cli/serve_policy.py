"""``gymux serve-policy``: run an SGLang server for ``--policy sglang`` until stopped.

``gymux serve-policy --model PATH [--host H] [--port N] [--tp N] [--extra ARG ...]``
starts ``sglang.launch_server`` as a :class:`~gymux.policies.sglang.launch.ManagedServer`,
prints the URL to pass to ``gymux run --policy sglang --server URL`` once it is healthy, and
keeps it running until Ctrl-C / SIGTERM (exit 0, "policy server stopped") or until it dies
(exit 1). No process outlives the command.

sglang is the optional extra ``gymux[sglang]``; without it, or without a GPU, the command
prints one line saying so and exits with code 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from gymux.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_command,
    cancel_on_signals,
    err,
    out,
    positive_float,
    positive_int,
)
from gymux.env_plugins.registry import Registry
from gymux.policies.sglang.launch import (
    ManagedServer,
    ServerError,
    build_command,
    unavailable_reason,
)

__all__ = ["add_parser", "run", "serve"]


#: The one-line description of ``gymux serve-policy`` and the examples its help shows.
SUMMARY = "run an SGLang server for --policy sglang (needs sglang and a GPU)"
EXAMPLES = ("gymux serve-policy --model /models/Qwen2.5-7B-Instruct --port 30000",)


def add_parser(sub: Any) -> None:
    """Add ``serve-policy`` to the ``gymux`` subcommands (``sub``: argparse subparsers)."""
    serve_ = add_command(sub, "serve-policy", SUMMARY, *EXAMPLES)
    serve_.add_argument("--model", required=True, help="model path or id for sglang")
    serve_.add_argument("--host", default="127.0.0.1", help="address the server listens on")
    serve_.add_argument("--port", type=positive_int, default=30000, help="TCP port")
    serve_.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel GPUs")
    serve_.add_argument(
        "--extra",
        action="append",
        default=[],
        help="argument for sglang.launch_server (repeat; e.g. --extra=--mem-fraction-static=0.8)",
    )
    serve_.add_argument(
        "--startup-timeout",
        type=positive_float,
        default=900.0,
        help="seconds to wait for the server to become healthy",
    )
    # Internal, for tests: a JSON list replacing the launch command (skips the checks).
    serve_.add_argument("--test-command", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run ``gymux serve-policy``; the exit code. ``registry`` is unused (no env involved)."""
    if args.test_command:
        command = json.loads(args.test_command)
    else:
        reason = unavailable_reason()
        if reason is not None:
            err(f"gymux: {reason}")
            return EXIT_USAGE
        command = build_command(
            args.model, host=args.host, port=args.port, tp=args.tp, extra=args.extra
        )
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    url = f"http://{host}:{args.port}"
    return anyio.run(functools.partial(serve, command, url, startup_timeout_s=args.startup_timeout))


def _say(text: str) -> None:
    out(text)
    sys.stdout.flush()  # the ready line is what a supervising process waits for


async def serve(
    command: Sequence[str],
    url: str,
    *,
    startup_timeout_s: float = 900.0,
    grace_s: float = 15.0,
    on_ready: Callable[[ManagedServer], None] | None = None,
) -> int:
    """Run the server until SIGINT/SIGTERM (exit 0) or until it dies (exit 1)."""
    code = EXIT_OK
    async with cancel_on_signals() as interrupt:
        try:
            async with ManagedServer(
                command, url, startup_timeout_s=startup_timeout_s, grace_s=grace_s
            ) as server:
                _say(f"policy server ready: {url} (pid {server.pid}); Ctrl-C to stop")
                _say(f"use: gymux run --policy sglang --server {url} --tokenizer MODEL_PATH ...")
                if on_ready is not None:
                    on_ready(server)
                returncode = await server.wait()
                err(f"gymux: error: policy server exited with code {returncode}")
                code = EXIT_FAILED
        except ServerError as exc:
            err(f"gymux: error: {exc}")
            code = EXIT_FAILED
    if interrupt.interrupted:
        _say("policy server stopped")
        return EXIT_OK
    return code
