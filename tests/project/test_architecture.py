"""docs/architecture.md keeps step with the tree: its module tables list every module on
disk (one row per built-in env package) and nothing that is gone, and its drawing of the
tree shows every subpackage."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
SOURCES = ("runtime", "env_plugins", "policies", "stores")
BUILTIN = "env_plugins/builtin"


def section(title: str) -> str:
    text = DOC.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"docs/architecture.md has no '## {title}' section"
    return match.group(1)


def table_rows() -> list[str]:
    """The first cell of every row of the module tables (a path, without backticks)."""
    rows = re.findall(r"^\| `([^`]+)` \|", section("Modules"), flags=re.M)
    return rows


def is_source(path: Path) -> bool:
    return "__pycache__" not in path.parts and "data" not in path.parts


def modules_on_disk() -> set[str]:
    """Every module, as a repository path; a built-in env package counts as one."""
    found: set[str] = set()
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if not is_source(rel):
                continue
            parts = rel.parts
            if rel.as_posix().startswith(BUILTIN + "/") and len(parts) > 3:
                found.add("/".join(parts[:3]) + "/")  # env_plugins/builtin/<env>/
            else:
                found.add(rel.as_posix())
    return found


def test_the_tables_are_found() -> None:
    rows = table_rows()
    assert len(rows) > 50
    assert "runtime/runtime.py" in rows


def test_no_module_is_listed_twice() -> None:
    rows = table_rows()
    assert sorted(r for r in set(rows) if rows.count(r) > 1) == []


def test_every_module_is_listed() -> None:
    missing = sorted(modules_on_disk() - set(table_rows()))
    assert not missing, f"docs/architecture.md does not list these modules: {missing}"


def test_every_listed_module_exists() -> None:
    stale = sorted(set(table_rows()) - modules_on_disk())
    assert not stale, f"docs/architecture.md lists modules that do not exist: {stale}"


def test_every_builtin_env_package_has_a_row() -> None:
    envs = {p.parent.name for p in (ROOT / BUILTIN).glob("*/__init__.py")}
    assert envs, "no built-in env packages found"
    rows = set(table_rows())
    assert {f"{BUILTIN}/{env}/" for env in envs} <= rows


def test_the_tree_drawing_shows_every_subpackage() -> None:
    tree = section("The tree")
    for folder in SOURCES:
        assert f"{folder}/" in tree
        for init in (ROOT / folder).glob("*/__init__.py"):
            assert f"{init.parent.name}/" in tree, f"the tree does not show {init.parent}"


def test_the_layers_are_written_down() -> None:
    layers = section("Layers")
    for package in ("gymux.cli", "gymux.eval", "gymux.testing", "gymux.policies", "gymux.stores"):
        assert package in layers
    assert ".ci/layers" in layers and ".importlinter" in layers
