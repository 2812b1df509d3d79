"""TextWorld task ids: the generation settings of each id, the cache warm-up, walkthroughs.

Shared by the environment (:mod:`.env`) and its oracle (:mod:`.oracle`); the module
docstring of :mod:`.env` describes the tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from gymux.env_plugins.builtin.textworld.games import CookingParams, ensure_game
from gymux.env_plugins.protocol import EnvError

__all__ = [
    "MAX_TURNS",
    "TEST_IDS",
    "TRAIN_IDS",
    "params_for_task",
    "pregenerate",
    "walkthrough_for",
]

TEST_IDS = range(0, 50)
TRAIN_IDS = range(1000, 5000)
MAX_TURNS = 30

#: ``tw-make tw-cooking`` settings per difficulty level (``level = task_id % 4``).
_LEVELS: tuple[dict[str, Any], ...] = (
    {"recipe": 1, "take": 1, "go": 1},
    {"recipe": 1, "take": 1, "go": 6, "open": True},
    {"recipe": 2, "take": 2, "go": 6, "open": True, "cut": True},
    {"recipe": 2, "take": 2, "go": 6, "open": True, "cook": True, "cut": True},
)


def params_for_task(task_id: int) -> CookingParams:
    """The generation settings of a task id (see the module docstring)."""
    split: Literal["train", "test"]
    if task_id in TEST_IDS:
        split = "test"
    elif task_id in TRAIN_IDS:
        split = "train"
    else:
        raise EnvError(
            f"textworld has no task {task_id}: test ids are {TEST_IDS.start}..{TEST_IDS.stop - 1}, "
            f"train ids {TRAIN_IDS.start}..{TRAIN_IDS.stop - 1}"
        )
    level = _LEVELS[task_id % len(_LEVELS)]
    return CookingParams(split=split, seed=task_id, **level)


def pregenerate(task_ids: Iterable[int], workers: int = 2) -> int:
    """Make sure the games of ``task_ids`` are in the cache (blocking; ``workers`` at once).

    Returns how many games were checked. Warm the cache this way before a large run: a
    generation on a cache miss happens inside ``reset`` and takes seconds.
    """
    ids = list(task_ids)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(lambda i: ensure_game(params_for_task(i)), ids):
            pass
    return len(ids)


def walkthrough_for(task_id: int) -> list[str]:
    """The gold command sequence of a task, from the game cache (blocking: may generate)."""
    return list(ensure_game(params_for_task(task_id)).meta.walkthrough)
