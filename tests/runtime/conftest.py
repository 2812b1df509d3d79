"""Fixtures shared by the tests of ``gymux.cli`` and ``gymux.eval``: the CLI run in-process,
a trajectory builder, and real eval folders written by ``gymux eval``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gymux.cli.main import main
from gymux.env_plugins.registry import Registry
from gymux.eval.run import read_store
from gymux.trajectory import FinishReason, Trajectory

from doubles.trajectories import make_trajectory


@dataclass
class CliResult:
    rc: int
    out: str
    err: str

    def assert_usage_error(self, needle: str) -> None:
        """Exit 2 with one line ``gymux: error: ...`` naming ``needle``, and no output."""
        assert self.rc == 2, (self.rc, self.err)
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("gymux: error: ")
        assert needle in lines[0]
        assert self.out == ""


Cli = Callable[..., CliResult]


def _inprocess(capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(args: Sequence[object], *, registry: Registry | None = None) -> CliResult:
        capsys.readouterr()
        rc = main([str(a) for a in args], registry=registry)
        captured = capsys.readouterr()
        return CliResult(rc, captured.out, captured.err)

    return run


@pytest.fixture
def inproc(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``inproc(args, registry=None)``: ``gymux.cli.main.main`` in-process, with its exit
    code and what it printed."""
    return _inprocess(capsys)


@pytest.fixture(params=["inprocess", "subprocess"])
def cli(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], run_gymux: Any) -> Cli:
    """``cli(args)``: the CLI, once in-process and once as ``python -m gymux``."""
    if request.param == "inprocess":
        return _inprocess(capsys)

    def run(args: Sequence[object]) -> CliResult:
        proc = run_gymux([str(a) for a in args])
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def build_trajectory(
    env: str, task: int, success: bool = True, *, sample: int = 0, **fields: Any
) -> Trajectory:
    """A finished trajectory of run ``r`` (reward 1 on success, else 0, unless given)."""
    values: dict[str, Any] = {"success": success, "reward": 1.0 if success else 0.0, **fields}
    return make_trajectory(env=env, task=task, sample=sample, **values)


@pytest.fixture
def make_traj() -> Callable[..., Trajectory]:
    """``make_traj(env, task, success=True, *, sample=0, **fields)``: see
    :func:`build_trajectory`."""
    return build_trajectory


@pytest.fixture
def triple_counts() -> Callable[[Path], Counter[tuple[str, int, int]]]:
    """How often each ``(env, task, sample)`` finished in an eval folder's store."""

    def count(out: Path) -> Counter[tuple[str, int, int]]:
        return Counter(
            (t.env_id, t.task_id, t.sample)
            for t in read_store(out)
            if t.finish_reason != FinishReason.CANCELLED
        )

    return count


@pytest.fixture
def without_wall() -> Callable[[Path | dict[str, Any]], str]:
    """An eval's ``report.json`` (a path or the parsed document) as canonical JSON without
    the wall times, which differ between runs."""

    def strip(report: Path | dict[str, Any]) -> str:
        text = report.read_text() if isinstance(report, Path) else json.dumps(report)
        data = json.loads(text)
        for m in [*data["envs"], data["overall"]]:
            m.pop("wall_s")
        return json.dumps(data, sort_keys=True)

    return strip


MINI_SUITE = (
    'name = "mini"\ntasks = 3\n'
    '[[envs]]\nid = "maze"\nmax_turns = 15\n[[envs]]\nid = "wordle"\nmax_turns = 8\n'
)
MAZE_ONLY_SUITE = 'name = "maze-only"\ntasks = 3\n[[envs]]\nid = "maze"\nmax_turns = 15\n'


@pytest.fixture(scope="session")
def mini_evals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real ``gymux eval`` folders: ``oracle`` and ``random`` (suite ``mini``: maze and
    wordle), ``maze`` (suite ``maze-only``, random policy), and ``cmp``, the ``gymux report``
    comparison of oracle and random."""
    root = tmp_path_factory.mktemp("evals")
    (root / "maze-only.toml").write_text(MAZE_ONLY_SUITE)
    (root / "mini.toml").write_text(MINI_SUITE)
    specs: dict[str, Sequence[str]] = {
        "oracle": ["--suite", str(root / "mini.toml"), "--policy", "oracle"],
        "random": ["--suite", str(root / "mini.toml"), "--policy", "random"],
        "maze": ["--suite", str(root / "maze-only.toml"), "--policy", "random"],
    }
    for name, args in specs.items():
        assert main(["eval", *args, "--out", str(root / name)]) == 0
    folders = {name: root / name for name in specs}
    cmp = root / "cmp"
    assert main(["report", str(folders["oracle"]), str(folders["random"]), "--out", str(cmp)]) == 0
    return {**folders, "cmp": cmp}
