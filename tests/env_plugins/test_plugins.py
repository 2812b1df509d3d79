"""Plugin registry (entry points, programmatic registration) and conformance checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint

import anyio
import pytest

from gymux.env_plugins import EnvPlugin, EnvSpec, Task, splits_from
from gymux.env_plugins.conformance import check_plugin
from gymux.env_plugins.registry import ENTRY_POINT_GROUP, PluginError, Registry, default_registry

from doubles import envs as E


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def test_installed_entry_points_provide_the_builtin_envs():
    reg = Registry()
    assert {"maze", "wordle"} <= set(reg.ids())
    maze = reg.get("maze")
    assert maze.spec.split("test").count == 26
    assert reg.get("wordle").execution.value == "thread"


def test_broken_entry_points_are_reported_and_do_not_affect_others(tmp_path, monkeypatch):
    pkg = tmp_path / "badplugs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "raises.py").write_text("raise RuntimeError('kaboom at import')\n")
    (pkg / "wrongtype.py").write_text("plugin = 42\n")
    (pkg / "wrongid.py").write_text(
        textwrap.dedent(
            """
            from gymux.env_plugins.builtin.maze.env import MazeEnv
            from gymux.env_plugins.builtin.maze.plugin import MAZE_SPEC
            from gymux.env_plugins import EnvPlugin
            import msgspec
            plugin = EnvPlugin(msgspec.structs.replace(MAZE_SPEC, id="other"), MazeEnv)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry(entry_points_group=None)
    reg.add_entry_points(
        [
            ep("missing", "no_such_module_xyz:plugin"),
            ep("raises", "badplugs.raises:plugin"),
            ep("wrongtype", "badplugs.wrongtype:plugin"),
            ep("wrongid", "badplugs.wrongid:plugin"),
            ep("maze", "gymux.env_plugins.builtin.maze.plugin:plugin"),
        ]
    )
    with pytest.raises(PluginError, match=r"'missing'.*no_such_module_xyz"):
        reg.get("missing")
    with pytest.raises(PluginError, match=r"'raises'.*kaboom at import.*raises\.py:1"):
        reg.get("raises")
    with pytest.raises(PluginError, match=r"'wrongtype'.*expected an EnvPlugin, got int"):
        reg.get("wrongtype")
    with pytest.raises(PluginError, match=r"'wrongid'.*spec id 'other'"):
        reg.get("wrongid")
    assert reg.get("maze").id == "maze"
    rows = {row.id: row for row in reg.status()}
    assert rows["maze"].ok and rows["maze"].splits == {"test": 26, "train": 64}
    assert not rows["raises"].ok and "kaboom" in rows["raises"].error
    assert sum(not r.ok for r in rows.values()) == 4
    # errors are sticky and cheap: asking again gives the same error without re-importing
    with pytest.raises(PluginError, match="kaboom"):
        reg.get("raises")


def test_programmatic_registration_and_validation():
    reg = Registry(entry_points_group=None)
    reg.register(E.plugin(E.AsyncProbe))
    assert reg.ids() == ["probe"]
    with pytest.raises(PluginError, match="already registered"):
        reg.register(E.plugin(E.AsyncProbe))
    reg.register(E.plugin(E.SyncProbe, "thread"), replace=True)
    assert reg.get("probe").execution.value == "thread"
    with pytest.raises(PluginError, match="no task splits"):
        reg.register(
            EnvPlugin(
                EnvSpec(
                    id="x", version="1", instruction="i", action_format="a", splits={}, max_turns=3
                ),
                E.AsyncProbe,
            )
        )
    with pytest.raises(PluginError, match="duplicate task ids"):
        reg.register(
            EnvPlugin(
                EnvSpec(
                    id="y",
                    version="1",
                    instruction="i",
                    action_format="a",
                    splits=splits_from({"test": [1, 1]}),
                    max_turns=3,
                ),
                E.AsyncProbe,
            )
        )
    with pytest.raises(PluginError, match="not installed"):
        reg.get("nothing")


def test_envplugin_rejects_bad_arguments():
    with pytest.raises(TypeError, match="EnvSpec"):
        EnvPlugin({"id": "x"}, E.AsyncProbe)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="execution"):
        EnvPlugin(E.SPEC, E.AsyncProbe, execution="gpu")
    with pytest.raises(ValueError, match="max_instances"):
        EnvPlugin(E.SPEC, E.AsyncProbe, max_instances=0)


def test_external_plugin_package_installed_via_entry_points_is_discovered(tmp_path):
    """A real third-party distribution (dist-info with entry_points.txt) on sys.path."""
    site = tmp_path / "site"
    (site / "extplug").mkdir(parents=True)
    (site / "extplug" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from gymux.env_plugins import EnvPlugin, EnvSpec, Observation, StepResult, splits_from

            class Echo:
                async def reset(self, task):
                    return Observation(text=f"echo {task.id}")
                async def step(self, action):
                    return StepResult(observation=Observation(text=action), reward=1.0, done=True)
                async def close(self):
                    pass

            plugin = EnvPlugin(
                EnvSpec(id="echo", version="0.1", instruction="Echo.", action_format="Action: x",
                        splits=splits_from({"test": range(3)}), max_turns=2,
                        example_actions=["hi"]),
                Echo,
            )
            """
        )
    )
    dist = site / "extplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: extplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[gymux.envs]\necho = extplug:plugin\n")
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        from gymux.cli.main import main
        sys.exit(main(["run", "--env", "echo", "--policy", "random", "--out",
                       {str(tmp_path / "out")!r}, "--progress", "off"]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "echo" in proc.stdout and "100.0%" in proc.stdout
    envs = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(site)!r}); "
            "from gymux.cli.main import main; sys.exit(main(['envs']))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "echo" in envs.stdout and "test=3" in envs.stdout


@pytest.mark.parametrize("env_id", ["maze", "wordle"])
def test_builtin_envs_pass_conformance(env_id):
    plugin = default_registry().get(env_id)
    report = anyio.run(check_plugin, plugin)
    assert report.ok, report.problems
    assert report.oracle_episodes == 3 and report.oracle_successes == 3


@pytest.mark.parametrize(
    ("factory", "mode"),
    [(E.AsyncProbe, "async"), (E.SyncProbe, "thread"), (E.ProcessProbe, "process")],
)
def test_probe_env_passes_conformance_in_every_execution_mode(factory, mode):
    report = anyio.run(
        lambda: check_plugin(E.plugin(factory, mode), oracle_tasks=[Task(id=0), Task(id=1)])
    )
    assert report.ok, report.problems
    assert report.oracle_successes == 2


def test_conformance_catches_a_broken_env():
    class Nondeterministic(E.AsyncProbe):
        n = 0

        async def reset(self, task):
            obs = await super().reset(task)
            Nondeterministic.n += 1
            return type(obs)(text=f"{obs.text} #{Nondeterministic.n}")

    report = anyio.run(check_plugin, E.plugin(Nondeterministic))
    assert not report.ok
    assert any("deterministic" in p for p in report.problems)

    class BadReward(E.AsyncProbe):
        async def step(self, action):
            result = await super().step(action)
            return type(result)(observation=result.observation, reward=7.0, done=False)

    report = anyio.run(check_plugin, E.plugin(BadReward))
    assert any("reward" in p and "in range" in p for p in report.problems)
