"""Eval metrics (gymux.eval.metrics): intervals, Pass@n / Avg@n, the latest trajectory of
each triple, and the overall score over envs with different reward ranges."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gymux.eval.metrics import bootstrap_ci, compute_metrics, wilson_interval
from gymux.trajectory import FinishReason, Trajectory, Turn

TrajMaker = Callable[..., Trajectory]


def test_overall_score_maps_each_env_to_zero_one(make_traj: TrajMaker) -> None:
    """sciworld scores 0-100, maze 0-1: per-env means stay in their own units, the overall
    mean maps every reward to 0..1 by its env's range first."""
    trajs = [
        make_traj("sciworld", 0, False, reward=50.0),
        make_traj("sciworld", 1, True, reward=100.0),
        make_traj("maze", 0, True),
        make_traj("maze", 1, False),
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


def test_pass_and_avg_at_n(make_traj: TrajMaker) -> None:
    # 3 tasks x 4 samples: task 0 succeeds 4/4, task 1 1/4, task 2 0/4.
    trajs = [
        make_traj("maze", task, success, sample=s)
        for task, wins in ((0, 4), (1, 1), (2, 0))
        for s, success in enumerate([True] * wins + [False] * (4 - wins))
    ]
    m = compute_metrics(trajs).envs[0]
    assert m.samples == 4 and m.tasks == 3 and m.episodes == 12
    assert m.pass_at_n == pytest.approx(2 / 3)
    assert m.avg_at_n == pytest.approx((1 + 0.25 + 0) / 3)
    assert m.success_rate == pytest.approx(5 / 12)


def test_latest_per_triple_tokens_and_reasons(make_traj: TrajMaker) -> None:
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
        make_traj("maze", 0, False, finish_reason=FinishReason.MAX_TURNS),
        make_traj("maze", 0, True, turns=turns),  # later: replaces the failure
        make_traj("maze", 1, False, finish_reason=FinishReason.CANCELLED),  # not finished
    ]
    m = compute_metrics(trajs).overall
    assert m.episodes == 1 and m.success_rate == 1.0
    assert (m.prompt_tokens, m.completion_tokens) == (10, 3)
    assert m.finish_reasons == {"done": 1} and m.mean_turns == 2
