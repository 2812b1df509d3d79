"""``gymux report`` (gymux.cli.report) on real eval folders: regenerating one run's reports,
comparing runs, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gymux.cli.main import main
from gymux.cli.report import load_run
from gymux.env_plugins.builtin.maze.plugin import plugin as maze_plugin
from gymux.env_plugins.registry import Registry
from gymux.eval.charts import charts_available
from gymux.eval.report import newcombe_interval


def test_report_one_run_regenerates(
    mini_evals: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = mini_evals["oracle"]
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


def test_report_compares_two_runs(mini_evals: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert (
        main(["report", str(mini_evals["oracle"]), str(mini_evals["random"]), "--out", str(out)])
        == 0
    )
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
    mini_evals: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out is runs/compare-... under the cwd
    assert main(["report", str(mini_evals["random"]), str(mini_evals["maze"])]) == 0
    out = tmp_path / "runs" / "compare-random-vs-maze"
    doc = json.loads((out / "report.json").read_text())
    assert doc["shared_envs"] == ["maze"] and doc["not_shared"] == {"wordle": ["A"]}
    md = (out / "report.md").read_text()
    assert "Not compared: wordle (only in A)." in md
    assert "different suites (maze-only, mini)" in md


def test_report_without_the_plugin_keeps_the_store(mini_evals: dict[str, Path]) -> None:
    """Where an env's plugin is missing, the report still covers its episodes."""
    registry = Registry(entry_points_group=None)
    registry.register(maze_plugin)
    run = load_run(mini_evals["random"], registry=registry)
    assert [(m.env, m.episodes) for m in run.metrics.envs] == [("maze", 3), ("wordle", 3)]


def test_report_without_matplotlib(
    mini_evals: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fresh_structlog: None,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "nompl"
    assert main(["report", str(mini_evals["oracle"]), "--out", str(out)]) == 0
    assert (out / "report.html").exists() and not (out / "charts").exists()
    logged = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(logged) == 1 and "charts_skipped" in logged[0] and "gymux[plot]" in logged[0]


def test_report_errors(
    mini_evals: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
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
    assert "is not a gymux eval run" in error(str(mini_evals["oracle"]), str(tmp_path))
    assert "RUN" in error()


def test_report_console_script(
    mini_evals: dict[str, Path], run_gymux: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """The real command line, in a subprocess: success and a usage error."""
    done = run_gymux(
        ["report", str(mini_evals["oracle"]), str(mini_evals["random"]), "--out", "cmp"]
    )
    assert done.returncode == 0, done.stderr
    assert "| wordle | 100.0% | 0.0% | -100.0 pp" in done.stdout
    bad = run_gymux(["report", "nowhere"])
    assert bad.returncode == 2 and bad.stderr.strip() == "gymux: error: nowhere: no such folder"
