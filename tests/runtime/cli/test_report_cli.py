"""``gymux report``: the comparison maths, and the command on real eval folders."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from gymux.cli.main import main
from gymux.cli.report import load_run
from gymux.env_plugins.builtin.maze.env import plugin as maze_plugin
from gymux.env_plugins.registry import Registry
from gymux.eval.charts import charts_available
from gymux.eval.metrics import compute_metrics
from gymux.eval.report import (
    RunData,
    RunInfo,
    bootstrap_diff_ci,
    compare_runs,
    comparison_markdown,
    comparison_notes,
    newcombe_interval,
    run_letter,
)
from gymux.trajectory import Trajectory

MAZE_ONLY = 'name = "maze-only"\ntasks = 3\n[[envs]]\nid = "maze"\nmax_turns = 15\n'


def _r(ci: tuple[float, float]) -> tuple[float, float]:
    return (round(ci[0], 4), round(ci[1], 4))


def test_newcombe_known_values() -> None:
    # Newcombe (1998), "Interval estimation for the difference between independent
    # proportions", Table II, method 10; his p1 - p2 is our B - A.
    assert _r(newcombe_interval(48, 80, 56, 70)) == (0.0524, 0.3339)
    assert _r(newcombe_interval(3, 10, 9, 10)) == (0.1705, 0.8090)
    assert _r(newcombe_interval(0, 29, 5, 56)) == (-0.0381, 0.1926)
    assert _r(newcombe_interval(0, 20, 0, 10)) == (-0.1611, 0.2775)
    assert _r(newcombe_interval(0, 20, 10, 10)) == (0.6791, 1.0)
    # Swapping the runs negates the interval.
    lo, hi = newcombe_interval(56, 70, 48, 80)
    assert (round(lo, 4), round(hi, 4)) == (-0.3339, -0.0524)
    assert newcombe_interval(0, 0, 3, 5) == (0.0, 0.0)


def test_bootstrap_diff_ci() -> None:
    a = [0.0, 0.2, 0.4, 0.1, 0.3, 0.0, 0.2, 0.5]
    b = [0.6, 0.9, 0.5, 1.0, 0.7, 0.8]
    diff = sum(b) / len(b) - sum(a) / len(a)
    ci = bootstrap_diff_ci(a, b, seed=3)
    assert ci == bootstrap_diff_ci(a, b, seed=3)
    assert ci[0] < diff < ci[1] and ci[0] > 0
    assert bootstrap_diff_ci([0.5] * 4, [0.75] * 3) == (0.25, 0.25)
    assert bootstrap_diff_ci([], [1.0]) == (0.0, 0.0)


def test_run_letters() -> None:
    assert [run_letter(i) for i in (0, 1, 25, 26, 27, 701, 702)] == [
        "A",
        "B",
        "Z",
        "AA",
        "AB",
        "ZZ",
        "AAA",
    ]


def _traj(env: str, task: int, success: bool) -> Trajectory:
    return Trajectory(
        run_id="r",
        episode_id=f"r:{env}:{task}:0",
        env_id=env,
        env_version="1",
        task_id=task,
        split="test",
        sample=0,
        policy="p",
        policy_version="1",
        success=success,
        reward=1.0 if success else 0.0,
    )


def _run(letter: str, suite: str, results: dict[str, list[bool]]) -> RunData:
    trajs = [_traj(env, i, ok) for env, oks in results.items() for i, ok in enumerate(oks)]
    envs = list(results)
    return RunData(
        info=RunInfo(letter=letter, name=letter.lower(), path=letter, suite=suite, policy="p"),
        seed=0,
        envs=envs,
        metrics=compute_metrics(trajs, envs=envs),
        trajectories=trajs,
    )


def test_compare_over_shared_envs() -> None:
    a = _run("A", "s1", {"maze": [True] * 4, "wordle": [True, True, False, False]})
    b = _run("B", "s2", {"wordle": [True, True, True, True, True], "sql": [False]})
    comp = compare_runs([a, b])
    assert comp.shared_envs == ["wordle"]
    assert comp.not_shared == {"maze": ["A"], "sql": ["B"]}
    assert comparison_notes(comp) == [
        "Compared over the environments all runs share: wordle.",
        "Not compared: maze (only in A).",
        "Not compared: sql (only in B).",
        "The runs use different suites (s1, s2).",
    ]
    [rows] = comp.diffs
    assert [d.env for d in rows] == ["wordle", "overall"]
    d = rows[0]
    assert (d.success_a, d.success_b, d.success_diff) == (0.5, 1.0, 0.5)
    assert d.success_diff_ci == newcombe_interval(2, 4, 5, 5)
    assert d.score_diff == 0.5 and d.score_diff_ci[0] <= 0.5 <= d.score_diff_ci[1]
    assert not d.same_tasks and (d.episodes_a, d.episodes_b) == (4, 5)
    # The per-run metrics cover the shared env only.
    assert [m.overall.episodes for m in comp.metrics] == [4, 5]
    with pytest.raises(ValueError, match="two runs"):
        compare_runs([a])
    # Nothing shared: said so, and no difference is made up.
    none = compare_runs([_run("A", "s1", {"maze": [True]}), _run("B", "s1", {"sql": [True]})])
    assert none.shared_envs == [] and [d.env for d in none.diffs[0]] == ["overall"]
    md = comparison_markdown(none)
    assert "The runs share no environment: nothing to compare." in md
    assert "| overall | 0.0% | 0.0% | n/a | n/a | 0 / 0 | no episodes |" in md


MINI = (
    'name = "mini"\ntasks = 3\n'
    '[[envs]]\nid = "maze"\nmax_turns = 15\n[[envs]]\nid = "wordle"\nmax_turns = 8\n'
)


@pytest.fixture(scope="module")
def evals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real ``gymux eval`` folders: mini/oracle, mini/random and maze-only/random."""
    root = tmp_path_factory.mktemp("evals")
    (root / "maze-only.toml").write_text(MAZE_ONLY)
    (root / "mini.toml").write_text(MINI)
    specs = {
        "oracle": ["--suite", str(root / "mini.toml"), "--policy", "oracle"],
        "random": ["--suite", str(root / "mini.toml"), "--policy", "random"],
        "maze": ["--suite", str(root / "maze-only.toml"), "--policy", "random"],
    }
    for name, args in specs.items():
        assert main(["eval", *args, "--out", str(root / name)]) == 0
    return {name: root / name for name in specs}


def test_report_one_run_regenerates(
    evals: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = evals["oracle"]
    md, js = (run / "report.md").read_text(), (run / "report.json").read_text()
    html = (run / "report.html").read_text()
    for name in ("report.md", "report.json", "report.html"):
        (run / name).unlink()
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "| maze | 3 | 100.0%" in printed and f"report: {run / 'report.html'}" in printed
    assert (run / "report.md").read_text() == md
    assert (run / "report.json").read_text() == js
    assert (run / "report.html").read_text() == html
    # --out writes elsewhere and leaves the run alone.
    assert main(["report", str(run), "--out", str(tmp_path / "copy")]) == 0
    assert (tmp_path / "copy" / "report.md").read_text() == md
    if charts_available():  # the `plot` extra
        charts = sorted(p.name for p in (tmp_path / "copy" / "charts").iterdir())
        assert charts == ["score.png", "success.png"]


def test_report_compares_two_runs(evals: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert main(["report", str(evals["oracle"]), str(evals["random"]), "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["comparison"] is True and doc["shared_envs"] == ["maze", "wordle"]
    assert [(r["letter"], r["policy"]) for r in doc["runs"]] == [("A", "oracle"), ("B", "random")]
    [rows] = doc["diffs"]
    assert [r["env"] for r in rows] == ["maze", "wordle", "overall"]
    maze = rows[0]
    assert (maze["success_a"], maze["success_b"], maze["success_diff"]) == (1.0, 0.0, -1.0)
    assert maze["success_diff_ci"] == list(newcombe_interval(3, 3, 0, 3))
    assert maze["score_diff_ci"] == [-1.0, -1.0] and maze["same_tasks"] is True
    assert rows[2]["success_diff_ci"] == list(newcombe_interval(6, 6, 0, 6))
    md = (out / "report.md").read_text()
    assert "Compared over the environments all runs share: maze, wordle." in md
    assert "| maze | 100.0% | 0.0% | -100.0 pp [-100.0, -20.6]" in md
    assert (out / "report.html").stat().st_size > 0
    if charts_available():  # the `plot` extra
        charts = sorted(p.name for p in (out / "charts").iterdir())
        assert charts == ["diff-B.png", "score.png", "success.png"]


def test_report_different_suites(
    evals: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out is runs/compare-... under the cwd
    assert main(["report", str(evals["random"]), str(evals["maze"])]) == 0
    out = tmp_path / "runs" / "compare-random-vs-maze"
    doc = json.loads((out / "report.json").read_text())
    assert doc["shared_envs"] == ["maze"] and doc["not_shared"] == {"wordle": ["A"]}
    md = (out / "report.md").read_text()
    assert "Not compared: wordle (only in A)." in md
    assert "different suites (maze-only, mini)" in md


def test_report_without_the_plugin_keeps_the_store(evals: dict[str, Path]) -> None:
    """Where an env's plugin is missing, the report still covers its episodes."""
    registry = Registry(entry_points_group=None)
    registry.register(maze_plugin)
    run = load_run(evals["random"], registry=registry)
    assert [(m.env, m.episodes) for m in run.metrics.envs] == [("maze", 3), ("wordle", 3)]


def test_report_without_matplotlib(
    evals: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fresh_structlog: None,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "nompl"
    assert main(["report", str(evals["oracle"]), "--out", str(out)]) == 0
    assert (out / "report.html").exists() and not (out / "charts").exists()
    logged = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(logged) == 1 and "charts_skipped" in logged[0] and "gymux[plot]" in logged[0]


def test_report_errors(
    evals: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def error(*args: str) -> str:
        capsys.readouterr()
        assert main(["report", *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gymux: error: ")
        return lines[0]

    assert "no such folder" in error(str(tmp_path / "missing"))
    assert "is not a gymux eval run" in error(str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "eval.json").write_text("{not json")
    assert "not a valid eval manifest" in error(str(bad))
    (bad / "eval.json").write_text('{"suite": "x", "policy": "p", "suite_spec": {"envs": 3}}')
    assert "not a valid eval manifest" in error(str(bad))
    assert "is not a gymux eval run" in error(str(evals["oracle"]), str(tmp_path))
    assert "RUN" in error()


def test_report_console_script(
    evals: dict[str, Path], run_gymux: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """The real command line, in a subprocess: success and a usage error."""
    done = run_gymux(["report", str(evals["oracle"]), str(evals["random"]), "--out", "cmp"])
    assert done.returncode == 0, done.stderr
    assert "| wordle | 100.0% | 0.0% | -100.0 pp" in done.stdout
    bad = run_gymux(["report", "nowhere"])
    assert bad.returncode == 2 and bad.stderr.strip() == "gymux: error: nowhere: no such folder"


def test_overall_difference_uses_rewards_scaled_by_env_range() -> None:
    """sciworld scores 0-100: the overall score row of a comparison maps each reward to
    0..1 by its env's range, the same way as the overall metrics beside it."""
    ranges = {"maze": (0.0, 1.0), "sciworld": (0.0, 100.0)}
    runs = []
    for letter, sci in (("A", 100.0), ("B", 50.0)):
        run = _run(letter, "s", {"maze": [True, False], "sciworld": [True]})
        run.trajectories[-1] = msgspec.structs.replace(run.trajectories[-1], reward=sci)
        run.score_ranges = ranges
        runs.append(run)
    comp = compare_runs(runs)
    overall = comp.diffs[0][-1]
    assert overall.env == "overall"
    assert overall.score_a == comp.metrics[0].overall.mean_score == (1 + 0 + 1.0) / 3
    assert overall.score_b == comp.metrics[1].overall.mean_score == (1 + 0 + 0.5) / 3
    assert overall.score_diff == pytest.approx(-0.5 / 3)
    sci = next(d for d in comp.diffs[0] if d.env == "sciworld")
    assert (sci.score_a, sci.score_b) == (100.0, 50.0)  # per-env rows keep the env's units
