"""structlog set-up and the subscriber that logs runtime events with bound context."""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol, TextIO, cast

import structlog

from gymux.events import EpisodeError, EpisodeFinished, Event, RunFinished, RunStarted, TurnFinished

__all__ = ["LogSubscriber", "configure_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing (it may be replaced
    after logging is configured, e.g. by a test harness or a daemonising service)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "warning") -> None:
    """Key-value logs to stderr at ``level``; calls below it cost one comparison."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )


class _EpisodeIds(Protocol):
    @property
    def run_id(self) -> str: ...
    @property
    def episode_id(self) -> str: ...
    @property
    def env_id(self) -> str: ...


def _for_episode(log: Any, ids: _EpisodeIds) -> Any:
    """``log`` bound to an episode's run, episode and env ids."""
    return log.bind(run_id=ids.run_id, episode_id=ids.episode_id, env=ids.env_id)


class LogSubscriber:
    """Logs runs and episodes (info), errors (warning) and turns (debug).

    Events below ``level`` are dropped before any log call is built, so the default
    (``warning``) costs one comparison per turn.
    """

    def __init__(self, level: str = "warning") -> None:
        self._log = structlog.get_logger("gymux")
        self._level = _LEVELS[level]

    def __call__(self, event: Event) -> None:
        log = self._log
        level = self._level
        if isinstance(event, EpisodeError):
            if level <= logging.WARNING:
                _for_episode(log, event).warning(
                    "episode error",
                    reason=event.reason.value,
                    error=event.message,
                    attempt=event.attempt,
                    will_retry=event.will_retry,
                )
            return
        if level > logging.INFO:
            return
        if isinstance(event, TurnFinished):
            if level > logging.DEBUG:
                return
            _for_episode(log, event).debug(
                "turn finished",
                turn=event.turn.index,
                action=event.turn.action,
                reward=event.turn.reward,
            )
        elif isinstance(event, EpisodeFinished):
            t = event.trajectory
            _for_episode(log, t).info(
                "episode finished",
                policy=t.policy,
                task=t.task_id,
                reason=t.finish_reason.value,
                reward=t.reward,
                turns=len(t.turns),
            )
        elif isinstance(event, RunStarted):
            log.info(
                "run started",
                run_id=event.run_id,
                env=event.env_id,
                policy=event.policy,
                episodes=event.episodes,
            )
        elif isinstance(event, RunFinished):
            log.info(
                "run finished",
                run_id=event.run_id,
                episodes=event.episodes,
                wall_s=round(event.wall_s, 3),
            )
