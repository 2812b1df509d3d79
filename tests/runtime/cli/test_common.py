"""The pieces the subcommands share (gymux.cli.common): argument types, ``--tasks``, splits,
errors -> exit codes, and the one signal handler."""

from __future__ import annotations

import argparse
import os
import signal

import anyio
import pytest

from gymux.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    Parser,
    UsageError,
    cancel_on_signals,
    error_line,
    exit_code_for,
    non_negative_int,
    parse_tasks,
    positive_float,
    positive_float_of,
    positive_int,
    split_of,
)
from gymux.env_plugins.builtin.maze.plugin import MAZE_SPEC
from gymux.errors import ConfigError, GymuxError, StoreError


def _type_error(parse: object, text: str) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        parse(text)  # type: ignore[operator]
    return str(raised.value)


def test_number_types() -> None:
    assert positive_int("3") == 3
    assert _type_error(positive_int, "0") == "expected a positive integer, got 0"
    assert _type_error(positive_int, "two") == "expected a positive integer, got 'two'"
    assert non_negative_int("0") == 0
    assert _type_error(non_negative_int, "-1") == "expected a number >= 0, got -1"
    assert _type_error(non_negative_int, "x") == "expected a whole number, got 'x'"
    assert positive_float("0.5") == 0.5
    assert _type_error(positive_float, "0") == "expected a positive number, got 0"
    assert _type_error(positive_float, "inf") == "expected a positive number, got inf"
    assert _type_error(positive_float, "nan") == "expected a positive number, got nan"
    assert _type_error(positive_float, "soon") == "expected a number, got 'soon'"
    mib = positive_float_of("MiB")
    assert mib("64") == 64.0
    assert _type_error(mib, "0") == "expected a positive number of MiB, got 0"
    assert _type_error(mib, "big") == "expected a number of MiB, got 'big'"


def test_parser_errors_are_usage_errors() -> None:
    parser = Parser(prog="x")
    parser.add_argument("--n", type=positive_int)
    with pytest.raises(UsageError, match="--n: expected a positive integer, got 0"):
        parser.parse_args(["--n", "0"])


def test_parse_tasks() -> None:
    assert parse_tasks("test") == "test"
    assert parse_tasks("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_tasks("5") == [5]
    with pytest.raises(UsageError, match="--tasks: empty range '3-1'"):
        parse_tasks("3-1")
    with pytest.raises(UsageError, match="--tasks: cannot read '1,,2'"):
        parse_tasks("1,,2")


def test_split_of() -> None:
    assert split_of(MAZE_SPEC, "test") is MAZE_SPEC.splits["test"]
    with pytest.raises(UsageError, match=r"env 'maze' has no split 'dev' \(known: test, train\)"):
        split_of(MAZE_SPEC, "dev")


def test_exit_codes_and_error_lines() -> None:
    assert exit_code_for(UsageError("x")) == EXIT_USAGE
    assert exit_code_for(ConfigError("x")) == EXIT_USAGE
    assert exit_code_for(StoreError("x")) == EXIT_FAILED
    assert exit_code_for(GymuxError("x")) == EXIT_FAILED
    assert error_line(ConfigError("bad `x`")) == "gymux: error: bad `x`"

    class Missing(GymuxError, KeyError):
        pass

    # A KeyError's str() quotes its message; the line shows the message itself.
    assert error_line(Missing("no split 'dev'")) == "gymux: error: no split 'dev'"


# -- cancel_on_signals ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_cancels_the_block_and_is_reported(signum: int) -> None:
    seen: list[int] = []
    cleaned = False
    async with cancel_on_signals(seen.append) as interrupt:
        assert not interrupt.interrupted
        try:
            os.kill(os.getpid(), signum)  # the handler is in place already
            await anyio.sleep(10)
            pytest.fail("the block was not cancelled")
        finally:
            cleaned = True
    assert cleaned
    assert interrupt.interrupted and interrupt.signum == signum
    assert seen == [signum]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


@pytest.mark.anyio
async def test_a_block_that_ends_is_not_interrupted() -> None:
    async with cancel_on_signals() as interrupt:
        await anyio.sleep(0)
    assert not interrupt.interrupted and interrupt.signum is None


@pytest.mark.anyio
async def test_an_error_in_the_block_comes_out_as_itself() -> None:
    """Not wrapped in an exception group, so the CLI maps a GymuxError to its exit code
    (and a bug keeps its own type)."""
    error = ConfigError("bad")
    with pytest.raises(ConfigError) as raised:
        async with cancel_on_signals():
            raise error
    assert raised.value is error
    with pytest.raises(KeyError):
        async with cancel_on_signals():
            raise KeyError("a bug")
