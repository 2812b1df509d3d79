"""``gymux eval`` (gymux.cli.eval): the smoke suite with the oracle, resuming, bad suites,
and SIGINT/SIGTERM (exit 130, finished episodes kept, a second run resumes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gymux.cli.common import EXIT_INTERRUPTED
from gymux.cli.main import main
from gymux.eval.run import read_store
from gymux.eval.suite import load_suite
from gymux.runtime import RunHandle, Runtime


def test_cli_bad_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--suite", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gymux: error: no suite 'nope'")


def test_smoke_oracle_is_perfect_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ev"
    assert main(["eval", "--suite", "smoke", "--policy", "oracle", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    suite = load_suite("smoke")
    sizes = {e.id: suite.env_tasks(e) for e in suite.envs}
    for env, n in sizes.items():
        assert f"| {env} | {n} | 100.0%" in printed, printed
    report = json.loads((out / "report.json").read_text())
    assert [e["env"] for e in report["envs"]] == list(sizes)
    assert {e["success_rate"] for e in report["envs"]} == {1.0}
    assert all(e["finish_reasons"] == {"done": e["episodes"]} for e in report["envs"])
    md, js = (out / "report.md").read_text(), (out / "report.json").read_text()
    before = len(read_store(out))
    assert before == sum(sizes.values())
    assert main(["eval", "--suite", "smoke", "--policy", "oracle", "--out", str(out)]) == 0
    assert f"episodes run: 0, already done: {before}" in capsys.readouterr().out
    assert len(read_store(out)) == before
    assert (out / "report.md").read_text() == md
    assert (out / "report.json").read_text() == js
    # Another policy into the same folder is refused in one line.
    assert main(["eval", "--suite", "smoke", "--policy", "random", "--out", str(out)]) == 2


def test_a_signal_stops_the_eval_with_130_and_a_second_run_resumes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    triple_counts: Callable[[Path], Any],
) -> None:
    """SIGINT arrives in-process once the eval's workload is submitted: the eval exits 130
    without a traceback, the finished episodes are kept, and running it again finishes
    every triple exactly once."""
    suite = tmp_path / "maze.toml"
    suite.write_text('name = "m"\n[[envs]]\nid = "maze"\nmax_turns = 15\n')  # 26 tasks
    out = tmp_path / "ev"
    args = ["eval", "--suite", str(suite), "--policy", "oracle", "--out", str(out)]
    args += ["--concurrency", "1"]
    submit = Runtime.submit

    async def submit_then_interrupt(self: Runtime, *args: Any, **kwargs: Any) -> RunHandle:
        handle = await submit(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return handle

    monkeypatch.setattr(Runtime, "submit", submit_then_interrupt)
    assert main(args) == EXIT_INTERRUPTED
    captured = capsys.readouterr()
    assert "gymux: interrupted; finished episodes were saved (run again to resume)" in captured.err
    assert "Traceback" not in captured.err
    done = sum(triple_counts(out).values())
    assert done < 26
    monkeypatch.undo()
    assert main(args) == 0
    assert f"episodes run: {26 - done}, already done: {done}" in capsys.readouterr().out
    assert set(triple_counts(out).values()) == {1} and len(triple_counts(out)) == 26


def test_sigterm_keeps_finished_episodes(
    tmp_path: Path,
    child_env: Callable[..., dict[str, str]],
    triple_counts: Callable[[Path], Any],
) -> None:
    """A real ``python -m gymux eval`` killed by SIGTERM, then resumed: every triple is
    finished exactly once and the report equals an uninterrupted run's."""
    suite = tmp_path / "two.toml"
    suite.write_text(
        'name = "two"\n[[envs]]\nid = "maze"\nmax_turns = 15\n'
        '[[envs]]\nid = "wordle"\nmax_turns = 8\n'
    )
    out = tmp_path / "ev"
    cmd = [
        sys.executable,
        "-m",
        "gymux",
        "eval",
        "--suite",
        str(suite),
        "--policy",
        "oracle",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Ready once the store exists (the signal handlers are set before it opens); the
    # deadline only stops a hung child, it is no speed assertion.
    deadline = time.monotonic() + 120
    while not (out / "store").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the eval never opened its store"
        time.sleep(0.01)
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode in (0, 130)
    done = subprocess.run(
        cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    counts = triple_counts(out)
    assert len(counts) == 26 + 100 and set(counts.values()) == {1}
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["success_rate"] == 1.0 and report["overall"]["episodes"] == 126
