"""``gymux run`` (gymux.cli.run): workloads from flags and config files, bad input, broken
plugins, and SIGINT/SIGTERM.

The CLI runs both in-process (``gymux.cli.main.main`` returns the exit code) and as real
``python -m gymux`` subprocesses; outputs are real files read back with the store reader
(``gymux.stores.Store``) or ``gymux.sinks.read_jsonl`` for ``--format jsonl``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gymux.cli.common import EXIT_INTERRUPTED
from gymux.env_plugins.builtin.maze.env import TEST_IDS, TRAIN_IDS
from gymux.env_plugins.builtin.maze.plugin import MAZE_SPEC
from gymux.env_plugins.builtin.wordle.plugin import WORDLE_SPEC
from gymux.env_plugins.registry import Registry
from gymux.sinks import read_jsonl
from gymux.stores import Store
from gymux.trajectory import FinishReason, Trajectory

from doubles.procs import reaped

pytestmark = pytest.mark.usefixtures("fresh_structlog")

MAZE_TEST = len(TEST_IDS)
Cli = Callable[..., Any]


def trajectories(out: Path) -> list[Trajectory]:
    return list(Store(out / "store", create=False).trajectories())


def nonblank_lines(path: Path) -> int:
    return sum(1 for line in path.read_bytes().split(b"\n") if line.strip())


def summary(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())


def table_row(stdout: str, env: str, policy: str) -> list[str]:
    rows = [line.split() for line in stdout.splitlines() if line.split()[:2] == [env, policy]]
    assert len(rows) == 1, stdout
    return rows[0]


# -- gymux run -------------------------------------------------------------------------


def test_run_format_jsonl(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli(
        [
            *("run", "--env", "maze", "--tasks", "0-4", "--format", "jsonl", "--out"),
            str(out),
            *("--progress", "off"),
        ]
    )
    assert res.rc == 0, res.err
    trajs = list(read_jsonl(out / "trajectories.jsonl", strict=True))
    assert len(trajs) == nonblank_lines(out / "trajectories.jsonl") == 5
    assert not (out / "store").exists()
    assert f"trajectories: {out / 'trajectories.jsonl'}" in res.out.splitlines()


def test_run_maze_oracle(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli(
        ["run", "--env", "maze", "--policy", "oracle", "--out", str(out), "--progress", "off"]
    )
    assert res.rc == 0, res.err
    assert res.err == ""

    trajs = trajectories(out)
    assert len(trajs) == MAZE_TEST
    assert sorted(t.task_id for t in trajs) == sorted(TEST_IDS)
    assert len({t.episode_id for t in trajs}) == MAZE_TEST
    assert len({t.run_id for t in trajs}) == 1
    for t in trajs:
        assert t.env_id == "maze"
        assert t.env_version == MAZE_SPEC.version
        assert t.policy == "oracle"
        assert t.split == "test"
        assert t.sample == 0
        assert t.finish_reason == FinishReason.DONE
        assert t.success is True
        assert t.reward == 1.0
        assert t.error is None
        assert 1 <= len(t.turns) <= MAZE_SPEC.max_turns
        assert [turn.index for turn in t.turns] == list(range(len(t.turns)))
        assert t.turns[-1].done is True
        assert t.messages[0].role == "user"
        assert t.messages[0].content == MAZE_SPEC.instruction
        assert (t.messages[1].role, t.messages[1].content) == ("assistant", "OK")
        assert t.messages[-1].role == "assistant"

    (entry,) = summary(out)
    assert entry["run_id"] == trajs[0].run_id
    assert (entry["env"], entry["policy"]) == ("maze", "oracle")
    for key in ("queue_s", "policy_s", "env_s"):  # the turns' timings, summed
        assert entry["time_s"][key] == round(sum(t.timings[key] for t in trajs), 6)
    assert any(line.startswith("  time (episode-s): queue ") for line in res.out.splitlines())
    assert entry["episodes"] == entry["planned"] == MAZE_TEST
    assert entry["successes"] == MAZE_TEST
    assert entry["success_rate"] == 1.0
    assert entry["finish_reasons"] == {"done": MAZE_TEST}
    assert entry["turns"] == sum(len(t.turns) for t in trajs)

    row = table_row(res.out, "maze", "oracle")
    assert row[2] == str(MAZE_TEST)
    assert row[3] == "100.0%"
    assert f"  finish reasons: done={MAZE_TEST}" in res.out.splitlines()
    assert f"trajectories: {out / 'store'}" in res.out.splitlines()


@pytest.mark.parametrize(
    ("extra", "expected_tasks", "samples"),
    [
        (["--tasks", "0-4"], [0, 1, 2, 3, 4], 1),
        (["--tasks", "1,3"], [1, 3], 1),
        (["--tasks", "0-2,20"], [0, 1, 2, 20], 1),
        (["--limit", "3"], list(TEST_IDS)[:3], 1),
        (["--tasks", "train", "--limit", "2"], list(TRAIN_IDS)[:2], 1),
        (["--tasks", "0-4", "--limit", "2"], [0, 1], 1),
        (["--tasks", "1,3", "--samples", "2"], [1, 3], 2),
        (["--limit", "2", "--samples", "3"], list(TEST_IDS)[:2], 3),
    ],
    ids=[
        "range",
        "list",
        "range+list",
        "limit",
        "train+limit",
        "range+limit",
        "samples2",
        "limit+samples3",
    ],
)
def test_run_task_selection(
    inproc: Cli, tmp_path: Path, extra: list[str], expected_tasks: list[int], samples: int
) -> None:
    out = tmp_path / "out"
    res = inproc(["run", "--env", "maze", "--out", str(out), "--progress", "off", *extra])
    assert res.rc == 0, res.err
    trajs = trajectories(out)
    assert len(trajs) == len(expected_tasks) * samples
    pairs = Counter((t.task_id, t.sample) for t in trajs)
    assert pairs == Counter((task, s) for task in expected_tasks for s in range(samples))
    assert len({t.episode_id for t in trajs}) == len(trajs)
    (entry,) = summary(out)
    assert entry["episodes"] == entry["planned"] == len(trajs)
    assert table_row(res.out, "maze", "oracle")[2] == str(len(trajs))


def test_run_random_policy_reports_finish_reasons(inproc: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = inproc(
        ["run", "--env", "maze", "--policy", "random", "--out", str(out), "--progress", "off"]
    )
    assert res.rc == 0, res.err
    trajs = trajectories(out)
    assert len(trajs) == MAZE_TEST
    assert {t.policy for t in trajs} == {"random"}
    reasons = Counter(t.finish_reason.value for t in trajs)
    # A random walk does not solve all 26 mazes within the turn budget.
    assert reasons["max_turns"] > 0
    for t in trajs:
        if t.finish_reason == FinishReason.MAX_TURNS:
            assert len(t.turns) == MAZE_SPEC.max_turns
            assert t.success is False
        else:
            assert t.finish_reason == FinishReason.DONE
    (entry,) = summary(out)
    assert entry["finish_reasons"] == dict(reasons)
    assert entry["success_rate"] == pytest.approx(sum(t.success for t in trajs) / MAZE_TEST)
    assert entry["success_rate"] < 1.0
    line = "  finish reasons: " + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
    assert line in res.out.splitlines()


def test_run_max_turns_flag(inproc: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = inproc(
        [
            *("run", "--env", "maze", "--policy", "random", "--max-turns", "2", "--out"),
            str(out),
            *("--progress", "off"),
        ]
    )
    assert res.rc == 0, res.err
    trajs = trajectories(out)
    assert len(trajs) == MAZE_TEST
    assert all(1 <= len(t.turns) <= 2 for t in trajs)
    assert any(t.finish_reason == FinishReason.MAX_TURNS for t in trajs)


def test_run_default_out_folder(run_gymux, tmp_path: Path) -> None:
    proc = run_gymux(["run", "--env", "maze", "--limit", "2", "--progress", "off"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("maze-oracle-")
    assert len(trajectories(folder)) == 2
    assert summary(folder)[0]["episodes"] == 2


def test_run_progress_on_draws_on_stderr(run_gymux, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_gymux(["run", "--env", "maze", "--out", str(out), "--progress", "on"])
    assert proc.returncode == 0, proc.stderr
    assert f"{MAZE_TEST}/{MAZE_TEST} episodes" in proc.stderr
    assert table_row(proc.stdout, "maze", "oracle")[3] == "100.0%"


# -- bad arguments ---------------------------------------------------------------------


BAD_ARGS = {
    "unknown-env": (["run", "--env", "nosuch"], "nosuch"),
    "unknown-split": (["run", "--env", "maze", "--tasks", "nosplit"], "nosplit"),
    "bad-tasks-range": (["run", "--env", "maze", "--tasks", "1-x"], "--tasks"),
    "bad-tasks-list": (["run", "--env", "maze", "--tasks", "1,,2"], "--tasks"),
    "unknown-task-id": (["run", "--env", "maze", "--tasks", "9999"], "9999"),
    "samples-zero": (["run", "--env", "maze", "--samples", "0"], "--samples"),
    "samples-text": (["run", "--env", "maze", "--samples", "two"], "--samples"),
    "limit-zero": (["run", "--env", "maze", "--limit", "0"], "--limit"),
    "unknown-policy": (["run", "--env", "maze", "--policy", "gpt"], "gpt"),
    "bad-progress": (["run", "--env", "maze", "--progress", "sometimes"], "--progress"),
    "missing-env": (["run"], "--env"),
}


BAD_CONFIGS = {
    "config-unknown-runtime-key": (
        "[runtime]\nmax_concurent_episodes = 3\n",
        "max_concurent_episodes",
    ),
    "config-unknown-workload-key": ('[[workloads]]\nenv = "maze"\nsampels = 2\n', "sampels"),
    "config-unknown-top-key": ("bogus = 1\n", "bogus"),
    "config-bad-value": ("[runtime]\nmax_concurrent_episodes = 0\n", "max_concurrent_episodes"),
    "config-not-toml": ("[runtime\n", "TOML"),
    "config-unknown-env": ('[[workloads]]\nenv = "nosuch"\n', "nosuch"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_arguments(cli: Cli, tmp_path: Path, case: str) -> None:
    args, needle = BAD_ARGS[case]
    out = tmp_path / "out"
    if args[:1] == ["run"]:
        args = [*args, "--out", str(out)]
    cli(args).assert_usage_error(needle)
    # Everything is checked before anything starts: no output folder.
    assert not out.exists()


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_file(cli: Cli, tmp_path: Path, case: str) -> None:
    text, needle = BAD_CONFIGS[case]
    config = tmp_path / "gymux.toml"
    config.write_text(text)
    out = tmp_path / "out"
    args = ["run", "--config", str(config), "--out", str(out)]
    if "workloads" not in text:
        args += ["--env", "maze"]
    res = cli(args)
    res.assert_usage_error(needle)
    if case != "config-unknown-env":
        assert str(config) in res.err
    assert not out.exists()


def test_missing_config_file(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    out = tmp_path / "out"
    res = cli(["run", "--env", "maze", "--config", str(missing), "--out", str(out)])
    res.assert_usage_error(str(missing))
    assert not out.exists()


# -- config files ----------------------------------------------------------------------


def test_config_file_with_two_workloads(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "from-config"
    config = tmp_path / "gymux.toml"
    config.write_text(
        f"out = {json.dumps(str(out))}\n"
        "[runtime]\n"
        "max_concurrent_episodes = 4\n"
        "env_instances = { maze = 2 }\n"
        "step_timeout_s = 30\n"
        "[[workloads]]\n"
        'env = "maze"\n'
        'tasks = "test"\n'
        "[[workloads]]\n"
        'env = "wordle"\n'
        'policy = "oracle"\n'
        "limit = 3\n"
    )
    res = cli(["run", "--config", str(config), "--progress", "off"])
    assert res.rc == 0, res.err
    trajs = trajectories(out)
    assert Counter(t.env_id for t in trajs) == {"maze": MAZE_TEST, "wordle": 3}
    assert len({t.run_id for t in trajs}) == 2
    assert (
        sorted(t.task_id for t in trajs if t.env_id == "wordle")
        == list(WORDLE_SPEC.splits["test"].ids)[:3]
    )
    entries = summary(out)
    assert [(e["env"], e["episodes"]) for e in entries] == [("maze", MAZE_TEST), ("wordle", 3)]
    assert table_row(res.out, "maze", "oracle")[2] == str(MAZE_TEST)
    assert table_row(res.out, "wordle", "oracle")[2] == "3"


def test_cli_out_overrides_config_out(inproc: Cli, tmp_path: Path) -> None:
    config = tmp_path / "gymux.toml"
    config.write_text(
        f'out = {json.dumps(str(tmp_path / "ignored"))}\n[[workloads]]\nenv = "maze"\nlimit = 2\n'
    )
    out = tmp_path / "cli-out"
    res = inproc(["run", "--config", str(config), "--out", str(out), "--progress", "off"])
    assert res.rc == 0, res.err
    assert len(trajectories(out)) == 2
    assert not (tmp_path / "ignored").exists()


# -- a broken plugin -------------------------------------------------------------------


def test_run_broken_plugin_is_usage_error(
    inproc: Cli, broken_registry: Registry, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = inproc(["run", "--env", "broken", "--out", str(out)], registry=broken_registry)
    assert res.rc == 2
    errors = [line for line in res.err.splitlines() if line.startswith("gymux: error:")]
    assert len(errors) == 1, res.err
    assert "'broken'" in errors[0]
    assert "no_such_module_xyz" in errors[0]
    assert res.err.splitlines()[-1] == errors[0]
    assert not out.exists()


def test_run_other_env_despite_broken_plugin(
    inproc: Cli, broken_registry: Registry, tmp_path: Path
) -> None:
    broken_registry.status()  # load (and fail) the broken one first
    out = tmp_path / "out"
    res = inproc(
        ["run", "--env", "maze", "--out", str(out), "--progress", "off"], registry=broken_registry
    )
    assert res.rc == 0, res.err
    assert len(trajectories(out)) == MAZE_TEST


# -- signals ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_run_and_keeps_finished_episodes(
    tmp_path: Path, child_env, signum: int
) -> None:
    out = tmp_path / "out"
    segments = out / "store" / "trajectories"
    planned = WORDLE_SPEC.splits["train"].count
    proc = subprocess.Popen(
        [
            sys.executable,
            *("-m", "gymux", "run", "--env", "wordle", "--policy", "oracle"),
            *("--tasks", "train", "--concurrency", "4", "--out"),
            str(out),
            *("--progress", "off"),
        ],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with reaped(proc):
        # Ready once episodes reach the store: the child has imported, its signal handlers
        # are in place (they are set before the store opens) and the run is under way. The
        # deadline only stops a hung child; it is no speed assertion (a busy machine may
        # take many seconds to import), and the workload is far too big to end meanwhile.
        deadline = time.monotonic() + 120
        while proc.poll() is None and not (
            segments.exists()
            and any(p.suffix == ".seg" and p.stat().st_size > 32 for p in segments.iterdir())
        ):
            assert time.monotonic() < deadline, "no episode reached the store"
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the signal was sent"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    trajs = trajectories(out)  # every record passes its checksum and decodes
    reader = Store(out / "store", create=False).reader()
    assert reader.skipped_bytes == 0
    assert reader.committed()[0] == len(trajs)  # all of them durable: the writer closed cleanly
    assert 0 < len(trajs) < planned
    ids = [t.episode_id for t in trajs]
    assert len(ids) == len(set(ids))
    assert {t.finish_reason for t in trajs} <= {FinishReason.DONE, FinishReason.CANCELLED}
    (entry,) = summary(out)
    assert entry["planned"] == planned
    assert entry["episodes"] == len(trajs)
    assert table_row(stdout, "wordle", "oracle")[2] == str(len(trajs))
