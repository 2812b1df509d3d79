"""Every numeric option of the config schema is bounded: an out-of-range value, from a TOML
file or a CLI flag, is one line naming the option (exit 2), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from gymux.cli.main import main
from gymux.config import MAX_EPISODES, ConfigError, parse_config

pytestmark = pytest.mark.usefixtures("fresh_structlog")

#: (section, key, a value past the bound, a value inside it)
RUNTIME_CASES = [
    ("max_concurrent_episodes", "9999999999999", "1000"),
    ("env_instances", "{ maze = 9999999999999 }", "{ maze = 4 }"),
    ("step_timeout_s", "1e300", "30.5"),
    ("step_timeout_s", "inf", "30.5"),
    ("step_timeout_s", "nan", "30.5"),
    ("policy_timeout_s", "1e300", "60"),
    ("episode_timeout_s", "1e300", "600"),
    ("close_timeout_s", "1e300", "5"),
    ("env_retries", "9999999999999", "3"),
    ("retry_backoff_s", "1e300", "0.1"),
    ("retry_backoff_max_s", "1e300", "5"),
    ("gc_threshold", "9999999999999", "10000"),
]
WORKLOAD_CASES = [
    ("samples", "100000000", "8"),
    ("max_turns", "9999999999999", "50"),
    ("limit", "9999999999999", "5"),
    ("seed", "9223372036854775807", "12"),
]


def _runtime_toml(key: str, value: str) -> str:
    return f'[runtime]\n{key} = {value}\n\n[[workloads]]\nenv = "maze"\n'


def _workload_toml(key: str, value: str) -> str:
    return f'[[workloads]]\nenv = "maze"\n{key} = {value}\n'


@pytest.mark.parametrize(("key", "bad", "good"), RUNTIME_CASES + WORKLOAD_CASES)
def test_toml_bounds_name_the_key(key: str, bad: str, good: str) -> None:
    toml = _runtime_toml if (key, bad, good) in RUNTIME_CASES else _workload_toml
    parse_config(toml(key, good))  # inside the bound: accepted
    if key == "seed":  # the largest TOML integer is a valid seed; the CLI can go past it
        parse_config(toml(key, bad))
        return
    with pytest.raises(ConfigError) as info:
        parse_config(toml(key, bad), source="x.toml")
    message = str(info.value)
    assert message.startswith("x.toml: ") and key in message and "\n" not in message


@pytest.mark.parametrize(("key", "bad", "good"), RUNTIME_CASES[:2] + RUNTIME_CASES[8:])
def test_cli_reports_a_config_file_out_of_range_in_one_line(
    key: str, bad: str, good: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(_runtime_toml(key, bad))
    code = main(["run", "--config", str(path), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    (line,) = captured.err.splitlines()
    assert line.startswith("gymux: error: ") and key in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--concurrency", "9999999999999", "max_concurrent_episodes"),
        ("--step-timeout", "1e300", "step_timeout_s"),
        ("--samples", "100000000", "samples"),
        ("--limit", "9999999999999", "limit"),
        ("--max-turns", "9999999999999", "max_turns"),
        ("--seed", "9" * 30, "seed"),
    ],
)
def test_cli_flags_out_of_range_are_one_line(
    flag: str, value: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["run", "--env", "maze", flag, value, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    (line,) = captured.err.splitlines()
    assert line.startswith("gymux: error: ") and field in line and flag in line, line
    assert not out.exists()


def test_a_workload_of_more_than_the_episode_cap_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # wordle's train split has 3,468 tasks: x 1,000,000 samples (each within its bound) is
    # past the cap on episodes per workload
    assert parse_config(_workload_toml("samples", "1000000")).workloads[0].samples == 1_000_000
    out = tmp_path / "o"
    args = ["run", "--env", "wordle", "--tasks", "train", "--samples", "1000000", "--out", str(out)]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    (line,) = captured.err.splitlines()
    assert "3,468,000,000 episodes" in line and f"{MAX_EPISODES:,}" in line, line
    assert not out.exists()
