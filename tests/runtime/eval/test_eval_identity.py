"""What an eval folder holds is that eval's: the policy identity is pinned (a changed model or
sampling option refuses to resume, naming what changed), a ``gymux run`` store is refused, a
failed start writes nothing, and reports name the model and say what was not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gymux.cli.main import main
from gymux.env_plugins.registry import default_registry
from gymux.errors import ConfigError, SuiteError
from gymux.eval.metrics import compute_metrics
from gymux.eval.report import markdown_table, write_reports
from gymux.eval.run import EvalRun, plan_eval, policy_identity, run_eval
from gymux.eval.suite import parse_suite
from gymux.trajectory import FinishReason, Trajectory

SUITE = 'name = "id"\ntasks = 2\n[[envs]]\nid = "maze"\nmax_turns = 15\n'


def pin(out: Path, identity: dict[str, object]) -> None:
    """Make ``out`` an eval whose manifest pins ``identity`` (as a model eval writes it)."""
    doc = json.loads((out / "eval.json").read_text())
    doc["identity"] = identity
    (out / "eval.json").write_text(json.dumps(doc))


def test_identity_names_model_and_sampling_not_transport() -> None:
    opts = {
        "base_url": "http://h:1/v1",
        "model": "qwen-7b",
        "temperature": 0.7,
        "max_tokens": 64,
        "max_concurrency": 8,
        "api_key_env": "K",
    }
    got = policy_identity("openai", opts, {"model_path": "/m/qwen"})
    assert got == {
        "policy": "openai",
        "model": "qwen-7b",
        "temperature": 0.7,
        "max_tokens": 64,
        "prompt_format": "react",
        "server_model_path": "/m/qwen",
    }
    assert policy_identity("oracle", {}) == {"policy": "oracle"}


def test_a_changed_model_or_temperature_refuses_naming_what_changed(tmp_path: Path) -> None:
    suite = parse_suite(SUITE)
    run_eval(suite, "oracle", tmp_path)
    pin(tmp_path, {"policy": "oracle", "model": "a", "temperature": 0.0})
    with pytest.raises(ConfigError, match=r"model: 'a' -> 'unset'; temperature: 0.0 -> 'unset'"):
        EvalRun(suite, "oracle", tmp_path)
    pin(tmp_path, {"policy": "oracle"})
    assert EvalRun(suite, "oracle", tmp_path).pending is False  # the same identity resumes


def test_cli_refuses_another_model_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    out = tmp_path / "ev"
    assert main(["eval", "--suite", str(suite), "--out", str(out)]) == 0
    pin(out, {"policy": "oracle", "model": "model-a"})
    capsys.readouterr()
    assert main(["eval", "--suite", str(suite), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith("gymux: error: ")
    assert "model: 'model-a' -> 'unset'" in err


def test_eval_refuses_a_gymux_run_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    assert (
        main(["run", "--env", "maze", "--tasks", "0-1", "--out", str(out), "--progress", "off"])
        == 0
    )
    capsys.readouterr()
    assert main(["eval", "--suite", str(suite), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "not a gymux eval" in err
    assert not (out / "eval.json").exists() and not (out / "report.json").exists()


def test_a_failed_start_writes_no_manifest(tmp_path: Path) -> None:
    bad = parse_suite('name = "id"\nsplit = "tset"\n[[envs]]\nid = "maze"\n')
    with pytest.raises(SuiteError, match="no split 'tset'"):
        EvalRun(bad, "oracle", tmp_path / "ev")
    assert not (tmp_path / "ev" / "eval.json").exists()
    # Nor does building an EvalRun that could start: only running it does.
    EvalRun(parse_suite(SUITE), "oracle", tmp_path / "ok")
    assert not (tmp_path / "ok" / "eval.json").exists()
    run_eval(parse_suite(SUITE), "oracle", tmp_path / "ok")
    assert json.loads((tmp_path / "ok" / "eval.json").read_text())["identity"] == {
        "policy": "oracle"
    }


def _traj(env: str, task: int, reason: FinishReason, success: bool = False) -> Trajectory:
    return Trajectory(
        run_id="r", episode_id=f"r:{env}:{task}:0", env_id=env, env_version="1", task_id=task,
        split="test", sample=0, policy="p", policy_version="1", finish_reason=reason,
        success=success, reward=float(success),
    )  # fmt: skip


def test_error_episodes_are_not_done_on_resume_unless_kept() -> None:
    suite = parse_suite(SUITE)
    existing = [
        _traj("maze", 0, FinishReason.POLICY_ERROR),
        _traj("maze", 1, FinishReason.DONE, success=True),
    ]
    registry = default_registry()
    plan = plan_eval(suite, registry, existing)
    assert (plan.todo["maze"], plan.skipped) == ([("maze", 0, 0)], 1)
    kept = plan_eval(suite, registry, existing, keep_errors=True)
    assert (kept.todo["maze"], kept.skipped) == ([], 2)


def test_cancelled_are_not_rated_and_envs_not_run_say_so(tmp_path: Path) -> None:
    trajs = [
        _traj("maze", 0, FinishReason.DONE, success=True),
        _traj("maze", 1, FinishReason.CANCELLED),
    ]
    metrics = compute_metrics(trajs, envs=["maze", "wordle"])
    maze = metrics.envs[0]
    assert (maze.episodes, maze.success_rate) == (1, 1.0)
    table = "\n".join(markdown_table(metrics))
    wordle_row = next(line for line in table.splitlines() if line.startswith("| wordle"))
    assert "not run" in wordle_row and "0.0%" not in wordle_row
    write_reports(tmp_path, "s", "oracle", metrics)
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["not_run"] == ["wordle"]
    assert "Not run (no finished episode yet): wordle." in (tmp_path / "report.md").read_text()
