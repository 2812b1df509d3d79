"""Running a suite resumably (gymux.eval.run): interrupted and resumed equals uninterrupted,
``rerun_failures``, the checks made before anything runs, and no signal handling in the
library."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from gymux.errors import ConfigError, SuiteError
from gymux.eval.report import write_reports
from gymux.eval.run import EvalRun, run_eval
from gymux.eval.suite import parse_suite


def test_interrupted_then_resumed_equals_uninterrupted(
    tmp_path: Path, triple_counts: Callable[[Path], Any], without_wall: Callable[[Any], str]
) -> None:
    suite = parse_suite(
        'name = "two"\ntasks = 4\nsamples = 2\n'
        '[[envs]]\nid = "maze"\nmax_turns = 15\n[[envs]]\nid = "wordle"\nmax_turns = 8\n'
    )
    full = run_eval(suite, "random", tmp_path / "full")
    assert full.ran == 16
    out = tmp_path / "resumed"
    first = run_eval(suite, "random", out, max_episodes=5)
    assert first.ran == 5 and first.metrics.overall.episodes == 5
    second = run_eval(suite, "random", out)
    assert (second.ran, second.skipped) == (11, 5)
    assert set(triple_counts(out).values()) == {1} and len(triple_counts(out)) == 16
    a = write_reports(tmp_path / "full", "two", "random", full.metrics)
    b = write_reports(out, "two", "random", second.metrics)
    assert a == b
    docs = [json.loads((p / "report.json").read_text()) for p in (tmp_path / "full", out)]
    assert without_wall(docs[0]) == without_wall(docs[1])


def test_rerun_failures(tmp_path: Path) -> None:
    suite = parse_suite('name = "r"\ntasks = 4\n[[envs]]\nid = "maze"\nmax_turns = 2\n')
    first = run_eval(suite, "random", tmp_path)
    failed = first.metrics.overall.episodes - first.metrics.overall.successes
    assert failed > 0  # two random moves do not solve a maze
    again = run_eval(suite, "random", tmp_path)
    assert again.ran == 0
    rerun = run_eval(suite, "random", tmp_path, rerun_failures=True)
    assert rerun.ran == failed and rerun.metrics.overall.episodes == 4


MAZE_SUITE = 'name = "r"\ntasks = 2\n[[envs]]\nid = "maze"\nmax_turns = 15\n'


def test_library_installs_no_signal_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signals are the caller's business (``gymux eval`` handles them in gymux.cli.eval)."""

    def refuse(*signals: object) -> object:
        raise AssertionError("gymux.eval opened a signal receiver")

    monkeypatch.setattr(anyio, "open_signal_receiver", refuse)
    outcome = run_eval(parse_suite(MAZE_SUITE), "oracle", tmp_path)
    assert outcome.ran == 2 and not outcome.interrupted


def test_checks_before_anything_runs(tmp_path: Path) -> None:
    suite = parse_suite(MAZE_SUITE)
    run_eval(suite, "oracle", tmp_path / "a")
    with pytest.raises(ConfigError, match="holds an eval of suite 'r' with policy 'oracle'"):
        EvalRun(suite, "random", tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "eval.json").write_text("[1]")
    with pytest.raises(ConfigError, match="is unreadable"):
        EvalRun(suite, "oracle", tmp_path / "b")
    other = parse_suite('name = "r"\nsplit = "dev"\n[[envs]]\nid = "maze"\n')
    with pytest.raises(SuiteError, match=r"env 'maze' has no split 'dev' \(known: test, train\)"):
        EvalRun(other, "oracle", tmp_path / "c")
    assert not (tmp_path / "c").exists()
