"""Turn-level credit, returns-to-go and spans, as randomised properties."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from gymux.stores import RecordType, Store
from gymux.stores.codec import encode_trajectory
from gymux.stores.credit import check_spans, returns_to_go, token_values, turn_credit
from gymux.stores.export import to_arrow_table
from gymux.trajectory import TokenData, Trajectory, Turn, pack_int32, pack_uint8

from doubles.trajectories import make_trajectory


def random_episode(rng: random.Random, *, style: str) -> Trajectory:
    """An episode laid out as the runtime records one: per turn, observation tokens (mask
    0) then the response tokens (mask 1, the turn's span); rewards per ``style``."""
    n = rng.randint(1, 8)
    ids: list[int] = []
    mask: list[int] = []
    turns = []
    score = 0.0
    for i in range(n):
        prompt = rng.randint(0 if i else 1, 6)
        ids += [rng.randint(0, 999) for _ in range(prompt)]
        mask += [0] * prompt
        start = len(ids)
        out = rng.randint(0, 5)
        ids += [rng.randint(0, 999) for _ in range(out)]
        mask += [1] * out
        step = round(rng.uniform(-1, 1), 3) if rng.random() < 0.5 else 0.0
        score += step
        reward = {"incremental": step, "cumulative": score, "sparse": 0.0}[style]
        turns.append(
            Turn(
                index=i,
                observation="o",
                raw_output="a",
                action="a",
                reward=reward,
                span=(start, len(ids)),
            )
        )
    if style == "sparse":
        turns[-1].reward = float(rng.randint(0, 1))
    episode_reward = {"incremental": sum(t.reward for t in turns)}.get(style, turns[-1].reward)
    return make_trajectory(
        turns=turns,
        reward=episode_reward,
        tokens=TokenData(ids=pack_int32(ids), loss_mask=pack_uint8(mask)),
    )


@pytest.mark.parametrize("style", ["incremental", "cumulative", "sparse"])
def test_property_turn_credit_sums_to_the_episode_reward(style: str) -> None:
    rng = random.Random(style)
    for _ in range(300):
        t = random_episode(rng, style=style)
        credit = turn_credit(t)
        assert len(credit) == t.num_turns
        assert math.isclose(math.fsum(credit), t.reward, abs_tol=1e-9)
        # Whatever the turn rewards, "auto" never credits more or less than the reward.
        t.reward = rng.uniform(-5, 5)
        assert math.isclose(math.fsum(turn_credit(t)), t.reward, abs_tol=1e-9)
    assert turn_credit(make_trajectory()) == []
    with pytest.raises(ValueError):
        turn_credit(t, "nope")


def test_credit_modes_read_rewards_as_documented() -> None:
    turns = [
        Turn(index=i, observation="", raw_output="", action=None, reward=r)
        for i, r in enumerate([0.2, 0.5, 0.5, 1.0])
    ]
    t = make_trajectory(turns=turns, reward=1.0)
    assert turn_credit(t) == pytest.approx([0.2, 0.3, 0.0, 0.5])  # cumulative scores
    assert turn_credit(t, "incremental") == [0.2, 0.5, 0.5, 1.0]
    assert turn_credit(t, "final") == [0.0, 0.0, 0.0, 1.0]


def test_property_returns_to_go_follow_the_recurrence() -> None:
    rng = random.Random(11)
    for _ in range(300):
        t = random_episode(rng, style=rng.choice(["incremental", "cumulative", "sparse"]))
        gamma = rng.choice([0.0, 0.5, 0.9, 0.99, 1.0])
        g = returns_to_go(t, gamma)
        c = turn_credit(t)
        for k in range(len(c)):
            nxt = g[k + 1] if k + 1 < len(c) else 0.0
            assert math.isclose(g[k], c[k] + gamma * nxt, abs_tol=1e-9)
        if gamma == 1.0:
            assert math.isclose(g[0], t.reward, abs_tol=1e-9)
    with pytest.raises(ValueError):
        returns_to_go(t, 1.5)


def test_property_spans_tile_the_loss_mask() -> None:
    rng = random.Random(12)
    for _ in range(300):
        t = random_episode(rng, style="incremental")
        check_spans(t)
        assert t.tokens is not None
        values = token_values(t, [float(i + 1) for i in range(t.num_turns)])
        mask = list(t.tokens.loss_mask)
        assert [v != 0 for v in values] == [m == 1 for m in mask]
        # Breaking one span (shorter, or overlapping the next) is caught.
        spans = [
            (k, turn.span)
            for k, turn in enumerate(t.turns)
            if turn.span is not None and turn.span[1] > turn.span[0]
        ]
        if spans:
            k, (start, end) = rng.choice(spans)
            t.turns[k].span = (start, end - 1)
            with pytest.raises(ValueError):
                check_spans(t)


def test_arrow_export_has_the_rl_columns(tmp_path: Path) -> None:
    rng = random.Random(13)
    episodes = [random_episode(rng, style="cumulative") for _ in range(5)]
    episodes[0].group_id, episodes[0].group_size, episodes[0].terminal = "g", 3, True
    store = Store(tmp_path / "s")
    with store.writer() as w:
        for t in episodes:
            w.append(encode_trajectory(t), RecordType.TRAJECTORY)
    table = to_arrow_table(store, gamma=0.5)
    assert table.column("group_id").to_pylist()[0] == "g"
    assert table.column("terminal").to_pylist() == [True, False, False, False, False]
    for row, t in enumerate(episodes):
        assert table.column("turn_credit")[row].as_py() == pytest.approx(turn_credit(t))
        assert table.column("return_to_go")[row].as_py() == pytest.approx(returns_to_go(t, 0.5))
        assert table.column("turn_spans")[row].as_py() == [list(x.span) for x in t.turns]  # type: ignore[arg-type]
        assert table.column("turn_rewards")[row].as_py() == [x.reward for x in t.turns]
