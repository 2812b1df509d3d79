"""The public API is written down: each public package's ``__all__`` keeps every name it
has exported (new names are welcome), every exported name resolves, the packages export
what docs/ sends users to, and every ``gymux...`` name in docs/ and the README resolves."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

#: Every name each package exports (tests/project/public_api.json, one list per package).
#: A name may be added there; removing one breaks users.
SNAPSHOT: dict[str, set[str]] = {
    package: set(names)
    for package, names in json.loads(
        (Path(__file__).parent / "public_api.json").read_text()
    ).items()
}

#: What docs/ sends users to, by the package it must be importable from (issue 10, item 5).
REQUIRED: dict[str, set[str]] = {
    "gymux": {"Runtime", "Sink", "GymuxError", "EventBus", "EpisodeFinished"},
    "gymux.env_plugins": {"EnvPlugin", "register", "check_plugin"},
    "gymux.policies": {"Policy", "SimplePolicy", "BatchingPolicy"},
    "gymux.stores": {"Store", "StreamReader", "TrajectoryDataset", "TorchTrajectoryDataset"},
    "gymux.testing": {"check_plugin", "soak", "ScriptedPolicy"},
}

#: ``gymux.<x>`` strings in the docs that are not Python names.
NOT_PYTHON = {
    "gymux.envs",  # the entry-point group
    "gymux.toml",  # the config file
}


def exported(package: str) -> set[str]:
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{package} has no __all__"
    assert len(names) == len(set(names)), f"{package}.__all__ repeats a name"
    return set(names)


@pytest.mark.parametrize("package", sorted(SNAPSHOT))
def test_no_exported_name_disappears(package: str) -> None:
    gone = sorted(SNAPSHOT[package] - exported(package))
    assert not gone, f"{package} no longer exports {gone}"


@pytest.mark.parametrize("package", sorted(REQUIRED))
def test_packages_export_what_the_docs_send_users_to(package: str) -> None:
    missing = sorted(REQUIRED[package] - exported(package))
    assert not missing, f"{package} should export {missing}"


def resolve_attr(module: ModuleType, name: str) -> Any:
    try:
        return getattr(module, name)
    except ModuleNotFoundError as exc:  # a lazy export of an optional extra
        if exc.name and not exc.name.startswith("gymux"):
            pytest.skip(f"{module.__name__}.{name} needs {exc.name}")
        raise


@pytest.mark.parametrize("package", sorted(SNAPSHOT))
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in sorted(exported(package)):
        resolve_attr(module, name)


# ---------------------------------------------------------------------------------------
# Names used in the docs


def doc_texts() -> dict[str, str]:
    return {path.relative_to(ROOT).as_posix(): path.read_text() for path in DOCS}


def doc_imports() -> list[tuple[str, str, str]]:
    """``(doc, module, name)`` for each ``from gymux... import a, b`` in the docs."""
    found = []
    pattern = re.compile(r"^\s*from\s+(gymux[\w.]*)\s+import\s+(\(.*?\)|[^\n]+)", re.M | re.S)
    for doc, text in doc_texts().items():
        for module, names in pattern.findall(text):
            for name in names.strip("()").replace("\n", " ").split(","):
                name = name.split("#")[0].split(" as ")[0].strip()
                if name and name != "*":
                    found.append((doc, module, name))
    return sorted(set(found))


def doc_dotted_names() -> list[tuple[str, str]]:
    """``(doc, name)`` for each ``gymux.x.y`` written in the docs (not in a path or a URL)."""
    found = set()
    pattern = re.compile(r"(?<![\w/.-])(gymux(?:\.[A-Za-z_]\w*)+)(?![\w/-])")
    for doc, text in doc_texts().items():
        for name in pattern.findall(text):
            name = name.rstrip(".")
            if name not in NOT_PYTHON:
                found.add((doc, name))
    return sorted(found)


def resolve_dotted(name: str) -> Any:
    """Import the longest module prefix of ``name`` and look the rest up as attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing == module_name or module_name.startswith(missing + "."):
                continue  # no such module: try a shorter prefix
            if not missing.startswith("gymux"):
                pytest.skip(f"{name} needs {missing}")
            raise
        for attr in parts[i:]:
            try:
                obj = resolve_attr(obj, attr) if isinstance(obj, ModuleType) else getattr(obj, attr)
            except AttributeError:
                raise AssertionError(f"{name}: {obj!r} has no attribute {attr!r}") from None
        # A leftover folder without __init__.py imports as a namespace package: no module.
        is_namespace = isinstance(obj, ModuleType) and getattr(obj, "__file__", None) is None
        assert not is_namespace, f"{name}: a folder without modules, not a gymux module"
        return obj
    raise AssertionError(f"{name}: no such module")


def test_docs_are_scanned() -> None:
    assert len(doc_imports()) >= 10
    assert len(doc_dotted_names()) >= 20


@pytest.mark.parametrize(("doc", "module", "name"), doc_imports())
def test_doc_imports_resolve(doc: str, module: str, name: str) -> None:
    resolve_attr(importlib.import_module(module), name)


@pytest.mark.parametrize(("doc", "name"), doc_dotted_names())
def test_doc_dotted_names_resolve(doc: str, name: str) -> None:
    resolve_dotted(name)


def test_import_gymux_stays_cheap() -> None:
    """``gymux`` resolves its exports lazily: importing it (as every env worker process
    does) loads no other gymux module."""
    code = "import sys, gymux; print(sorted(m for m in sys.modules if m.startswith('gymux')))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "['gymux']"
