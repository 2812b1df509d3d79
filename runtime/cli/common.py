"""Pieces shared by the ``gymux`` subcommands: output, exit codes, usage errors, argument
types, the mapping from errors to exit codes, and the one signal handler.

Every subcommand module (``gymux.cli.run``, ``gymux.cli.store``, ...) builds its parser with
these argument types, reports bad input through :class:`UsageError`, and runs its async
work inside :func:`cancel_on_signals`.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import anyio.abc

from gymux.env_plugins.protocol import EnvSpec, TaskSplit
from gymux.errors import GymuxError

if TYPE_CHECKING:
    from gymux.env_plugins.registry import Registry

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "HelpFormatter",
    "Interrupt",
    "Parser",
    "UsageError",
    "add_command",
    "cancel_on_signals",
    "check_installed",
    "err",
    "error_line",
    "exit_code_for",
    "install_hint",
    "non_negative_int",
    "out",
    "parse_tasks",
    "positive_float",
    "positive_float_of",
    "positive_int",
    "split_of",
    "with_install_hints",
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions and example epilogs as written, and shows every option's default:
    ``(default: X)`` is appended to its help unless the help names it already. Options whose
    default is "not given" (``None``, an on/off flag's ``False``, an empty list) show none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default == []
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors become :class:`UsageError` (no usage dump), and whose
    help shows the defaults (:class:`HelpFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def add_command(sub: Any, name: str, summary: str, *examples: str) -> argparse.ArgumentParser:
    """Add subcommand ``name`` to ``sub`` (argparse subparsers): ``summary`` is its one-line
    description (in ``gymux --help`` and its own help), ``examples`` its help's epilog."""
    label = "example" if len(examples) == 1 else "examples"
    epilog = f"{label}:\n" + "\n".join(f"  {example}" for example in examples)
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=summary[:1].upper() + summary[1:] + ".", epilog=epilog
    )
    return parser


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


def split_of(spec: EnvSpec, name: str) -> TaskSplit:
    """``spec``'s split ``name``; :class:`UsageError` when the env has no such split."""
    if name not in spec.splits:
        known = ", ".join(sorted(spec.splits)) or "none"
        raise UsageError(f"env {spec.id!r} has no split {name!r} (known: {known})")
    return spec.splits[name]


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


def _positive_float(text: str, unit: str) -> float:
    of = f" of {unit}" if unit else ""
    value = _number(text, float, f"a number{of}")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number{of}, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _positive_float(text, "")


def positive_float_of(unit: str) -> Callable[[str], float]:
    """A finite number > 0 of ``unit``, named in the error (``expected a number of MiB``)."""

    def parse(text: str) -> float:
        return _positive_float(text, unit)

    parse.__name__ = f"positive_float_of_{unit}"
    return parse


def parse_tasks(text: str) -> str | list[int]:
    """The ``--tasks`` value: a split name (``test``, ``train``) or task ids (``0,3,5``,
    ``0-9``, ``0-9,20``)."""
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


# -- errors -> exit codes -----------------------------------------------------------------


def exit_code_for(exc: GymuxError) -> int:
    """The exit code of a reported error: bad input is 2, everything else gymux reports is 1.

    Only :class:`GymuxError` is reported this way; any other exception is a bug and keeps
    its traceback.
    """
    from gymux.errors import ConfigError, PluginError, PolicyOptionsError, UnknownPolicyError

    usage = (UsageError, ConfigError, PluginError, UnknownPolicyError, PolicyOptionsError)
    return EXIT_USAGE if isinstance(exc, usage) else EXIT_FAILED


def error_line(exc: GymuxError) -> str:
    """The one line ``gymux: error: ...`` that reports ``exc`` on stderr (its install hints
    fit a checkout as well as PyPI, see :func:`with_install_hints`)."""
    # A KeyError subclass's str() is the repr of its message: show the message itself.
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return f"gymux: error: {with_install_hints(str(text))}"


# -- install hints ------------------------------------------------------------------------

#: An install hint naming gymux extras, as plugins and optional features write them:
#: ``pip install 'gymux[babyai]'``, ``pip install gymux[arrow]``.
_EXTRA_HINT = re.compile(r"pip install '?gymux\[([A-Za-z0-9_.,-]+)\](?!'? \(in a checkout)'?")


def install_hint(extras: Iterable[str]) -> str:
    """The one way the CLI tells how to install gymux extras: from PyPI, and from a
    checkout of the repository (an editable install)."""
    names = ",".join(extras)
    return f"pip install 'gymux[{names}]' (in a checkout: pip install -e '.[{names}]')"


def with_install_hints(text: str) -> str:
    """``text`` with every ``pip install 'gymux[X]'`` hint written by :func:`install_hint`."""
    return _EXTRA_HINT.sub(lambda m: install_hint(m.group(1).split(",")), text)


def _module_and_hint(missing: str) -> tuple[str, str]:
    """``"minigrid (pip install ...)"`` (an entry of ``EnvPlugin.missing()``) split in two."""
    module, _, rest = missing.partition(" (")
    return module, rest[:-1] if rest.endswith(")") else rest


def check_installed(registry: Registry, env_ids: Iterable[str], *, what: str) -> None:
    """Refuse, in one line, when envs among ``env_ids`` lack optional dependencies: every
    such env and module is named, with one install command for all the extras they need.

    Envs that are unknown or broken are left to the caller's own checks, which name them.
    """
    needs: dict[str, list[str]] = {}
    extras: list[str] = []
    other_hints: list[str] = []
    for env_id in dict.fromkeys(env_ids):
        try:
            absent = registry.get(env_id).missing()
        except GymuxError:
            continue
        for entry in absent:
            module, hint = _module_and_hint(entry)
            needs.setdefault(env_id, []).append(module)
            found = _EXTRA_HINT.search(hint)
            if found:
                extras.extend(e for e in found.group(1).split(",") if e not in extras)
            elif hint and hint not in other_hints:
                other_hints.append(hint)
    if not needs:
        return
    listed = "; ".join(f"{env} needs {', '.join(mods)}" for env, mods in needs.items())
    how = ([install_hint(extras)] if extras else []) + other_hints
    raise UsageError(f"{what}: not installed: {listed}; install with: {'; '.join(how)}")


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
    normally, and the yielded :class:`Interrupt` says which signal stopped it. An exception
    raised by the block comes out as itself (not inside an exception group), so the CLI
    maps a :class:`~gymux.errors.GymuxError` to its exit code.
    """
    interrupt = Interrupt()
    error: Exception | None = None
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
        try:
            yield interrupt
        except Exception as exc:  # re-raised below, outside the task group
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
