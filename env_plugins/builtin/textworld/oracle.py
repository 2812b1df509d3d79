"""The TextWorld oracle: plays the game's walkthrough, one step per assistant turn."""

from __future__ import annotations

import anyio

from gymux.env_plugins.builtin.textworld.tasks import walkthrough_for
from gymux.env_plugins.protocol import assistant_turn
from gymux.errors import PolicyError
from gymux.messages import PolicyRequest
from gymux.react import format_react

__all__ = ["TextWorldOracle"]


class TextWorldOracle:
    """Plays the game's walkthrough: the k-th assistant turn (after "OK") plays step k.

    Stateless: the walkthrough comes from the game cache (read, or generated, in a worker
    thread) and the step from the number of assistant messages in the conversation.
    """

    version = "textworld-walkthrough-1"

    async def solve(self, request: PolicyRequest) -> str:
        walkthrough = await anyio.to_thread.run_sync(walkthrough_for, request.task_id)
        step = assistant_turn(request)
        if step >= len(walkthrough):
            raise PolicyError(
                f"textworld oracle: the walkthrough of task {request.task_id} has only "
                f"{len(walkthrough)} steps, and the game has not ended"
            )
        command = walkthrough[step]
        thought = f"Step {step + 1} of {len(walkthrough)} of the walkthrough: {command}."
        return format_react(thought, command)
