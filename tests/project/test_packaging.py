"""Packaging: the wheel holds everything, installs into a fresh venv and runs from there.

The wheel is built once per session from a copy of the source tree (so stale ``build/``
folders of the checkout cannot leak into it), installed with pip (dependencies from the
package index) into a new virtual environment, and exercised there with real processes.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest

from gymux.env_plugins.builtin.maze.plugin import MAZE_SPEC
from gymux.env_plugins.builtin.wordle.plugin import WORDLE_SPEC
from gymux.stores import Store

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "gymux": "runtime",
    "gymux/env_plugins": "env_plugins",
    "gymux/policies": "policies",
    "gymux/stores": "stores",
}


def _source_packages() -> dict[str, Path]:
    """Every package in the source tree (a folder with ``__init__.py``), by wheel path."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for init in (REPO / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(REPO / folder).as_posix()
            found[package if rel == "." else f"{package}/{rel}"] = init.parent
    return found


BUILD_TIMEOUT_S = 300
INSTALL_TIMEOUT_S = 400


def _check(cmd: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "gymux"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            "*.pyc",
            ".*_cache",
            "runs",
            "tests",
        ),
    )
    dist = tmp_path_factory.mktemp("dist")
    _check(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)],
        timeout=BUILD_TIMEOUT_S,
        cwd=src,
    )
    (whl,) = dist.glob("gymux-*.whl")
    return whl


@dataclass
class Venv:
    root: Path
    python: Path
    bin: Path
    purelib: Path
    work: Path

    def run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **kwargs,
        )

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.root)
        return env


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("venv") / "env"
    _check([sys.executable, "-m", "venv", str(root)], timeout=120)
    python = root / "bin" / "python"
    _check(
        [
            str(python),
            *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--timeout", "60"),
            str(wheel),
        ],
        timeout=INSTALL_TIMEOUT_S,
    )
    purelib = _check(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], timeout=60
    ).stdout.strip()
    work = tmp_path_factory.mktemp("work")
    return Venv(root=root, python=python, bin=root / "bin", purelib=Path(purelib), work=work)


# -- the wheel itself ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        metadata = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        data_files = {
            n: zf.read(n)
            for n in names
            if "/data/" in n and n.startswith("gymux/env_plugins/builtin/")
        }

    for package in PACKAGES:
        assert f"{package}/py.typed" in names
    # Every source package (a folder with __init__.py, at any depth) ships, module for module.
    source_packages = _source_packages()
    assert "gymux/env_plugins/builtin/maze" in source_packages
    for package, folder in source_packages.items():
        assert f"{package}/__init__.py" in names, package
        modules = {p.name for p in folder.glob("*.py")}
        shipped = {
            n.rsplit("/", 1)[1]
            for n in names
            if n.startswith(package + "/")
            and n.count("/") == package.count("/") + 1
            and n.endswith(".py")
        }
        assert shipped == modules, package
    shipped_packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert shipped_packages == set(source_packages)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "runtime/", "env_plugins/"))]

    eps = configparser.ConfigParser()
    eps.read_string(entry_points)
    assert dict(eps["console_scripts"]) == {"gymux": "gymux.cli:console_main"}
    assert dict(eps["gymux.envs"]) == {
        "maze": "gymux.env_plugins.builtin.maze.plugin:plugin",
        "wordle": "gymux.env_plugins.builtin.wordle.plugin:plugin",
        "lmrl-wordle": "gymux.env_plugins.builtin.lmrl_wordle.plugin:plugin",
        "textcraft": "gymux.env_plugins.builtin.textcraft.plugin:plugin",
        "babyai": "gymux.env_plugins.builtin.babyai.plugin:plugin",
        "sciworld": "gymux.env_plugins.builtin.sciworld.plugin:plugin",
        "textworld": "gymux.env_plugins.builtin.textworld.plugin:plugin",
        "sqlgym": "gymux.env_plugins.builtin.sqlgym.env:plugin",
    }
    # Every data file the built-in envs ship is in the wheel, byte for byte, and nothing else.
    local = {
        "gymux/env_plugins/" + path.relative_to(REPO / "env_plugins").as_posix(): path.read_bytes()
        for path in sorted((REPO / "env_plugins" / "builtin").glob("*/data/*"))
        if path.is_file()
    }
    assert "gymux/env_plugins/builtin/wordle/data/wordle_words.txt" in local
    assert data_files == local
    assert metadata["Name"] == "gymux"
    requires = {
        r.split(">")[0].split("=")[0].strip()
        for r in metadata.get_all("Requires-Dist")
        if "extra ==" not in r
    }
    assert requires == {"anyio", "aiohttp", "msgspec", "structlog", "google-crc32c"}


# -- the installed wheel ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_installed_imports_from_new_venv(venv: Venv) -> None:
    code = (
        "import json, gymux, gymux.env_plugins, gymux.policies, gymux.stores\n"
        "from importlib.resources import files\n"
        "words = files('gymux.env_plugins.builtin.wordle')"
        ".joinpath('data/wordle_words.txt').read_text()\n"
        "print(json.dumps({'files': [m.__file__ for m in (gymux, gymux.env_plugins,"
        " gymux.policies, gymux.stores)], 'words': len(words.split())}))\n"
    )
    proc = venv.run([str(venv.python), "-c", code])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for file in result["files"]:
        path = Path(file).resolve()
        assert path.is_relative_to(venv.purelib.resolve()), path
        assert not path.is_relative_to(REPO), path
    assert result["words"] > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_installed_console_script_lists_envs(venv: Venv) -> None:
    script = venv.bin / "gymux"
    assert script.exists()
    proc = venv.run([str(script), "envs"])
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.strip()}
    for env_id, spec in (("maze", MAZE_SPEC), ("wordle", WORDLE_SPEC)):
        splits = ", ".join(f"{n}={s.count}" for n, s in spec.splits.items())
        assert rows[env_id].endswith(splits), rows[env_id]

    proc = venv.run([str(script), "envs", "--json"])
    assert proc.returncode == 0, proc.stderr
    status = {row["id"]: row for row in json.loads(proc.stdout)}
    assert status["maze"]["source"] == "entry point gymux.env_plugins.builtin.maze.plugin:plugin"
    assert status["wordle"]["ok"] is True


def _check_run(proc: subprocess.CompletedProcess[str], out: Path, env: str, episodes: int) -> None:
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] == [env]]
    assert len(rows) == 1, proc.stdout
    assert rows[0][1:3] == ["oracle", str(episodes)]
    assert rows[0][3].endswith("%")
    assert "finish reasons:" in proc.stdout
    trajs = list(Store(out / "store", create=False).trajectories())
    assert len(trajs) == episodes
    assert {t.env_id for t in trajs} == {env}
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["env"], s["episodes"]) for s in summary] == [(env, episodes)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_installed_python_m_gymux_runs_maze(venv: Venv) -> None:
    out = venv.work / "maze-out"
    proc = venv.run(
        [
            str(venv.python),
            *("-m", "gymux", "run", "--env", "maze", "--policy", "oracle", "--tasks", "test"),
            *("--out",),
            str(out),
            *("--progress", "off"),
        ]
    )
    _check_run(proc, out, "maze", MAZE_SPEC.splits["test"].count)
    assert "100.0%" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_installed_console_script_runs_wordle(venv: Venv) -> None:
    out = venv.work / "wordle-out"
    proc = venv.run(
        [
            str(venv.bin / "gymux"),
            *("run", "--env", "wordle", "--policy", "oracle", "--limit", "5", "--out"),
            str(out),
            *("--progress", "off"),
        ]
    )
    _check_run(proc, out, "wordle", 5)


# -- the editable install of this checkout ---------------------------------------------


def test_editable_install_imports_from_checkout(tmp_path: Path) -> None:
    code = (
        "import json, gymux, gymux.env_plugins, gymux.policies, gymux.stores\n"
        "print(json.dumps([m.__file__ for m in (gymux, gymux.env_plugins, gymux.policies,"
        " gymux.stores)]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    files = [Path(f).resolve() for f in json.loads(proc.stdout)]
    assert files == [REPO / folder / "__init__.py" for folder in PACKAGES.values()]
    script = Path(sysconfig.get_path("scripts")) / "gymux"
    assert script.exists()


def test_editable_install_entry_points() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="gymux.envs")}
    assert eps.get("maze") == "gymux.env_plugins.builtin.maze.plugin:plugin"
    assert eps.get("wordle") == "gymux.env_plugins.builtin.wordle.plugin:plugin"
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("gymux") == "gymux.cli:console_main"
