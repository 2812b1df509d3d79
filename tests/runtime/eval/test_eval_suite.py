"""Eval suites (gymux.eval.suite): parsing, errors that name the key, and the built-in suites
shipped as package data."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from gymux.env_plugins.registry import default_registry
from gymux.eval.suite import BUILTIN_SUITES, SuiteError, load_suite, parse_suite


def test_suite_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"\$\.envs\[0\]\.max_turns"):
        parse_suite('name = "x"\n[[envs]]\nid = "maze"\nmax_turns = "many"\n')
    with pytest.raises(SuiteError, match="samples"):
        parse_suite('name = "x"\nsamples = 0\n[[envs]]\nid = "maze"\n')
    with pytest.raises(SuiteError, match="unknown field `turns`"):
        parse_suite('name = "x"\n[[envs]]\nid = "maze"\nturns = 3\n')
    with pytest.raises(SuiteError, match="envs"):
        parse_suite('name = "x"\n')
    with pytest.raises(SuiteError, match="no suite"):
        load_suite(str(tmp_path / "missing.toml"))
    for name in BUILTIN_SUITES:
        assert load_suite(name).name == name
    budgets = {e.id: e.max_turns for e in load_suite("agenteval-offline").envs}
    # AgentGym's per-environment turn budgets.
    assert budgets == {
        "maze": 15,
        "lmrl-wordle": 8,  # AgentGym's Wordle; gymux's own `wordle` is another game
        "textcraft": 20,
        "babyai": 20,
        "sciworld": 30,
        "sqlgym": 1,
        "textworld": 30,
    }
    # Every built-in suite names only installed envs, and smoke covers all of them.
    smoke = {e.id for e in load_suite("smoke").envs}
    builtin = {env for env in default_registry().ids() if "/" not in env}  # not bridges
    assert smoke == set(budgets) | {"wordle"} == builtin


def test_builtin_suites_are_package_data() -> None:
    folder = resources.files("gymux.eval").joinpath("suites")
    files = sorted(p.name for p in folder.iterdir() if p.name.endswith(".toml"))
    assert files == ["agenteval-offline.toml", "smoke.toml"]
    assert list(BUILTIN_SUITES) == ["smoke", "agenteval-offline"]
    for name, text in BUILTIN_SUITES.items():
        assert folder.joinpath(f"{name}.toml").read_text(encoding="utf-8") == text
        assert load_suite(name) == parse_suite(text, source=name)
    with pytest.raises(SuiteError, match=r"built in: smoke, agenteval-offline; or a \.toml path"):
        load_suite("nosuch")
