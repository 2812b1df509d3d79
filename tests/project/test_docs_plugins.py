"""docs/plugins.md must not go stale: its table of built-in environments matches the
registry, and every relative link in it points to an existing file."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gymux.env_plugins.protocol import EnvPlugin
from gymux.env_plugins.registry import PluginError, default_registry

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "plugins.md"
HEADER = "| id | what it is | execution | test / train | max_turns |"


def builtin_ids() -> set[str]:
    """The envs gymux itself publishes in the ``gymux.envs`` entry-point group."""
    return {
        ep.name
        for ep in entry_points(group="gymux.envs")
        if ep.value.startswith("gymux.env_plugins.")
    }


def table_rows() -> dict[str, list[str]]:
    """The rows of the built-in environments table, by env id (cells without backticks)."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        assert cells[0] not in rows, f"duplicate row for {cells[0]}"
        rows[cells[0]] = cells
    return rows


def builtin_plugin(env_id: str) -> EnvPlugin:
    if env_id == "sqlgym":  # the entry point honours $GYMUX_SQLGYM_DIR; the table documents
        from gymux.env_plugins.builtin.sqlgym.env import sqlgym_plugin  # the built-in benchmark

        return sqlgym_plugin()
    try:
        return default_registry().get(env_id)
    except PluginError as exc:
        pytest.skip(f"{env_id} unavailable here: {exc}")


def test_table_lists_every_builtin_env() -> None:
    assert set(table_rows()) == builtin_ids()


@pytest.mark.parametrize("env_id", sorted(builtin_ids()))
def test_table_row_matches_the_registry(env_id: str) -> None:
    cells = table_rows()[env_id]
    plugin = builtin_plugin(env_id)
    spec = plugin.spec
    assert cells[2] == plugin.execution.value
    test, train = (int(n) for n in cells[3].split("/"))
    assert (test, train) == (len(spec.split("test").ids), len(spec.split("train").ids))
    assert set(spec.splits) == {"test", "train"}
    assert int(cells[4]) == spec.max_turns
    assert plugin.oracle is not None


def test_relative_links_point_to_existing_files() -> None:
    text = DOC.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [t for t in targets if not re.match(r"[a-z]+:|#", t)]
    assert relative, "no relative links found"
    missing = [t for t in relative if not (DOC.parent / t.split("#")[0]).exists()]
    assert not missing, missing
