"""Tests for ``gymux eval``: metrics, suites, resumable runs and reports."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from gymux.cli.main import main
from gymux.eval.metrics import bootstrap_ci, compute_metrics, wilson_interval
from gymux.eval.report import write_reports
from gymux.eval.run import read_store, run_eval
from gymux.eval.suite import BUILTIN_SUITES, SuiteError, load_suite, parse_suite
from gymux.trajectory import FinishReason, Trajectory, Turn


def _traj(env: str, task: int, sample: int, success: bool, **kw: object) -> Trajectory:
    return Trajectory(
        run_id="r",
        episode_id=f"r:{env}:{task}:{sample}",
        env_id=env,
        env_version="1",
        task_id=task,
        split="test",
        sample=sample,
        policy="p",
        policy_version="1",
        **{"success": success, "reward": 1.0 if success else 0.0, **kw},  # type: ignore[arg-type]
    )


def test_overall_score_maps_each_env_to_zero_one() -> None:
    """sciworld scores 0-100, maze 0-1: per-env means stay in their own units, the overall
    mean maps every reward to 0..1 by its env's range first."""
    trajs = [
        _traj("sciworld", 0, 0, False, reward=50.0),
        _traj("sciworld", 1, 0, True, reward=100.0),
        _traj("maze", 0, 0, True),
        _traj("maze", 1, 0, False),
    ]
    ranges = {"sciworld": (0.0, 100.0), "maze": (0.0, 1.0)}
    m = compute_metrics(trajs, envs=["maze", "sciworld"], score_ranges=ranges)
    assert [e.mean_score for e in m.envs] == [0.5, 75.0]
    assert m.overall.mean_score == (0.5 + 1.0 + 1.0 + 0.0) / 4
    # Without ranges every env counts as 0..1 (the raw mean).
    assert compute_metrics(trajs).overall.mean_score == (50 + 100 + 1 + 0) / 4


def test_wilson_known_values() -> None:
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 3) == 0.278
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_bootstrap_deterministic_and_contains_mean() -> None:
    values = [0.0, 0.2, 1.0, 0.5, 0.9, 0.1, 0.7, 0.3]
    mean = sum(values) / len(values)
    a = bootstrap_ci(values, seed=7)
    assert a == bootstrap_ci(values, seed=7)
    assert a[0] < mean < a[1]
    assert bootstrap_ci([0.4] * 5) == (0.4, 0.4)


def test_pass_and_avg_at_n() -> None:
    # 3 tasks x 4 samples: task 0 succeeds 4/4, task 1 1/4, task 2 0/4.
    trajs = [
        _traj("maze", task, s, success)
        for task, wins in ((0, 4), (1, 1), (2, 0))
        for s, success in enumerate([True] * wins + [False] * (4 - wins))
    ]
    m = compute_metrics(trajs).envs[0]
    assert m.samples == 4 and m.tasks == 3 and m.episodes == 12
    assert m.pass_at_n == pytest.approx(2 / 3)
    assert m.avg_at_n == pytest.approx((1 + 0.25 + 0) / 3)
    assert m.success_rate == pytest.approx(5 / 12)


def test_latest_per_triple_tokens_and_reasons() -> None:
    turns = [
        Turn(
            index=0,
            observation="o",
            raw_output="a",
            action="a",
            prompt_tokens=10,
            completion_tokens=3,
        ),
        Turn(index=1, observation="o", raw_output="a", action="a"),
    ]
    trajs = [
        _traj("maze", 0, 0, False, finish_reason=FinishReason.MAX_TURNS),
        _traj("maze", 0, 0, True, turns=turns),  # later: replaces the failure
        _traj("maze", 1, 0, False, finish_reason=FinishReason.CANCELLED),  # not finished
    ]
    m = compute_metrics(trajs).overall
    assert m.episodes == 1 and m.success_rate == 1.0
    assert (m.prompt_tokens, m.completion_tokens) == (10, 3)
    assert m.finish_reasons == {"done": 1} and m.mean_turns == 2


def test_suite_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"\$\.envs\[0\]\.max_turns"):
        parse_suite('name = "x"\n[[envs]]\nid = "maze"\nmax_turns = "many"\n')
    with pytest.raises(SuiteError, match="samples"):
        parse_suite('name = "x"\nsamples = 0\n[[envs]]\nid = "maze"\n')
    with pytest.raises(SuiteError, match="unknown field `turns`"):
        parse_suite('name = "x"\n[[envs]]\nid = "maze"\nturns = 3\n')
    with pytest.raises(SuiteError, match="envs"):
        parse_suite('name = "x"\n')
    with pytest.raises(SuiteError, match="no suite"):
        load_suite(str(tmp_path / "missing.toml"))
    for name in BUILTIN_SUITES:
        assert load_suite(name).name == name
    budgets = {e.id: e.max_turns for e in load_suite("agenteval-offline").envs}
    # AgentGym's per-environment turn budgets.
    assert budgets == {
        "maze": 15,
        "wordle": 8,
        "textcraft": 20,
        "babyai": 20,
        "sciworld": 30,
        "sqlgym": 1,
        "textworld": 30,
    }
    # Every built-in suite names only installed envs, and smoke covers all of them.
    smoke = {e.id for e in load_suite("smoke").envs}
    assert smoke == set(budgets)


def test_cli_bad_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--suite", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gymux: error: no suite 'nope'")


def _triple_counts(out: Path) -> Counter[tuple[str, int, int]]:
    return Counter(
        (t.env_id, t.task_id, t.sample)
        for t in read_store(out)
        if t.finish_reason != FinishReason.CANCELLED
    )


def test_smoke_oracle_is_perfect_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ev"
    assert main(["eval", "--suite", "smoke", "--policy", "oracle", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    suite = load_suite("smoke")
    sizes = {e.id: suite.env_tasks(e) for e in suite.envs}
    for env, n in sizes.items():
        assert f"| {env} | {n} | 100.0%" in printed, printed
    report = json.loads((out / "report.json").read_text())
    assert [e["env"] for e in report["envs"]] == list(sizes)
    assert {e["success_rate"] for e in report["envs"]} == {1.0}
    assert all(e["finish_reasons"] == {"done": e["episodes"]} for e in report["envs"])
    md, js = (out / "report.md").read_text(), (out / "report.json").read_text()
    before = len(read_store(out))
    assert before == sum(sizes.values())
    assert main(["eval", "--suite", "smoke", "--policy", "oracle", "--out", str(out)]) == 0
    assert f"episodes run: 0, already done: {before}" in capsys.readouterr().out
    assert len(read_store(out)) == before
    assert (out / "report.md").read_text() == md
    assert (out / "report.json").read_text() == js
    # Another policy into the same folder is refused in one line.
    assert main(["eval", "--suite", "smoke", "--policy", "random", "--out", str(out)]) == 2


def _without_wall(doc: dict[str, object]) -> str:
    text = json.dumps(doc, sort_keys=True)
    data = json.loads(text)
    for m in [*data["envs"], data["overall"]]:
        m.pop("wall_s")
    return json.dumps(data, sort_keys=True)


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    suite = parse_suite(
        'name = "two"\ntasks = 4\nsamples = 2\n'
        '[[envs]]\nid = "maze"\nmax_turns = 15\n[[envs]]\nid = "wordle"\nmax_turns = 8\n'
    )
    full = run_eval(suite, "random", tmp_path / "full", handle_signals=False)
    assert full.ran == 16
    out = tmp_path / "resumed"
    first = run_eval(suite, "random", out, max_episodes=5, handle_signals=False)
    assert first.ran == 5 and first.metrics.overall.episodes == 5
    second = run_eval(suite, "random", out, handle_signals=False)
    assert (second.ran, second.skipped) == (11, 5)
    assert set(_triple_counts(out).values()) == {1} and len(_triple_counts(out)) == 16
    a = write_reports(tmp_path / "full", "two", "random", full.metrics)
    b = write_reports(out, "two", "random", second.metrics)
    assert a == b
    docs = [json.loads((p / "report.json").read_text()) for p in (tmp_path / "full", out)]
    assert _without_wall(docs[0]) == _without_wall(docs[1])


def test_rerun_failures(tmp_path: Path) -> None:
    suite = parse_suite('name = "r"\ntasks = 4\n[[envs]]\nid = "maze"\nmax_turns = 2\n')
    first = run_eval(suite, "random", tmp_path, handle_signals=False)
    failed = first.metrics.overall.episodes - first.metrics.overall.successes
    assert failed > 0  # two random moves do not solve a maze
    again = run_eval(suite, "random", tmp_path, handle_signals=False)
    assert again.ran == 0
    rerun = run_eval(suite, "random", tmp_path, rerun_failures=True, handle_signals=False)
    assert rerun.ran == failed and rerun.metrics.overall.episodes == 4


def test_sigterm_keeps_finished_episodes(
    tmp_path: Path, child_env: Callable[..., dict[str, str]]
) -> None:
    """A real ``python -m gymux eval`` killed by SIGTERM, then resumed: every triple is
    finished exactly once and the report equals an uninterrupted run's."""
    suite = tmp_path / "two.toml"
    suite.write_text(
        'name = "two"\n[[envs]]\nid = "maze"\nmax_turns = 15\n'
        '[[envs]]\nid = "wordle"\nmax_turns = 8\n'
    )
    out = tmp_path / "ev"
    cmd = [
        sys.executable,
        "-m",
        "gymux",
        "eval",
        "--suite",
        str(suite),
        "--policy",
        "oracle",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (out / "store").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode in (0, 130)
    done = subprocess.run(
        cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    counts = _triple_counts(out)
    assert len(counts) == 26 + 100 and set(counts.values()) == {1}
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["success_rate"] == 1.0 and report["overall"]["episodes"] == 126
