"""BabyAI levels, task ids and the text rendering of what the agent sees.

Kept free of any minigrid import: the level list, the task-id formula and the phrasing
are plain data and functions, so the plugin module imports without the optional extra.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = [
    "AGENTGYM_LEVELS",
    "LEVEL_COUNT",
    "VisibleObject",
    "describe_scene",
    "format_actions",
    "level_and_seed",
    "level_list_fingerprint",
    "object_phrase",
    "relative_phrase",
]

#: AgentGym's 40 BabyAI levels, in AgentGym's order (its level numbers 1..40 are the
#: positions here plus one), as minigrid 3.2.0 ids. AgentGym names ``BabyAI-GoToObjS6-v0``
#: under its pin ``minigrid<2.5.0``, where that id is ``GoToObj(room_size=4)`` (a known
#: minigrid bug); minigrid 3.x fixed it as ``BabyAI-GoToObjS6-v1`` (room size 6, a
#: different level) and registers the room-size-4 level as ``BabyAI-GoToObjS4-v0``, which
#: therefore stands in for AgentGym's level 4. Checked against AgentGym's list under
#: minigrid 2.3.1: every test id (0..89) gets the same mission, agent pose and grid
#: (``tests/env_plugins/builtin/test_agentgym_ids.py``); of all ids 0..3999 only train ids
#: 155, 156 and 2994 differ (same grid, another mission: minigrid 3 samples it otherwise).
AGENTGYM_LEVELS: tuple[str, ...] = (
    "BabyAI-GoToRedBallGrey-v0",
    "BabyAI-GoToRedBall-v0",
    "BabyAI-GoToRedBallNoDists-v0",
    "BabyAI-GoToObjS4-v0",
    "BabyAI-GoToLocalS8N7-v0",
    "BabyAI-GoToObjMazeS7-v0",
    "BabyAI-GoToImpUnlock-v0",
    "BabyAI-GoToSeqS5R2-v0",
    "BabyAI-GoToRedBlueBall-v0",
    "BabyAI-GoToDoor-v0",
    "BabyAI-GoToObjDoor-v0",
    "BabyAI-Open-v0",
    "BabyAI-OpenRedDoor-v0",
    "BabyAI-OpenDoorLoc-v0",
    "BabyAI-OpenRedBlueDoorsDebug-v0",
    "BabyAI-OpenDoorsOrderN4Debug-v0",
    "BabyAI-Pickup-v0",
    "BabyAI-UnblockPickup-v0",
    "BabyAI-PickupLoc-v0",
    "BabyAI-PickupDistDebug-v0",
    "BabyAI-PickupAbove-v0",
    "BabyAI-PutNextLocalS6N4-v0",
    "BabyAI-PutNextS7N4Carrying-v0",
    "BabyAI-Unlock-v0",
    "BabyAI-UnlockLocalDist-v0",
    "BabyAI-KeyInBox-v0",
    "BabyAI-UnlockPickupDist-v0",
    "BabyAI-BlockedUnlockPickup-v0",
    "BabyAI-UnlockToUnlock-v0",
    "BabyAI-ActionObjDoor-v0",
    "BabyAI-FindObjS7-v0",
    "BabyAI-KeyCorridorS6R3-v0",
    "BabyAI-OneRoomS20-v0",
    "BabyAI-MoveTwoAcrossS8N9-v0",
    "BabyAI-SynthS5R2-v0",
    "BabyAI-SynthLoc-v0",
    "BabyAI-SynthSeq-v0",
    "BabyAI-MiniBossLevel-v0",
    "BabyAI-BossLevel-v0",
    "BabyAI-BossLevelNoUnlock-v0",
)
LEVEL_COUNT = len(AGENTGYM_LEVELS)


def level_and_seed(task_id: int) -> tuple[str, int]:
    """AgentGym's formula: level ``task_id % 40`` (0-based here), seed ``task_id // 40``."""
    if task_id < 0:
        raise ValueError(f"BabyAI task ids are >= 0, got {task_id}")
    return AGENTGYM_LEVELS[task_id % LEVEL_COUNT], task_id // LEVEL_COUNT


def level_list_fingerprint(level_ids: list[str]) -> str:
    """sha256 of the newline-joined, sorted level ids (pins a registry's BabyAI list)."""
    return hashlib.sha256("\n".join(sorted(level_ids)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class VisibleObject:
    """An object in the agent's view, with the id the actions refer to (``red ball 1``)."""

    name: str
    type: str
    color: str
    #: ``open``, ``closed`` or ``locked`` for doors, ``""`` otherwise.
    state: str
    pos: tuple[int, int]
    #: Steps ahead of the agent (>= 0) and to its right (negative: to its left).
    ahead: int
    right: int


def _steps(n: int) -> str:
    return f"{n} step{'' if n == 1 else 's'}"


def relative_phrase(ahead: int, right: int) -> str:
    """``2 steps ahead and 1 step to your left``."""
    parts: list[str] = []
    if ahead:
        parts.append(f"{_steps(ahead)} ahead")
    if right > 0:
        parts.append(f"{_steps(right)} to your right")
    elif right < 0:
        parts.append(f"{_steps(-right)} to your left")
    return " and ".join(parts) if parts else "where you stand"


def object_phrase(obj: VisibleObject) -> str:
    """``a red ball 1`` / ``a closed blue door 2`` / ``an open grey door 1``."""
    words = f"{obj.state} {obj.name}" if obj.state else obj.name
    article = "an" if words[0] in "aeiou" else "a"
    return f"{article} {words}"


def describe_scene(
    objects: list[VisibleObject], ahead_text: str, carrying: tuple[str, str] | None
) -> str:
    """The observation body: objects in view, what is straight ahead, what is carried."""
    lines: list[str] = []
    if objects:
        listed = "; ".join(
            f"{object_phrase(o)}, {relative_phrase(o.ahead, o.right)}" for o in objects
        )
        lines.append(f"In view: {listed}.")
    else:
        lines.append("You see no objects, only walls and floor.")
    lines.append(ahead_text)
    if carrying is None:
        lines.append("You are not carrying anything.")
    else:
        lines.append(f"You are carrying a {carrying[0]} {carrying[1]}.")
    return "\n".join(lines)


def format_actions(actions: list[str]) -> str:
    return "Available actions: [" + ", ".join(f'"{a}"' for a in actions) + "]"
