"""One base for gymux's async resources (policies, writers, servers, the runtime).

Subclass :class:`AsyncResource` and override :meth:`aopen` / :meth:`aclose`; entering
``async with`` opens, leaving closes, whatever happened inside. ``aclose`` runs on the way
out of the block even when it is cancelled or raised, so it must be idempotent and should
shield what must finish (anyio ``CancelScope(shield=True)``).
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["AsyncResource"]


class AsyncResource:
    """An async context manager whose set-up and tear-down are two overridable methods."""

    async def aopen(self) -> None:
        """Acquire what the resource needs (sessions, tasks, files). Default: nothing."""

    async def aclose(self) -> None:
        """Release it again; safe to call more than once. Default: nothing."""

    async def __aenter__(self) -> Self:
        await self.aopen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
