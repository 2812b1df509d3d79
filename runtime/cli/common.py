"""Pieces shared by the ``gymux`` subcommands: output, exit codes, usage errors, argument
types, the mapping from errors to exit codes, and the one signal handler.

Every subcommand module (``gymux.cli.run``, ``gymux.cli.store``, ...) builds its parser with
these argument types, reports bad input through :class:`UsageError`, and runs its async
work inside :func:`cancel_on_signals`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import NoReturn, TypeVar

import anyio
import anyio.abc

from gymux.errors import GymuxError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Interrupt",
    "Parser",
    "UsageError",
    "cancel_on_signals",
    "err",
    "exit_code_for",
    "non_negative_int",
    "out",
    "positive_float",
    "positive_int",
]

_N = TypeVar("_N", int, float)

EXIT_OK = 0
#: The command ran but failed (a store error, a server that died, no episode finished).
EXIT_FAILED = 1
#: Bad input: a flag, a config file, an unknown env or policy.
EXIT_USAGE = 2
#: Stopped by SIGINT/SIGTERM (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class UsageError(GymuxError):
    """Bad input: one line on stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors become :class:`UsageError` (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


# -- argument types ---------------------------------------------------------------------


def _number(text: str, kind: Callable[[str], _N], what: str) -> _N:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


# -- errors -> exit codes -----------------------------------------------------------------


def exit_code_for(exc: GymuxError) -> int:
    """The exit code of a reported error: bad input is 2, everything else gymux reports is 1.

    Only :class:`GymuxError` is reported this way; any other exception is a bug and keeps
    its traceback.
    """
    from gymux.errors import ConfigError, PluginError, PolicyOptionsError, UnknownPolicyError

    usage = (UsageError, ConfigError, PluginError, UnknownPolicyError, PolicyOptionsError)
    return EXIT_USAGE if isinstance(exc, usage) else EXIT_FAILED


# -- signals ------------------------------------------------------------------------------


class Interrupt:
    """What :func:`cancel_on_signals` saw: ``signum`` is the signal, or ``None``."""

    __slots__ = ("signum",)

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def interrupted(self) -> bool:
        return self.signum is not None


@asynccontextmanager
async def cancel_on_signals(
    on_signal: Callable[[int], None] | None = None,
) -> AsyncIterator[Interrupt]:
    """Run the block until it ends or SIGINT/SIGTERM arrives, which cancels it.

    The handlers are in place before the block starts. The block's code is cancelled (so its
    ``finally`` clauses and ``async with`` exits run), the context manager then returns
    normally, and the yielded :class:`Interrupt` says which signal stopped it.
    """
    interrupt = Interrupt()
    async with anyio.create_task_group() as tg:

        async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    interrupt.signum = int(signum)
                    if on_signal is not None:
                        on_signal(int(signum))
                    tg.cancel_scope.cancel()
                    return

        await tg.start(watch)
        yield interrupt
        tg.cancel_scope.cancel()
