"""Nothing ``gymux run`` counts as finished is ever lost: SIGKILL at random moments, then
``--resume``; an existing ``--out`` is refused; a full disk and a locked store are one line.

Real ``python -m gymux`` subprocesses, real SIGKILLs, a real 2 MiB tmpfs; stores read back
with the store reader.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gymux.env_plugins.builtin.wordle.plugin import WORDLE_SPEC
from gymux.stores import Store
from gymux.trajectory import FinishReason, Trajectory

from doubles.procs import reaped

TRAIN = WORDLE_SPEC.splits["train"].count
KILLS = 20


def stored(out: Path) -> list[Trajectory]:
    path = out / "store"
    if not (path / "STORE").exists():
        return []
    store = Store(path, create=False)
    return list(store.trajectories()) if "trajectories" in store.streams() else []


def finished_lines(events: Path) -> list[dict[str, object]]:
    """The ``episode_finished`` lines of an events file; a torn last line is ignored (the
    process was killed while writing it: nothing was reported by it)."""
    if not events.exists():
        return []
    lines = []
    for raw in events.read_bytes().split(b"\n"):
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if doc.get("type") == "episode_finished":
            lines.append(doc)
    return lines


def gymux_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "gymux", "run", "--progress", "off", *args]


def start_train_run(
    concurrency: int, until_finished: int, env: dict[str, str], cwd: Path
) -> tuple[subprocess.Popen[str], Path]:
    """Start a wordle ``train`` run (out: ``cwd/out``, events: ``cwd/events.jsonl``) and
    return it, still running, once ``until_finished`` episodes have finished."""
    out, events = cwd / "out", cwd / "events.jsonl"
    proc = subprocess.Popen(
        gymux_run("--env", "wordle", "--tasks", "train", "--concurrency", str(concurrency),
                  "--out", str(out), "--events", str(events)),
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while proc.poll() is None and len(finished_lines(events)) < until_finished:
            time.sleep(0.01)
        assert proc.poll() is None
    except BaseException:
        proc.kill()
        proc.communicate(timeout=120)
        raise
    return proc, out


def kill_after(cmd: list[str], events: Path, finished: int, env: dict[str, str], cwd: Path) -> int:
    """Start ``cmd``, SIGKILL it once ``events`` names ``finished`` finished episodes (or
    leave it when it ends first); returns its exit status."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    seen, offset = 0, 0
    try:
        while proc.poll() is None:
            if events.exists():
                with events.open("rb") as f:  # count only the new lines
                    f.seek(offset)
                    chunk = f.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                offset += len(complete)
                seen += complete.count(b'"type":"episode_finished"')
                if seen >= finished:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.002)
    finally:
        proc.wait(timeout=120)
    return proc.returncode


@pytest.mark.timeout(900)
def test_sigkill_never_loses_an_episode_reported_finished(
    tmp_path: Path, child_env: Callable[..., dict[str, str]]
) -> None:
    rng = random.Random(16)
    killed = reported_total = missing_total = duplicates_total = 0
    for i in range(KILLS):
        out, events = tmp_path / f"out{i}", tmp_path / f"events{i}.jsonl"
        threshold = rng.randint(1, 400)
        cmd = gymux_run(
            "--env", "wordle", "--tasks", "train", "--concurrency", "64",
            "--out", str(out), "--events", str(events),
        )  # fmt: skip
        rc = kill_after(cmd, events, threshold, child_env(), tmp_path)
        killed += rc == -signal.SIGKILL
        reported = {str(d["episode_id"]) for d in finished_lines(events)}
        ids = Counter(t.episode_id for t in stored(out))
        missing = reported - set(ids)
        reported_total += len(reported)
        missing_total += len(missing)
        duplicates_total += sum(n - 1 for n in ids.values())
        assert not missing, f"kill {i}: {len(missing)} episodes reported finished are lost"
        assert all(n == 1 for n in ids.values()), f"kill {i}: duplicated episodes"
    print(
        f"kills={killed} reported={reported_total} missing={missing_total} dup={duplicates_total}"
    )
    assert killed >= KILLS - 2, "the runs ended before they could be killed"
    assert reported_total >= KILLS  # every kill came after at least one reported episode


def test_existing_out_is_refused_without_resume_or_append(
    run_gymux: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["run", "--env", "wordle", "--tasks", "0-4", "--out", str(out), "--progress", "off"]
    assert run_gymux(args).returncode == 0
    before = stored(out)
    summary_before = (out / "summary.json").read_text()
    again = run_gymux(args)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [again.stderr.strip()]
    assert again.stderr.startswith("gymux: error: ") and "--resume" in again.stderr
    assert stored(out) == before and (out / "summary.json").read_text() == summary_before
    appended = run_gymux([*args, "--append"])
    assert appended.returncode == 0, appended.stderr
    assert len(stored(out)) == 2 * len(before)
    resumed = run_gymux([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert len(stored(out)) == 2 * len(before)  # nothing left to run


@pytest.mark.timeout(600)
def test_resume_after_sigkill_with_1000_in_flight_completes_exactly_once(
    tmp_path: Path, child_env: Callable[..., dict[str, str]]
) -> None:
    out, events = tmp_path / "out", tmp_path / "events.jsonl"
    common = ["--env", "wordle", "--tasks", "train", "--concurrency", "1000", "--out", str(out)]
    rc = kill_after(
        gymux_run(*common, "--events", str(events)), events, 1000, child_env(), tmp_path
    )
    assert rc == -signal.SIGKILL
    before = stored(out)
    assert 1000 <= len(before) < TRAIN
    reported = {str(d["episode_id"]) for d in finished_lines(events)}
    assert reported <= {t.episode_id for t in before}

    resumed = subprocess.run(
        gymux_run(*common, "--resume"), env=child_env(), cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    after = stored(out)
    keys = Counter((t.task_id, t.sample) for t in after)
    assert len(keys) == TRAIN  # 0 lost
    assert set(keys.values()) == {1}  # 0 duplicated
    assert after[: len(before)] == before  # the earlier episodes are kept as they were
    assert {t.finish_reason for t in after} == {FinishReason.DONE}
    (row,) = json.loads((out / "summary.json").read_text())
    assert row["episodes"] == TRAIN and row["ran"] == TRAIN - len(before)
    assert row["planned"] == TRAIN and row["success_rate"] == 1.0


# -- store errors: one line, exit 1, summary.json, no torn tail ------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (root only)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.timeout(600)
def test_disk_full_is_one_line_with_a_summary_and_no_torn_tail(
    tiny_disk: Path, run_gymux: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    out = tiny_disk / "out"
    res = run_gymux(
        ["run", "--env", "wordle", "--tasks", "train", "--out", str(out), "--progress", "off"],
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    # Besides the error line: the store writer thread's own log of its failure
    # (gymux.stores.sync_writer) and recovery's line saying exactly what it cut.
    said = res.stderr.strip().splitlines()
    cut = [x for x in said if "truncated torn tail" in x]
    lines = [x for x in said if "store writer failed" not in x and x not in cut]
    assert len(lines) == 1 and lines[0].startswith("gymux: error: "), res.stderr
    assert "No space left" in lines[0] and "Traceback" not in res.stderr
    trajs = stored(out)
    (row,) = json.loads((out / "summary.json").read_text())
    assert 0 < row["episodes"] == len(trajs) < TRAIN
    reader = Store(out / "store", create=False).reader()
    list(reader.records())
    assert reader.skipped_bytes == 0
    assert reader.committed()[0] == len(trajs)  # every record there is committed: no torn tail
    assert len(cut) <= 1 and all("dropped_bytes=" in x for x in cut)


def test_second_writer_on_a_locked_store_is_one_line(
    tmp_path: Path, child_env: Callable[..., dict[str, str]]
) -> None:
    first, out = start_train_run(2, 1, child_env(), tmp_path)
    try:
        second = subprocess.run(
            gymux_run("--env", "wordle", "--tasks", "0-3", "--out", str(out), "--append"),
            env=child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gymux: error: "), second.stderr
    assert "lock" in lines[0]
    # The first run's store and summary are its own.
    (row,) = json.loads((out / "summary.json").read_text())
    assert row["episodes"] == len(stored(out)) > 0
    assert os.path.getsize(out / "summary.json") > 0


# -- a model server that is down; interrupted runs ------------------------------------------


def test_a_model_server_that_is_down_is_one_line_before_anything_is_written(
    run_gymux: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = run_gymux(
        ["run", "--env", "wordle", "--tasks", "0-3", "--policy", "openai", "--model", "m",
         "--base-url", "http://127.0.0.1:9", "--out", str(out), "--progress", "off"]
    )  # fmt: skip
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gymux: error: cannot reach the openai")
    assert "http://127.0.0.1:9" in lines[0]
    assert not out.exists()  # no empty store left behind


@pytest.mark.parametrize("policy", ["sglang", "vllm"])
def test_a_token_exact_server_that_is_down_is_one_line(
    policy: str, run_gymux: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    from doubles.sglang_double import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(tmp_path / "tok")
    out = tmp_path / "out"
    res = run_gymux(
        ["run", "--env", "maze", "--tasks", "0-1", "--policy", policy,
         "--server", "http://127.0.0.1:9", "--tokenizer", str(tokenizer),
         "--out", str(out), "--progress", "off"]
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gymux: error: cannot reach the {policy}")
    assert "http://127.0.0.1:9" in lines[0]
    assert not out.exists()


def test_a_run_where_no_episode_finished_normally_exits_non_zero(
    run_gymux: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """A server that answers (its port is open) but fails every request."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    port = server.getsockname()[1]
    stop = threading.Event()

    def answer_500() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n"
                    b"Connection: close\r\n\r\nno"
                )

    thread = threading.Thread(target=answer_500, daemon=True)
    thread.start()
    out = tmp_path / "out"
    try:
        res = run_gymux(
            ["run", "--env", "wordle", "--tasks", "0-1", "--policy", "openai", "--model", "m",
             "--base-url", f"http://127.0.0.1:{port}", "--out", str(out), "--progress", "off"],
            timeout=120,
        )  # fmt: skip
    finally:
        stop.set()
        server.close()
    assert res.returncode == 1, res.stderr
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith("gymux: error: no episode finished normally (policy_error=2)")
    )
    (row,) = json.loads((out / "summary.json").read_text())
    assert row["finish_reasons"] == {"policy_error": 2}


def test_an_interrupted_run_leaves_cancelled_episodes_out_of_the_success_rate(
    tmp_path: Path, child_env: Callable[..., dict[str, str]]
) -> None:
    proc, out = start_train_run(64, 5, child_env(), tmp_path)
    with reaped(proc):
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
    (row,) = json.loads((out / "summary.json").read_text())
    cancelled = row["finish_reasons"].get("cancelled", 0)
    assert cancelled > 0 and row["cancelled"] == cancelled
    assert row["success_rate"] == 1.0  # the oracle solved every episode it finished
    assert "cancelled episode(s) are not in the success rate" in stdout
