"""ScienceWorld's task types and gymux's task ids over them, pinned to scienceworld 1.2.3.

Shared by the environment (:mod:`.env`), the simulator wrapper (:mod:`.simulator`) and the
oracle (:mod:`.oracle`); the module docstring of :mod:`.env` describes the ids and splits.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

from gymux.env_plugins.protocol import EnvError

__all__ = [
    "AGENTGYM_EXCLUDED",
    "AGENTGYM_ITEMS",
    "GOLD_FILE",
    "ID_ORDER",
    "INSTALL_HINT",
    "MAX_ACTION_CHARS",
    "SCIENCEWORLD_ORDER",
    "SCIENCEWORLD_VERSION",
    "SIMPLIFICATIONS",
    "TASK_TYPES",
    "TEST_VARIATIONS_PER_TYPE",
    "TaskType",
    "split_ids",
    "task_id_of",
    "task_of",
]

#: The upstream version the task ids, splits and gold data are pinned to.
SCIENCEWORLD_VERSION = "1.2.3"
#: ScienceWorld simplification string used for every task (AgentGym loads with none).
SIMPLIFICATIONS = ""
#: Test tasks per task type: the first this-many upstream test variations.
TEST_VARIATIONS_PER_TYPE = 10
#: Longest action text accepted by the parser.
MAX_ACTION_CHARS = 200
#: Name of the shipped gold-sequence file in ``gymux.env_plugins.data``.
GOLD_FILE = "sciworld_gold.json.gz"

INSTALL_HINT = "pip install 'gymux[sciworld]'"


class TaskType(NamedTuple):
    """One ScienceWorld task type and its upstream variation split (contiguous ranges)."""

    name: str
    variations: int
    train: int
    dev: int
    test: int

    @property
    def train_variations(self) -> range:
        return range(0, self.train)

    @property
    def test_variations(self) -> range:
        return range(self.train + self.dev, self.variations)


#: The 30 task types of scienceworld 1.2.3, sorted by name: (name, variations, train, dev,
#: test). Read from the jar (``getTaskMaxVariations``, ``getVariationsTrain/Dev/Test``).
TASK_TYPES: tuple[TaskType, ...] = tuple(
    TaskType(*row)
    for row in (
        ("boil", 30, 14, 7, 9),
        ("change-the-state-of-matter-of", 30, 14, 7, 9),
        ("chemistry-mix", 32, 16, 8, 8),
        ("chemistry-mix-paint-secondary-color", 36, 18, 9, 9),
        ("chemistry-mix-paint-tertiary-color", 36, 18, 9, 9),
        ("find-animal", 300, 150, 75, 75),
        ("find-living-thing", 300, 150, 75, 75),
        ("find-non-living-thing", 300, 150, 75, 75),
        ("find-plant", 300, 150, 75, 75),
        ("freeze", 30, 14, 7, 9),
        ("grow-fruit", 126, 62, 31, 33),
        ("grow-plant", 126, 62, 31, 33),
        ("identify-life-stages-1", 14, 6, 3, 5),
        ("identify-life-stages-2", 10, 4, 2, 4),
        ("inclined-plane-determine-angle", 168, 84, 42, 42),
        ("inclined-plane-friction-named-surfaces", 1386, 692, 346, 348),
        ("inclined-plane-friction-unnamed-surfaces", 162, 80, 40, 42),
        ("lifespan-longest-lived", 125, 62, 31, 32),
        ("lifespan-longest-lived-then-shortest-lived", 125, 62, 31, 32),
        ("lifespan-shortest-lived", 125, 62, 31, 32),
        ("measure-melting-point-known-substance", 436, 218, 109, 109),
        ("measure-melting-point-unknown-substance", 300, 150, 75, 75),
        ("melt", 30, 14, 7, 9),
        ("mendelian-genetics-known-plant", 120, 60, 30, 30),
        ("mendelian-genetics-unknown-plant", 480, 240, 120, 120),
        ("power-component", 20, 10, 5, 5),
        ("power-component-renewable-vs-nonrenewable-energy", 20, 10, 5, 5),
        ("test-conductivity", 900, 450, 225, 225),
        ("test-conductivity-of-unknown-substances", 600, 300, 150, 150),
        ("use-thermometer", 540, 270, 135, 135),
    )
)

#: Task types AgentGym leaves out (its ids 5-1, 5-2, 9-1..9-3, 10-1, 10-2); not in any split.
AGENTGYM_EXCLUDED = frozenset(
    {
        "grow-plant",
        "grow-fruit",
        "inclined-plane-determine-angle",
        "inclined-plane-friction-named-surfaces",
        "inclined-plane-friction-unnamed-surfaces",
        "mendelian-genetics-known-plant",
        "mendelian-genetics-unknown-plant",
    }
)

#: The 30 task types in ScienceWorld's own order: its task ids ``1-1`` .. ``10-2``, the order
#: of ``ScienceWorldEnv.tasks`` (``tasks.json``; the same in scienceworld 1.1.3 and 1.2.3).
SCIENCEWORLD_ORDER: tuple[str, ...] = (
    "boil",  # 1-1
    "melt",
    "freeze",
    "change-the-state-of-matter-of",
    "use-thermometer",  # 2-1
    "measure-melting-point-known-substance",
    "measure-melting-point-unknown-substance",
    "power-component",  # 3-1
    "power-component-renewable-vs-nonrenewable-energy",
    "test-conductivity",
    "test-conductivity-of-unknown-substances",
    "find-living-thing",  # 4-1
    "find-non-living-thing",
    "find-plant",
    "find-animal",
    "grow-plant",  # 5-1
    "grow-fruit",
    "chemistry-mix",  # 6-1
    "chemistry-mix-paint-secondary-color",
    "chemistry-mix-paint-tertiary-color",
    "lifespan-longest-lived",  # 7-1
    "lifespan-shortest-lived",
    "lifespan-longest-lived-then-shortest-lived",
    "identify-life-stages-1",  # 8-1
    "identify-life-stages-2",
    "inclined-plane-determine-angle",  # 9-1
    "inclined-plane-friction-named-surfaces",
    "inclined-plane-friction-unnamed-surfaces",
    "mendelian-genetics-known-plant",  # 10-1
    "mendelian-genetics-unknown-plant",
)

#: Task types in task-id order: AgentGym's enumeration first (ScienceWorld's order without
#: the excluded types: ``agentenv_sciworld/environment.py`` builds its ``games`` list from
#: ``ScienceWorldEnv.tasks`` that way, every variation of each), then the excluded types in
#: the same order, whose ids AgentGym does not have.
ID_ORDER: tuple[str, ...] = tuple(
    n for n in SCIENCEWORLD_ORDER if n not in AGENTGYM_EXCLUDED
) + tuple(n for n in SCIENCEWORLD_ORDER if n in AGENTGYM_EXCLUDED)


# --------------------------------------------------------------------------- task ids


_TYPES_BY_NAME = {t.name: t for t in TASK_TYPES}
_TYPES_IN_ID_ORDER = tuple(_TYPES_BY_NAME[name] for name in ID_ORDER)
_TASK_COUNT = sum(t.variations for t in TASK_TYPES)
#: How many ids AgentGym's sciworld server has (``data_idx`` 0 .. AGENTGYM_ITEMS - 1):
#: gymux task id ``n`` below this is AgentGym's item ``n``.
AGENTGYM_ITEMS = sum(t.variations for t in TASK_TYPES if t.name not in AGENTGYM_EXCLUDED)


@functools.cache
def _offsets() -> dict[str, int]:
    offsets: dict[str, int] = {}
    total = 0
    for task_type in _TYPES_IN_ID_ORDER:
        offsets[task_type.name] = total
        total += task_type.variations
    return offsets


def task_id_of(name: str, variation: int) -> int:
    """The task id of variation ``variation`` of task type ``name``."""
    task_type = _TYPES_BY_NAME.get(name)
    if task_type is None:
        raise KeyError(f"unknown ScienceWorld task type {name!r}")
    if not 0 <= variation < task_type.variations:
        raise KeyError(f"{name!r} has variations 0..{task_type.variations - 1}, not {variation}")
    return _offsets()[name] + variation


def task_of(task_id: int) -> tuple[str, int]:
    """``(task type name, variation)`` of a task id; :class:`EnvError` if out of range."""
    if not 0 <= task_id < _TASK_COUNT:
        raise EnvError(f"unknown sciworld task id {task_id}: valid ids are 0..{_TASK_COUNT - 1}")
    for task_type in _TYPES_IN_ID_ORDER:
        offset = _offsets()[task_type.name]
        if task_id < offset + task_type.variations:
            return task_type.name, task_id - offset
    raise AssertionError("unreachable")  # pragma: no cover


def split_ids(which: str) -> list[int]:
    """The ids of split ``which`` (``"test"`` or ``"train"``), in id order."""
    ids: list[int] = []
    for task_type in _TYPES_IN_ID_ORDER:
        if task_type.name in AGENTGYM_EXCLUDED:
            continue
        if which == "test":
            variations: Sequence[int] = task_type.test_variations[:TEST_VARIATIONS_PER_TYPE]
        else:
            variations = task_type.train_variations
        ids += [_offsets()[task_type.name] + v for v in variations]
    return ids
