"""Comparing eval runs (gymux.eval.report): the interval maths and the comparison over the
environments the runs share."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

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

RunMaker = Callable[..., RunData]


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


@pytest.fixture
def synthetic_run(make_traj: Callable[..., Trajectory]) -> RunMaker:
    """``synthetic_run(letter, suite, {env: [success, ...]})``: a run of one sample per task."""

    def build(letter: str, suite: str, results: dict[str, list[bool]]) -> RunData:
        trajs = [make_traj(env, i, ok) for env, oks in results.items() for i, ok in enumerate(oks)]
        envs = list(results)
        return RunData(
            info=RunInfo(letter=letter, name=letter.lower(), path=letter, suite=suite, policy="p"),
            seed=0,
            envs=envs,
            metrics=compute_metrics(trajs, envs=envs),
            trajectories=trajs,
        )

    return build


def test_compare_over_shared_envs(synthetic_run: RunMaker) -> None:
    a = synthetic_run("A", "s1", {"maze": [True] * 4, "wordle": [True, True, False, False]})
    b = synthetic_run("B", "s2", {"wordle": [True, True, True, True, True], "sql": [False]})
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
    none = compare_runs(
        [synthetic_run("A", "s1", {"maze": [True]}), synthetic_run("B", "s1", {"sql": [True]})]
    )
    assert none.shared_envs == [] and [d.env for d in none.diffs[0]] == ["overall"]
    md = comparison_markdown(none)
    assert "The runs share no environment: nothing to compare." in md
    assert "| overall | 0.0% | 0.0% | n/a | n/a | 0 / 0 | no episodes |" in md


def test_overall_difference_uses_rewards_scaled_by_env_range(
    synthetic_run: RunMaker,
) -> None:
    """sciworld scores 0-100: the overall score row of a comparison maps each reward to
    0..1 by its env's range, the same way as the overall metrics beside it."""
    ranges = {"maze": (0.0, 1.0), "sciworld": (0.0, 100.0)}
    runs = []
    for letter, sci in (("A", 100.0), ("B", 50.0)):
        run = synthetic_run(letter, "s", {"maze": [True, False], "sciworld": [True]})
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
