"""Typed runtime events and the bus that hands them to subscribers.

Subscribers are plain callables invoked inline, in publication order, on the event loop.
They must be quick and must not block; a subscriber that needs I/O (a sink) buffers and
hands the work to a thread. A subscriber that raises is logged and removed, so a bad
subscriber can never stop episodes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import msgspec
import structlog

from gymux.trajectory import FinishReason, Trajectory, Turn

__all__ = [
    "EpisodeError",
    "EpisodeFinished",
    "EpisodeStarted",
    "Event",
    "EventBus",
    "RunFinished",
    "RunStarted",
    "Subscriber",
    "TurnFinished",
]

_log = structlog.get_logger("gymux.events")


class _EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    run_id: str


class RunStarted(_EventBase, frozen=True, kw_only=True, tag="run_started"):
    env_id: str
    policy: str
    episodes: int


class RunFinished(_EventBase, frozen=True, kw_only=True, tag="run_finished"):
    episodes: int
    wall_s: float


class EpisodeStarted(_EventBase, frozen=True, kw_only=True, tag="episode_started"):
    episode_id: str
    env_id: str
    task_id: int
    sample: int
    attempt: int


class TurnFinished(_EventBase, frozen=True, kw_only=True, tag="turn_finished"):
    episode_id: str
    env_id: str
    turn: Turn


class EpisodeError(_EventBase, frozen=True, kw_only=True, tag="episode_error"):
    """An error inside one episode. ``will_retry`` is true for transient env errors."""

    episode_id: str
    env_id: str
    reason: FinishReason
    message: str
    attempt: int
    will_retry: bool


class EpisodeFinished(_EventBase, frozen=True, kw_only=True, tag="episode_finished"):
    trajectory: Trajectory


Event = RunStarted | RunFinished | EpisodeStarted | TurnFinished | EpisodeError | EpisodeFinished
Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of events to subscribers."""

    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add ``subscriber``; returns a function that removes it."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, event: Event) -> None:
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(event)
            except Exception as exc:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)
                # Reporting must not fail either: the log itself may be what broke.
                with contextlib.suppress(Exception):
                    _log.error(
                        "subscriber failed; removed",
                        subscriber=repr(subscriber),
                        event_type=type(event).__name__,
                        error=repr(exc),
                    )
