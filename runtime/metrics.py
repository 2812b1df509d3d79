"""Counters fed by runtime events, and the run summary built from them.

Besides the events, the runtime samples (:meth:`Metrics.sample_limits`) how many of a run's
episodes wait for each limit that can hold them back: a slot under the episode cap
(``--concurrency``), an instance of the env (its instance cap), a request slot of the
policy (its request cap). The summary gives the episode-seconds waited for each
(:class:`LimitWait`) and names the limit that bound (:attr:`RunSummary.bound_by`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

import msgspec

from gymux.events import (
    EpisodeError,
    EpisodeFinished,
    EpisodeStarted,
    Event,
    TurnFinished,
)

__all__ = [
    "BIND_SHARE",
    "ENV_INSTANCES",
    "EPISODE_SLOTS",
    "POLICY_REQUESTS",
    "LimitWait",
    "Metrics",
    "RunSummary",
]

#: The limits a run's episodes can wait for (:attr:`LimitWait.limit`).
EPISODE_SLOTS = "episode slots"
ENV_INSTANCES = "env instances"
POLICY_REQUESTS = "policy requests"

#: An inner limit (env instances, policy requests) binds when running episodes spent at
#: least this share of their time waiting for it.
BIND_SHARE = 0.2


class LimitWait(msgspec.Struct, frozen=True, kw_only=True):
    """How long a run's episodes waited for one limit (sampled, summed over episodes)."""

    #: :data:`EPISODE_SLOTS`, :data:`ENV_INSTANCES` or :data:`POLICY_REQUESTS`.
    limit: str
    #: The limit's size: episodes, live instances, requests in flight.
    cap: int
    #: Episode-seconds spent waiting for it.
    wait_s: float


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
    #: Time waited for each limit (episode slots: by episodes not yet started).
    waits: list[LimitWait] = msgspec.field(default_factory=list)
    #: Episode-seconds the running episodes existed, the base of an inner limit's share.
    running_s: float = 0.0
    #: The limit that held the run back, or ``None`` when nothing waited. An inner limit
    #: (env instances, policy requests) binds when running episodes waited for it at
    #: least :data:`BIND_SHARE` of their time; otherwise the episode cap binds when
    #: episodes queued for a slot.
    bound_by: str | None = None
    #: Episode-seconds of the finished episodes spent waiting (``queue_s``), in policy
    #: calls (``policy_s``) and in the env (``env_s``): the sums of their turns' timings.
    time_s: dict[str, float] = msgspec.field(default_factory=dict)


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
        self._waits: dict[str, float] = {}
        self._caps: dict[str, int] = {}
        self._running_s = 0.0
        self._time_s: dict[str, float] = {"queue_s": 0.0, "policy_s": 0.0, "env_s": 0.0}

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
            for key, value in traj.timings.items():
                self._time_s[key] += value
        elif isinstance(event, EpisodeStarted):
            if event.attempt == 1:
                self.episodes_started += 1
        elif isinstance(event, EpisodeError) and event.will_retry:
            self.retries += 1

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes_finished if self.episodes_finished else 0.0

    @property
    def running(self) -> int:
        """Episodes started and not finished."""
        return max(0, self.episodes_started - self.episodes_finished)

    def sample_limits(self, dt: float, waiting: Mapping[str, tuple[int, int]]) -> None:
        """Account ``dt`` seconds in which ``waiting[limit] = (cap, episodes waiting)``."""
        self._running_s += self.running * dt
        for limit, (cap, count) in waiting.items():
            self._caps[limit] = cap
            self._waits[limit] = self._waits.get(limit, 0.0) + count * dt

    def _bound_by(self, waits: list[LimitWait]) -> str | None:
        inner = [w for w in waits if w.limit != EPISODE_SLOTS and w.wait_s > 0]
        top = max(inner, key=lambda w: w.wait_s, default=None)
        if top is not None and top.wait_s >= BIND_SHARE * self._running_s:
            return top.limit
        if any(w.limit == EPISODE_SLOTS and w.wait_s > 0 for w in waits):
            return EPISODE_SLOTS
        return None

    def summary(self) -> RunSummary:
        wall = time.perf_counter() - self.started_at
        n = self.episodes_finished
        waits = [
            LimitWait(limit=limit, cap=self._caps[limit], wait_s=wait_s)
            for limit, wait_s in self._waits.items()
        ]
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
            waits=waits,
            running_s=self._running_s,
            bound_by=self._bound_by(waits),
            time_s=dict(self._time_s),
        )
