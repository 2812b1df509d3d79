"""``gymux`` itself (gymux.cli.main): the subcommand table, ``--version``, bad subcommands,
bare ``gymux``, every parser's help (descriptions, examples, defaults), and the mapping of
errors to exit codes (a bug is never reported as bad input)."""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Callable, Iterator
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
    "unknown-store-subcommand": (["store", "frobnicate"], "frobnicate"),
}


@pytest.mark.parametrize("case", list(BAD_COMMANDS))
def test_bad_subcommand(cli: Cli, case: str) -> None:
    args, needle = BAD_COMMANDS[case]
    cli(args).assert_usage_error(needle)


@pytest.mark.parametrize(
    ("args", "commands"),
    [
        ([], ["run", "serve-policy", "envs", "prepare", "eval", "store", "report", "serve-env"]),
        (["store"], ["info", "tail", "verify", "export", "compact"]),
    ],
    ids=["gymux", "gymux-store"],
)
def test_a_command_group_alone_prints_its_command_list(
    cli: Cli, args: list[str], commands: list[str]
) -> None:
    """Bare ``gymux`` (and ``gymux store``) is asked nothing wrong: it prints the help with
    the command list on stdout and exits 0, as ``--help`` does."""
    res = cli(args)
    assert res.rc == 0, res.err
    assert res.err == ""
    listed = [line.split()[0] for line in res.out.splitlines() if re.match(r" {4}\S", line)]
    assert [c for c in listed if c in commands] == commands
    assert "example" in res.out


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command parser below ``parser``, with its full command line."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{parser.prog.split(' ', 1)[-1]} {name}".replace("gymux ", ""), sub
                yield from _subparsers(sub)


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    return list(_subparsers(cli_main.build_parser()))


@pytest.mark.parametrize("command", [name for name, _ in _all_parsers()])
def test_every_command_has_a_description_an_example_and_option_help(command: str) -> None:
    parser = dict(_all_parsers())[command]
    assert parser.description and "\n" not in parser.description.strip(), command
    assert parser.epilog and "example" in parser.epilog, f"{command}: no example"
    assert f"gymux {command.split()[0]}" in parser.epilog, f"{command}: example is not of it"
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help is argparse.SUPPRESS:
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{command} {name}: no help text"
        shows_default = action.option_strings and action.default not in (None, False, [])
        if shows_default:
            formatter = parser._get_formatter()
            assert "default" in formatter._expand_help(action), f"{command} {name}: default"
    assert text


def test_the_help_shows_defaults_policy_oracle_among_them(capsys: Any) -> None:
    for command in (["run"], ["eval"]):
        assert cli_main.main([*command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "(default: oracle)" in out, command
    assert cli_main.main(["store", "tail", "--help"]) == 0
    assert "(default: 10)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["eval", "--suite", "smoke"],
        ["report", "x"],
        ["store", "export", "x", "--format", "chat"],
    ],
    ids=["run", "eval", "report", "store-export"],
)
def test_dash_o_is_out(command: list[str]) -> None:
    args = cli_main.build_parser().parse_args([*command, "-o", "somewhere"])
    assert args.out == "somewhere"


def test_version(run_gymux) -> None:
    proc = run_gymux(["--version"])
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"gymux {__version__}"


def test_every_subcommand_is_registered_with_add_parser_and_run() -> None:
    names = [
        "run",
        "serve-policy",
        "envs",
        "prepare",
        "eval",
        "evolve",
        "store",
        "report",
        "serve-env",
    ]
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


@pytest.mark.parametrize("policy", ["sglang", "vllm"])
def test_a_server_url_that_is_not_http_is_one_line_and_exit_2(
    inproc: Cli, policy: str, tmp_path: Any
) -> None:
    args = ["run", "--env", "maze", "--policy", policy, "--server", "ftp://127.0.0.1:9"]
    args += ["--tokenizer", str(tmp_path), "--tasks", "0", "--out", str(tmp_path / "o")]
    result = inproc(args)
    result.assert_usage_error("$.urls[0]")
