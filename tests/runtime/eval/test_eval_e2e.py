"""End-to-end ``gymux eval`` runs: SIGKILL halfway and resume, a model policy served by the
SGLang test double with induced failures, and oracle expert data exported as AgentTraj."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gymux.cli.main import main
from gymux.eval.run import read_store
from gymux.trajectory import FinishReason

SUITE = """\
name = "kill-test"
split = "test"
samples = 2

[[envs]]
id = "maze"
max_turns = 15

[[envs]]
id = "wordle"
max_turns = 8
"""
EPISODES = (26 + 100) * 2


@pytest.mark.slow
def test_sigkill_halfway_then_resume_equals_uninterrupted(
    tmp_path: Path,
    child_env: Callable[..., dict[str, str]],
    triple_counts: Callable[[Path], Counter[tuple[str, int, int]]],
    without_wall: Callable[[Path], str],
) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "gymux", "eval", "--suite", str(suite), "--policy"]

    def eval_cmd(out: Path, concurrency: int) -> list[str]:
        return [
            *cmd(out),
            "oracle",
            "--out",
            str(out),
            "--concurrency",
            str(concurrency),
        ]

    full = tmp_path / "full"
    done = subprocess.run(
        eval_cmd(full, 16), env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        eval_cmd(out, 2),
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        seen = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "store").exists():
                try:
                    seen = len(read_store(out))
                except Exception:  # the writer may be creating the first segment
                    seen = 0
                if seen >= EPISODES // 4:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the eval finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = triple_counts(out)
    assert EPISODES // 4 <= sum(before.values()) < EPISODES
    assert set(before.values()) == {1}
    assert not (out / "report.json").exists()

    resumed = subprocess.run(
        eval_cmd(out, 16), env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    match = re.search(r"episodes run: (\d+), already done: (\d+)", resumed.stdout)
    assert match, resumed.stdout
    ran, skipped = int(match[1]), int(match[2])
    # Nothing finished before the kill runs again; only the rest runs.
    assert skipped == sum(before.values()) and ran + skipped == EPISODES
    after = triple_counts(out)
    assert len(after) == EPISODES and set(after.values()) == {1}
    assert without_wall(out / "report.json") == without_wall(full / "report.json")
    # Metrics tables carry no wall time: the Markdown reports are identical too.
    assert (out / "report.md").read_text() == (full / "report.md").read_text()


# --------------------------------------------------------------------------- SGLang double


class _DoubleThread:
    """The SGLang test double on its own event loop in a thread, so the CLI's own
    ``anyio.run`` can drive a real client against it from the test thread."""

    def __init__(self, double: object) -> None:
        self.double = double
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> _DoubleThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.double.start(), self.loop).result(30)  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.double.stop(), self.loop).result(30)  # type: ignore[attr-defined]
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


@pytest.fixture
def sglang_double(tmp_path: Path) -> Iterator[tuple[str, Path, object]]:
    from gymux.policies.tokens import ChatTokenizer

    from doubles.sglang_double import SGLangDouble, build_tiny_tokenizer

    tok_dir = build_tiny_tokenizer(tmp_path / "tok")
    tok = ChatTokenizer.from_dir(tok_dir)
    answer = tok.encode("Thought: I should go up.\nAction: move up")
    eos = tok.eos_id
    assert eos is not None

    def model(ids: list[int]) -> list[int]:
        return [*answer, eos]

    double = SGLangDouble(model, decode=tok.decode, eos_id=eos, context_length=1 << 20)
    with _DoubleThread(double):
        yield double.url, tok_dir, double


def test_smoke_suite_against_sglang_double_counts_induced_errors(
    tmp_path: Path,
    sglang_double: tuple[str, Path, object],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, tok_dir, double = sglang_double
    suite = tmp_path / "smoke.toml"
    from gymux.eval.suite import BUILTIN_SUITES

    # The built-in smoke suite, with retries off so every injected failure costs exactly
    # one episode (the policy's retry path has tests of its own).
    text = BUILTIN_SUITES["smoke"].replace(
        "samples = 1\n", "samples = 1\n\n[sampling]\nretries = 0\n", 1
    )
    assert "retries = 0" in text
    suite.write_text(text)
    double.fail_next("http500", 2)  # type: ignore[attr-defined]
    double.fail_next("malformed", 1)  # type: ignore[attr-defined]
    out = tmp_path / "ev"
    args = [
        "eval",
        "--suite",
        str(suite),
        "--policy",
        "sglang",
        "--server",
        url,
        *("--tokenizer", str(tok_dir)),
        "--max-tokens",
        "32",
        "--out",
        str(out),
    ]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    overall = report["overall"]
    reasons = overall["finish_reasons"]
    assert sum(reasons.values()) == overall["episodes"]
    assert reasons.get("policy_error") == 3
    assert set(reasons) <= {"done", "max_turns", "policy_error"}
    for env in report["envs"]:
        assert sum(env["finish_reasons"].values()) == env["episodes"]
    # Every other episode used real tokens from the double; policy errors are in the table.
    assert overall["completion_tokens"] > 0
    trajs = read_store(out)
    errors = [t for t in trajs if t.finish_reason == FinishReason.POLICY_ERROR]
    assert len(errors) == 3 and all(t.error for t in errors)
    assert "policy_error=3" in (out / "report.md").read_text()

    # The report says the error episodes rerun on resume.
    assert "reruns them" in (out / "report.md").read_text()
    # Resuming with --keep-errors runs nothing; without it, the three policy errors (the
    # server failed, the model was not measured) run again, and only they.
    capsys.readouterr()
    assert main([*args, "--keep-errors"]) == 0
    assert "episodes run: 0" in capsys.readouterr().out
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert re.search(r"episodes run: 3, already done: (\d+)", printed), printed
    again = json.loads((out / "report.json").read_text())
    assert "policy_error" not in again["overall"]["finish_reasons"]
    assert again["overall"]["episodes"] == overall["episodes"]
    # With --rerun-failures every failed triple runs again.
    assert main([*args, "--rerun-failures"]) == 0
    printed = capsys.readouterr().out
    ran = int(re.search(r"episodes run: (\d+)", printed)[1])  # type: ignore[index]
    assert ran == again["overall"]["episodes"] - again["overall"]["successes"]


# --------------------------------------------------------------------------- expert data


def test_oracle_on_train_split_exports_agenttraj(tmp_path: Path) -> None:
    suite = tmp_path / "expert.toml"
    suite.write_text(
        'name = "expert"\nsplit = "train"\ntasks = 5\n'
        '[[envs]]\nid = "maze"\nmax_turns = 15\n[[envs]]\nid = "wordle"\nmax_turns = 8\n'
    )
    out = tmp_path / "expert"
    assert main(["eval", "--suite", str(suite), "--policy", "oracle", "--out", str(out)]) == 0
    trajs = read_store(out)
    assert len(trajs) == 10
    assert all(t.split == "train" and t.success for t in trajs)
    dest = tmp_path / "agenttraj.jsonl"
    assert (
        main(["store", "export", str(out / "store"), "--format", "agenttraj", "--out", str(dest)])
        == 0
    )
    rows = [json.loads(line) for line in dest.read_text().splitlines()]
    assert len(rows) == 10
    for row in rows:
        conv = row["conversations"]
        assert conv[0]["from"] == "human" and conv[1]["from"] == "gpt"
        assert [c["from"] for c in conv[2:]] == ["human", "gpt"] * ((len(conv) - 2) // 2)
        assert "Action:" in conv[-1]["value"]
    assert {r["item_id"].split("_")[0] for r in rows} == {"maze", "wordle"}


def test_bad_model_policy_option_is_one_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "bad.toml"
    suite.write_text('name = "bad"\ntasks = 1\n[sampling]\nbogus = 1\n[[envs]]\nid = "maze"\n')
    out = tmp_path / "ev"
    args = ["eval", "--suite", str(suite), "--policy", "sglang", "--out", str(out)]
    code = main([*args, "--server", "http://127.0.0.1:9", "--tokenizer", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "gymux: error: policy 'sglang'" in err
    assert "Traceback" not in err
