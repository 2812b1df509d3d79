"""The import layering (.importlinter, run by .ci/layers) holds, and its contracts name every
module on disk, so that a new module cannot slip past them."""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".importlinter"
FOLDERS = {"gymux": "runtime", "gymux.env_plugins": "env_plugins"}
FOLDERS |= {"gymux.policies": "policies", "gymux.stores": "stores"}
# Packages that hold modules of several layers, so they are no layer themselves.
CONTAINERS = {"gymux", "gymux.env_plugins"}


def modules_on_disk() -> set[str]:
    """Every module of the installed package, from the source folders."""
    found: set[str] = set()
    for package, folder in FOLDERS.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            if "data" in rel.parts or "__pycache__" in rel.parts:
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            found.add(".".join([package, *parts]))
    return found


def contracts() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return parser


def listed(contract: str, key: str) -> set[str]:
    return set(contracts()[f"importlinter:contract:{contract}"][key].split())


def layer_modules() -> set[str]:
    text = contracts()["importlinter:contract:layers"]["layers"]
    return {
        m.strip()
        for line in text.splitlines()
        for m in line.replace("|", ":").split(":")
        if m.strip()
    }


def covered(module: str, names: set[str]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def framework_modules() -> set[str]:
    """The env_plugins framework: the modules at the top of env_plugins/."""
    return {
        f"gymux.env_plugins.{p.stem}"
        for p in (ROOT / "env_plugins").glob("*.py")
        if p.stem != "__init__"
    }


def test_modules_are_found() -> None:
    found = modules_on_disk()
    assert {"gymux.runtime", "gymux.env_plugins.protocol", "gymux.stores", "gymux.cli"} <= found


def test_every_module_is_in_a_layer() -> None:
    layers = layer_modules()
    missing = sorted(m for m in modules_on_disk() - CONTAINERS if not covered(m, layers))
    assert not missing, f"add these to a layer in .importlinter: {missing}"


def test_every_layer_module_exists() -> None:
    found = modules_on_disk()
    stale = sorted(m for m in layer_modules() if m not in found)
    assert not stale, f"the layers contract names modules that do not exist: {stale}"


def test_framework_lists_name_every_framework_module() -> None:
    framework = framework_modules()
    assert "gymux.env_plugins.protocol" in framework
    alone = listed("env-framework-alone", "source_modules")
    assert alone == framework | {"gymux.env_plugins"}
    protocol_only = listed("policies-stores-env-protocol-only", "forbidden_modules")
    assert protocol_only == (framework - {"gymux.env_plugins.protocol"}) | {"gymux.env_plugins"}
    assert framework <= layer_modules()


def test_nothing_imports_builtin_or_cli_names_every_other_module() -> None:
    sources = listed("nothing-imports-builtin-or-cli", "source_modules")
    exempt = {"gymux.cli", "gymux.__main__", "gymux.env_plugins.builtin"}
    missing = sorted(
        m
        for m in modules_on_disk() - CONTAINERS
        if not covered(m, exempt) and not covered(m, sources)
    )
    assert not missing, f"add these to nothing-imports-builtin-or-cli in .importlinter: {missing}"


def lint_imports() -> str:
    venv_bin = Path(sys.executable).parent
    found = shutil.which("lint-imports", path=f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    if importlib.util.find_spec("importlinter") is None or found is None:
        pytest.skip("import-linter is not installed (pip install import-linter)")
    return found


def test_layers_contract_holds() -> None:
    lint_imports()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci" / "layers")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BROKEN" not in proc.stdout
    assert "0 import cycle(s)" in proc.stdout
