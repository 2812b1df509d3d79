"""One builder for the trajectories tests write by hand."""

from __future__ import annotations

from typing import Any

from gymux.messages import Message
from gymux.trajectory import Trajectory

__all__ = ["make_trajectory"]


def make_trajectory(
    *,
    run_id: str = "r",
    env: str = "e",
    task: int = 0,
    sample: int = 0,
    episode_id: str | None = None,
    env_version: str = "1",
    split: str = "test",
    policy: str = "p",
    policy_version: str = "1",
    **fields: Any,
) -> Trajectory:
    """A trajectory with the identity fields filled in; ``fields`` sets the rest."""
    return Trajectory(
        run_id=run_id,
        episode_id=episode_id if episode_id is not None else f"{run_id}:{env}:{task}:{sample}",
        env_id=env,
        env_version=env_version,
        task_id=task,
        split=split,
        sample=sample,
        policy=policy,
        policy_version=policy_version,
        **fields,
    )


def opening(instruction: str, first: str, *turns: str) -> list[Message]:
    """A conversation as the runtime opens an episode: the instruction, the policy's "OK",
    the first observation ``first``; then ``turns``, alternately assistant and user."""
    messages = [
        Message(role="user", content=instruction),
        Message(role="assistant", content="OK"),
        Message(role="user", content=first),
    ]
    roles = ("assistant", "user")
    messages += [Message(role=roles[i % 2], content=text) for i, text in enumerate(turns)]
    return messages
