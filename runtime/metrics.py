"""Counters fed by runtime events, and the run summary built from them."""

from __future__ import annotations

import time
from collections import Counter

import msgspec

from gymux.events import (
    EpisodeError,
    EpisodeFinished,
    EpisodeStarted,
    Event,
    TurnFinished,
)

__all__ = ["Metrics", "RunSummary"]


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Aggregate figures of a run (or of several runs seen by one :class:`Metrics`)."""

    episodes: int
    successes: int
    success_rate: float
    mean_reward: float
    mean_turns: float
    turns: int
    invalid_actions: int
    retries: int
    finish_reasons: dict[str, int]
    wall_s: float
    turns_per_s: float


class Metrics:
    """An event subscriber counting episodes, turns, successes and finish reasons."""

    def __init__(self) -> None:
        self.started_at = time.perf_counter()
        self.episodes_started = 0
        self.episodes_finished = 0
        self.successes = 0
        self.turns = 0
        self.invalid_actions = 0
        self.retries = 0
        self.reward_sum = 0.0
        self.turns_finished_episodes = 0
        self.finish_reasons: Counter[str] = Counter()

    def __call__(self, event: Event) -> None:
        if isinstance(event, TurnFinished):
            self.turns += 1
            if event.turn.action is None:
                self.invalid_actions += 1
        elif isinstance(event, EpisodeFinished):
            traj = event.trajectory
            self.episodes_finished += 1
            self.successes += traj.success
            self.reward_sum += traj.reward
            self.turns_finished_episodes += len(traj.turns)
            self.finish_reasons[traj.finish_reason.value] += 1
        elif isinstance(event, EpisodeStarted):
            if event.attempt == 1:
                self.episodes_started += 1
        elif isinstance(event, EpisodeError) and event.will_retry:
            self.retries += 1

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes_finished if self.episodes_finished else 0.0

    def summary(self) -> RunSummary:
        wall = time.perf_counter() - self.started_at
        n = self.episodes_finished
        return RunSummary(
            episodes=n,
            successes=self.successes,
            success_rate=self.success_rate,
            mean_reward=self.reward_sum / n if n else 0.0,
            mean_turns=self.turns_finished_episodes / n if n else 0.0,
            turns=self.turns,
            invalid_actions=self.invalid_actions,
            retries=self.retries,
            finish_reasons=dict(self.finish_reasons),
            wall_s=wall,
            turns_per_s=self.turns / wall if wall > 0 else 0.0,
        )
