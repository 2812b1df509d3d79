"""A one-line live progress display for the CLI (an event subscriber)."""

from __future__ import annotations

import time
from typing import TextIO

from gymux.events import EpisodeFinished, Event, RunStarted, TurnFinished

__all__ = ["ProgressDisplay"]


class ProgressDisplay:
    """Redraws ``label [####....] done/total  success  turns/s  elapsed`` at most
    ``hz`` times a second on ``stream``; :meth:`close` draws the final state."""

    def __init__(self, stream: TextIO, *, label: str = "", hz: float = 10.0, width: int = 24):
        self._stream = stream
        self._label = label
        self._interval = 1.0 / hz
        self._width = width
        self._total = 0
        self._done = 0
        self._success = 0
        self._turns = 0
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, TurnFinished):
            self._turns += 1
        elif isinstance(event, EpisodeFinished):
            self._done += 1
            self._success += event.trajectory.success
        elif isinstance(event, RunStarted):
            self._total += event.episodes
        else:
            return
        now = time.perf_counter()
        if now - self._last_draw >= self._interval:
            self._last_draw = now
            self._draw(now)

    def render(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self._start
        total = max(self._total, 1)
        filled = min(self._width, self._width * self._done // total)
        bar = "#" * filled + "." * (self._width - filled)
        rate = self._success / self._done * 100 if self._done else 0.0
        tps = self._turns / elapsed if elapsed > 0 else 0.0
        label = f"{self._label} " if self._label else ""
        return (
            f"{label}[{bar}] {self._done}/{self._total} episodes  success {rate:5.1f}%  "
            f"{tps:,.0f} turns/s  {elapsed:6.1f}s"
        )

    def _draw(self, now: float) -> None:
        self._stream.write("\r" + self.render(now) + "\x1b[K")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        self._draw(time.perf_counter())
        self._stream.write("\n")
        self._stream.flush()
