"""A third-party plugin written against docs/plugin-authoring.md keeps working unmodified.

The package below is frozen: it is what a plugin author wrote following the guide (its env,
spec, parser, oracle and plugin object are the guide's code, plus a blocking flavour run in
worker processes). It is pip-installed into a folder of its own, and the ``gymux`` console
script must list it and run it, as the guide promises. Change gymux, never this package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gymux.stores import Store

from doubles.procs import clean_env

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "coinflip-gymux"
version = "0.1.0"
dependencies = ["gymux"]

[project.entry-points."gymux.envs"]
coinflip = "coinflip_gymux:plugin"
coinflip-blocking = "coinflip_gymux.blocking:plugin"

[tool.setuptools]
packages = ["coinflip_gymux"]
"""

ENV_MODULE = '''\
"""Coin flip for gymux, written from docs/plugin-authoring.md."""

from gymux.env_plugins import (
    ActionParseError,
    EnvPlugin,
    EnvSpec,
    Observation,
    StepResult,
    SuccessRule,
    Task,
    parse_react_action,
    splits_from,
)
from gymux.policies import PolicyRequest, PolicyResponse, SimplePolicy, react


class CoinFlipEnv:  # async flavour: must never block the event loop
    async def reset(self, task: Task) -> Observation:
        self.target = "heads" if task.id % 2 == 0 else "tails"
        return Observation(
            text="Guess the coin: heads or tails?", admissible_actions=["heads", "tails"]
        )

    async def step(self, action: str) -> StepResult:
        won = action == self.target
        return StepResult(
            observation=Observation(text="Right!" if won else "Wrong."),
            reward=1.0 if won else 0.0,
            done=True,
            info={"target": self.target},
        )

    async def close(self) -> None:
        pass


SPEC = EnvSpec(
    id="coinflip",
    version="1",
    instruction=(
        "You are playing coin flip. Each turn answer in the format\\n"
        "Thought:\\n<your reasoning>\\n\\nAction:\\n<heads or tails>"
    ),
    action_format="Action: heads | tails",
    splits=splits_from({"train": range(0, 1000), "test": range(1000, 1100)}),
    max_turns=1,
    reward_range=(0.0, 1.0),
    success=SuccessRule(threshold=1.0),
    example_actions=["heads", "tails"],
)


def parse_coin(text: str) -> str:
    action = parse_react_action(text).lower()
    if action not in ("heads", "tails"):
        raise ActionParseError(f'"{action}" is not an action; answer "heads" or "tails"')
    return action


class CoinOracle(SimplePolicy):
    name, version = "oracle", "coinflip-1"

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        side = "heads" if request.task_id % 2 == 0 else "tails"
        return PolicyResponse(text=react("I know the answer.", side))


plugin = EnvPlugin(
    SPEC,
    CoinFlipEnv,
    execution="async",
    parse_action=parse_coin,
    oracle=CoinOracle,
    max_instances=64,
)
'''

BLOCKING_MODULE = '''\
"""The same game as a blocking env, run in worker processes."""

import time

import msgspec

from gymux.env_plugins import EnvPlugin, Observation, StepResult, Task

from coinflip_gymux import SPEC, CoinOracle, parse_coin


class BlockingCoinFlipEnv:  # blocking flavour: plain methods
    def reset(self, task: Task) -> Observation:
        time.sleep(0.001)
        self.target = "heads" if task.id % 2 == 0 else "tails"
        return Observation(
            text="Guess the coin: heads or tails?", admissible_actions=["heads", "tails"]
        )

    def step(self, action: str) -> StepResult:
        won = action == self.target
        return StepResult(
            observation=Observation(text="Right!" if won else "Wrong."),
            reward=1.0 if won else 0.0,
            done=True,
            info={"target": self.target},
        )

    def close(self) -> None:
        pass


plugin = EnvPlugin(
    msgspec.structs.replace(SPEC, id="coinflip-blocking"),
    BlockingCoinFlipEnv,
    execution="process",
    parse_action=parse_coin,
    oracle=CoinOracle,
    max_instances=2,
)
'''

CONFORMANCE_TEST = """\
import anyio
from gymux.env_plugins.conformance import check_plugin
from coinflip_gymux import plugin

report = anyio.run(check_plugin, plugin)
assert report.ok, report.problems
print("conformance ok")
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package, pip-installed (no deps, gymux comes from the test venv) into a
    folder that only the subprocesses below put on their path."""
    root = tmp_path_factory.mktemp("third-party")
    src = root / "src"
    (src / "coinflip_gymux").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "coinflip_gymux" / "__init__.py").write_text(ENV_MODULE)
    (src / "coinflip_gymux" / "blocking.py").write_text(BLOCKING_MODULE)
    site = root / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "coinflip_gymux" / "__init__.py").exists()
    return site


def gymux(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "gymux"
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=clean_env(PYTHONPATH=str(site)),
    )


@pytest.mark.slow
def test_gymux_envs_lists_the_plugin(installed: Path, tmp_path: Path) -> None:
    proc = gymux(installed, "envs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert "coinflip" in rows and "coinflip-blocking" in rows, proc.stdout
    assert "BROKEN" not in rows["coinflip"] and "BROKEN" not in rows["coinflip-blocking"]
    assert rows["coinflip"].rstrip().endswith("train=1000, test=100"), rows["coinflip"]

    proc = gymux(installed, "envs", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    status = {row["id"]: row for row in json.loads(proc.stdout)}
    assert status["coinflip"]["ok"] is True
    assert status["coinflip"]["source"] == "entry point coinflip_gymux:plugin"
    assert status["coinflip-blocking"]["ok"] is True


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "policy", "tasks", "episodes"),
    [
        ("coinflip", "oracle", "test", 100),
        ("coinflip", "random", "0-19", 20),
        ("coinflip-blocking", "oracle", "0-9", 10),
    ],
)
def test_gymux_run_runs_the_plugin(
    installed: Path, tmp_path: Path, env: str, policy: str, tasks: str, episodes: int
) -> None:
    out = tmp_path / "out"
    proc = gymux(
        installed,
        *("run", "--env", env, "--policy", policy, "--tasks", tasks),
        *("--out", str(out), "--progress", "off"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trajectories = list(Store(out / "store", create=False).trajectories())
    assert len(trajectories) == episodes
    assert {t.env_id for t in trajectories} == {env}
    assert all(t.finish_reason == "done" for t in trajectories)
    if policy == "oracle":
        assert all(t.success for t in trajectories)
        assert "100.0%" in proc.stdout


@pytest.mark.slow
def test_the_guides_conformance_test_passes(installed: Path, tmp_path: Path) -> None:
    script = tmp_path / "test_conformance.py"
    script.write_text(textwrap.dedent(CONFORMANCE_TEST))
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(installed)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "conformance ok" in proc.stdout
