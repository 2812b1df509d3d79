"""``gymux`` itself (gymux.cli.main): the subcommand table, ``--version``, bad subcommands,
and the mapping of errors to exit codes (a bug is never reported as bad input)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest

from gymux import __version__
from gymux.cli.common import EXIT_FAILED, EXIT_USAGE
from gymux.errors import (
    ConfigError,
    EnvError,
    GymuxError,
    PluginError,
    PolicyOptionsError,
    StoreError,
    SuiteError,
    UnknownPolicyError,
)

pytestmark = pytest.mark.usefixtures("fresh_structlog")

Cli = Callable[..., Any]
cli_main = importlib.import_module("gymux.cli.main")

BAD_COMMANDS = {
    "unknown-subcommand": (["frobnicate"], "frobnicate"),
    "no-subcommand": ([], "command"),
}


@pytest.mark.parametrize("case", list(BAD_COMMANDS))
def test_bad_subcommand(cli: Cli, case: str) -> None:
    args, needle = BAD_COMMANDS[case]
    cli(args).assert_usage_error(needle)


def test_version(run_gymux) -> None:
    proc = run_gymux(["--version"])
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"gymux {__version__}"


def test_every_subcommand_is_registered_with_add_parser_and_run() -> None:
    names = ["run", "serve-policy", "envs", "prepare", "eval", "store", "report", "serve-env"]
    assert list(cli_main.SUBCOMMANDS) == names
    parser = cli_main.build_parser()
    for name, command in cli_main.SUBCOMMANDS.items():
        assert callable(command.add_parser) and callable(command.run), name
        with pytest.raises(SystemExit):  # each one parses its own --help
            parser.parse_args([name, "--help"])
    for name in names:  # one module per subcommand: gymux.cli.serve_env for serve-env
        mod = importlib.import_module(f"gymux.cli.{name.replace('-', '_')}")
        assert cli_main.SUBCOMMANDS[name] == (mod.add_parser, mod.run)


# -- errors -> exit codes -----------------------------------------------------------------


@pytest.fixture
def failing_envs(monkeypatch: pytest.MonkeyPatch) -> Callable[[BaseException], None]:
    """``failing_envs(exc)``: make ``gymux envs`` raise ``exc``."""

    def install(exc: BaseException) -> None:
        def run(args: object, registry: object) -> int:
            raise exc

        command = cli_main.SUBCOMMANDS["envs"]
        monkeypatch.setitem(cli_main.SUBCOMMANDS, "envs", command._replace(run=run))

    return install


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConfigError("bad key `x`"), EXIT_USAGE),
        (SuiteError("suite s: bad key `x`"), EXIT_USAGE),
        (PluginError("nosuch", "not installed"), EXIT_USAGE),
        (UnknownPolicyError("unknown policy 'gpt'"), EXIT_USAGE),
        (PolicyOptionsError("policy 'sglang': bogus"), EXIT_USAGE),
        (StoreError("stream is damaged"), EXIT_FAILED),
        (EnvError("the env died"), EXIT_FAILED),
        (GymuxError("something gymux reports"), EXIT_FAILED),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_gymux_errors_are_one_line_and_an_exit_code(
    inproc: Cli, failing_envs: Callable[[BaseException], None], exc: GymuxError, code: int
) -> None:
    failing_envs(exc)
    res = inproc(["envs"])
    assert res.rc == code
    assert res.err == f"gymux: error: {exc}\n"
    assert res.out == ""


@pytest.mark.parametrize(
    "exc", [ValueError("a bug"), KeyError("a bug"), TypeError("a bug")], ids=repr
)
def test_a_bug_is_not_reported_as_bad_input(
    inproc: Cli, failing_envs: Callable[[BaseException], None], exc: Exception
) -> None:
    """A bare ValueError/KeyError from a bug inside a subcommand propagates with its
    traceback; it is never turned into exit 2."""
    failing_envs(exc)
    with pytest.raises(type(exc)) as raised:
        inproc(["envs"])
    assert raised.value is exc
