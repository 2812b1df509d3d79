"""Tests for the ``gymux`` command line (gymux.cli.main).

The CLI runs both in-process (``gymux.cli.main.main`` returns the exit code) and as real
``python -m gymux`` subprocesses; outputs are real files read back with the store reader
(``gymux.stores.Store``) or ``gymux.sinks.read_jsonl`` for ``--format jsonl``.
"""

from __future__ import annotations

import importlib.metadata
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gymux import __version__
from gymux.cli.main import EXIT_INTERRUPTED, main
from gymux.env_plugins.builtin.maze.env import MAZE_SPEC, TEST_IDS, TRAIN_IDS
from gymux.env_plugins.builtin.maze.env import plugin as maze_plugin
from gymux.env_plugins.builtin.wordle.env import WORDLE_SPEC
from gymux.env_plugins.registry import Registry
from gymux.sinks import read_jsonl
from gymux.stores import Store
from gymux.trajectory import FinishReason, Trajectory

pytestmark = pytest.mark.usefixtures("fresh_structlog")

MAZE_TEST = len(TEST_IDS)


@dataclass
class Result:
    rc: int
    out: str
    err: str


Cli = Callable[..., Result]


def _inprocess(capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(args: Sequence[str], *, registry: Registry | None = None) -> Result:
        capsys.readouterr()
        rc = main(list(args), registry=registry)
        captured = capsys.readouterr()
        return Result(rc, captured.out, captured.err)

    return run


@pytest.fixture
def inproc(capsys: pytest.CaptureFixture[str]) -> Cli:
    return _inprocess(capsys)


@pytest.fixture(params=["inprocess", "subprocess"])
def cli(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], run_gymux) -> Cli:
    """The CLI, once in-process and once as ``python -m gymux``."""
    if request.param == "inprocess":
        return _inprocess(capsys)

    def run(args: Sequence[str]) -> Result:
        proc = run_gymux(args)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


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
            "run",
            "--env",
            "maze",
            "--tasks",
            "0-4",
            "--format",
            "jsonl",
            "--out",
            str(out),
            "--progress",
            "off",
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
            "run",
            "--env",
            "maze",
            "--policy",
            "random",
            "--max-turns",
            "2",
            "--out",
            str(out),
            "--progress",
            "off",
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


def test_version(run_gymux) -> None:
    proc = run_gymux(["--version"])
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"gymux {__version__}"


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
    "unknown-subcommand": (["frobnicate"], "frobnicate"),
    "no-subcommand": ([], "command"),
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


def assert_usage_error(res: Result, needle: str) -> None:
    assert res.rc == 2, (res.rc, res.err)
    lines = res.err.splitlines()
    assert len(lines) == 1, res.err
    assert lines[0].startswith("gymux: error: ")
    assert needle in lines[0]
    assert res.out == ""


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_arguments(cli: Cli, tmp_path: Path, case: str) -> None:
    args, needle = BAD_ARGS[case]
    out = tmp_path / "out"
    if args[:1] == ["run"]:
        args = [*args, "--out", str(out)]
    assert_usage_error(cli(args), needle)
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
    assert_usage_error(res, needle)
    if case != "config-unknown-env":
        assert str(config) in res.err
    assert not out.exists()


def test_missing_config_file(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    out = tmp_path / "out"
    res = cli(["run", "--env", "maze", "--config", str(missing), "--out", str(out)])
    assert_usage_error(res, str(missing))
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


# -- gymux envs ------------------------------------------------------------------------


def splits_text(spec) -> str:
    return ", ".join(f"{name}={split.count}" for name, split in spec.splits.items())


def test_envs_lists_builtin_envs(cli: Cli) -> None:
    res = cli(["envs"])
    assert res.rc == 0, res.err
    rows = {line.split()[0]: line for line in res.out.splitlines()[1:] if line.strip()}
    assert rows["maze"].endswith(splits_text(MAZE_SPEC))
    assert f"test={MAZE_TEST}" in rows["maze"]
    assert rows["wordle"].endswith(splits_text(WORDLE_SPEC))
    assert "BROKEN" not in res.out


def test_envs_json(cli: Cli) -> None:
    res = cli(["envs", "--json"])
    assert res.rc == 0, res.err
    rows = {row["id"]: row for row in json.loads(res.out)}
    assert rows["maze"]["ok"] is True
    assert rows["maze"]["splits"] == {"test": MAZE_TEST, "train": len(TRAIN_IDS)}
    assert rows["maze"]["has_oracle"] is True
    assert rows["maze"]["source"] == "entry point gymux.env_plugins.builtin.maze.env:plugin"
    assert rows["wordle"]["splits"] == {n: s.count for n, s in WORDLE_SPEC.splits.items()}
    assert rows["wordle"]["error"] is None


# -- a broken plugin -------------------------------------------------------------------


@pytest.fixture
def broken_registry() -> Registry:
    registry = Registry(entry_points_group=None)
    registry.add_entry_points(
        [
            importlib.metadata.EntryPoint(
                name="broken", value="no_such_module_xyz:plugin", group="gymux.envs"
            )
        ]
    )
    registry.register(maze_plugin)
    return registry


def test_envs_reports_broken_plugin(inproc: Cli, broken_registry: Registry) -> None:
    res = inproc(["envs"], registry=broken_registry)
    assert res.rc == 1
    rows = {line.split()[0]: line for line in res.out.splitlines() if line.strip()}
    assert rows["broken"].split()[1] == "BROKEN"
    assert "no_such_module_xyz" in rows["broken"]
    assert rows["maze"].endswith(splits_text(MAZE_SPEC))


def test_envs_json_reports_broken_plugin(inproc: Cli, broken_registry: Registry) -> None:
    res = inproc(["envs", "--json"], registry=broken_registry)
    assert res.rc == 1
    rows = {row["id"]: row for row in json.loads(res.out)}  # stdout must be pure JSON
    assert rows["broken"]["ok"] is False
    assert "no_such_module_xyz" in rows["broken"]["error"]
    assert rows["maze"]["ok"] is True


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


@pytest.fixture
def broken_dist(tmp_path: Path, child_env) -> dict[str, str]:
    """A real installed distribution (a .dist-info on PYTHONPATH) whose gymux.envs entry
    point names a module that does not exist; returns the environment for subprocesses."""
    site = tmp_path / "site"
    info = site / "brokenplugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gymux.envs]\nbroken = no_such_module_xyz:plugin\n")
    return child_env(PYTHONPATH=str(site))


def _gymux(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gymux", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_broken_entry_point_subprocess(broken_dist: dict[str, str], tmp_path: Path) -> None:
    envs = _gymux(["envs"], broken_dist, tmp_path)
    assert envs.returncode == 1, envs.stderr
    rows = {line.split()[0]: line for line in envs.stdout.splitlines() if line.strip()}
    assert "BROKEN" in rows["broken"] and "no_such_module_xyz" in rows["broken"]
    assert rows["maze"].endswith(splits_text(MAZE_SPEC))
    assert rows["wordle"].endswith(splits_text(WORDLE_SPEC))

    out = tmp_path / "out"
    run = _gymux(["run", "--env", "broken", "--out", str(out)], broken_dist, tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1].startswith("gymux: error: env plugin 'broken'")
    assert not out.exists()

    ok = _gymux(
        ["run", "--env", "maze", "--out", str(out), "--progress", "off"], broken_dist, tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert len(trajectories(out)) == MAZE_TEST


def test_broken_entry_point_envs_json_subprocess(
    broken_dist: dict[str, str], tmp_path: Path
) -> None:
    proc = _gymux(["envs", "--json"], broken_dist, tmp_path)
    assert proc.returncode == 1
    rows = {row["id"]: row for row in json.loads(proc.stdout)}  # stdout must be pure JSON
    assert rows["broken"]["ok"] is False
    assert {"maze", "wordle"} <= {i for i, r in rows.items() if r["ok"]}


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
            "-m",
            "gymux",
            "run",
            "--env",
            "wordle",
            "--policy",
            "oracle",
            "--tasks",
            "train",
            "--concurrency",
            "4",
            "--out",
            str(out),
            "--progress",
            "off",
        ],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and proc.poll() is None:
            if segments.exists() and any(
                p.suffix == ".seg" and p.stat().st_size > 32 for p in segments.iterdir()
            ):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the signal was sent"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

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


def test_prepare_generates_ahead_and_says_when_there_is_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import msgspec

    from gymux.env_plugins import EnvPlugin

    maze = maze_plugin
    seen: list[list[int]] = []
    reg = Registry(entry_points_group=None)
    reg.register(maze)
    spec = msgspec.structs.replace(MAZE_SPEC, id="prep")
    reg.register(EnvPlugin(spec, maze.factory, prepare=seen.append))
    assert main(["prepare", "maze"], registry=reg) == 0
    assert "nothing to prepare" in capsys.readouterr().out
    assert main(["prepare", "prep", "--tasks", "test"], registry=reg) == 0
    assert seen == [maze.spec.split("test").ids]
    assert main(["prepare", "prep", "--tasks", "3-5"], registry=reg) == 0
    assert seen[-1] == [3, 4, 5]
    assert "prep: prepared 3 tasks" in capsys.readouterr().out
    assert main(["prepare", "prep", "--tasks", "nosuch"], registry=reg) == 2
    assert main(["prepare", "missing"], registry=reg) == 2


def test_env_with_missing_optional_dependency_is_listed_and_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An env whose optional dependency is not installed shows it in ``gymux envs`` and a
    run refuses in one line before starting anything."""
    import msgspec

    from gymux.env_plugins import EnvPlugin

    reg = Registry(entry_points_group=None)
    reg.register(maze_plugin)
    spec = msgspec.structs.replace(MAZE_SPEC, id="needy")
    hint = "pip install 'gymux[needy]'"
    reg.register(
        EnvPlugin(spec, maze_plugin.factory, requires={"no_such_module_xyz": hint, "json": "-"})
    )
    assert main(["envs"], registry=reg) == 0
    listing = capsys.readouterr().out
    assert f"not installed: no_such_module_xyz ({hint})" in listing
    assert "json" not in listing.split("needy", 1)[1].splitlines()[0].split("not installed")[1]
    out = tmp_path / "run"
    code = main(["run", "--env", "needy", "--tasks", "0", "--out", str(out)], registry=reg)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "not installed: no_such_module_xyz" in err and hint in err
    assert not out.exists()
    suite = tmp_path / "needy.toml"
    suite.write_text('name = "n"\n[[envs]]\nid = "needy"\n')
    ev = tmp_path / "ev"
    assert main(["eval", "--suite", str(suite), "--out", str(ev)], registry=reg) == 2
    assert "not installed: no_such_module_xyz" in capsys.readouterr().err
    assert not (ev / "store").exists()
    assert main(["run", "--env", "maze", "--tasks", "0", "--out", str(out)], registry=reg) == 0
