"""``gymux store info|tail|verify|export|compact`` and the maintenance functions behind them
(gymux.stores.maintenance).

Stores are real directories written by a ``StreamWriter`` (many small segments) or by
``gymux run``; damage is made by flipping bytes and appending torn frames to the segment
files. Commands run in-process through ``gymux.cli.main.main`` and as ``python -m gymux``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gymux.messages import Message
from gymux.stores import RecordType, Store, StoreLockedError, StreamReader
from gymux.stores import maintenance as maint
from gymux.stores.codec import encode_trajectory, pack_float32, pack_int32, pack_uint8
from gymux.stores.format import (
    FRAME,
    SEGMENT_HEADER,
    FrameStatus,
    encode_frame,
    index_name,
    list_segments,
    parse_frame,
    parse_index,
    segment_name,
)
from gymux.stores.maintenance import DamagedStreamError, compact, store_info, verify
from gymux.trajectory import FinishReason, TokenData, Trajectory

pytestmark = pytest.mark.usefixtures("fresh_structlog")


# -- helpers ----------------------------------------------------------------------------


def make_trajectory(i: int, *, env: str = "maze", success: bool = True) -> Trajectory:
    n = 4 + i % 5
    return Trajectory(
        run_id="r",
        episode_id=f"r:{env}:{i}:0",
        env_id=env,
        env_version="1",
        task_id=i,
        split="test",
        sample=0,
        policy="scripted",
        policy_version="v1",
        messages=[
            Message(role="user", content=f"instruction {i} " + "x" * 300),
            Message(role="assistant", content="OK"),
            Message(role="user", content=f"obs {i}"),
            Message(role="assistant", content=f"act {i}", loss=True),
        ],
        reward=1.0 if success else 0.0,
        success=success,
        finish_reason=FinishReason.DONE if success else FinishReason.MAX_TURNS,
        policy_step=i,
        tokens=TokenData(
            ids=pack_int32(range(i, i + n)),
            loss_mask=pack_uint8([1] * n),
            logprobs=pack_float32([-0.5] * n),
        ),
    )


def write_store(path: Path, count: int, *, segment_bytes: int = 3072) -> Path:
    """``count`` trajectories (envs alternate maze/wordle; every 3rd fails) over many small
    segments."""
    with Store(path).writer(durability="os", segment_bytes=segment_bytes) as w:
        for i in range(count):
            env = "maze" if i % 2 == 0 else "wordle"
            w.append(
                encode_trajectory(make_trajectory(i, env=env, success=i % 3 != 0)),
                RecordType.TRAJECTORY,
            )
    return path


def records(stream: Path) -> list[tuple[int, int, bytes]]:
    return [(r.seq, r.type, r.payload) for r in StreamReader(stream).records()]


def frames(seg: Path) -> list[tuple[int, int, int]]:
    """``(seq, start, end)`` of each frame, walking the length fields (no checksums)."""
    data = seg.read_bytes()
    out = []
    offset = SEGMENT_HEADER.size
    while offset + FRAME.size <= len(data):
        _crc, length, seq, _t = FRAME.unpack_from(data, offset)
        out.append((seq, offset, offset + FRAME.size + length))
        offset += FRAME.size + length
    return out


def flip(seg: Path, at: int) -> None:
    data = bytearray(seg.read_bytes())
    data[at] ^= 0xFF
    seg.write_bytes(bytes(data))


def damage_middle_record(seg: Path, k: int = 1) -> tuple[int, int, int]:
    """Flip a payload byte of the k-th record of ``seg``; ``(seq, start, end)`` of it."""
    seq, start, end = frames(seg)[k]
    flip(seg, start + FRAME.size + (end - start - FRAME.size) // 2)
    return seq, start, end


def dir_listing(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "LOCK"}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "store", 30)


# -- info -------------------------------------------------------------------------------


def test_info(store: Path, inproc) -> None:
    stream = store / "trajectories"
    nseg = len(list_segments(stream))
    assert nseg > 5
    info = store_info(store)
    (s,) = info.streams
    assert (s.name, s.records, s.first_seq, s.last_seq, s.segments) == (
        "trajectories",
        30,
        0,
        29,
        nseg,
    )
    assert s.committed is not None and s.committed.next_seq == 30
    assert s.writer is None and s.tail_bytes == 0
    assert sum(seg.records for seg in s.segment_list) == 30
    assert all(seg.indexed for seg in s.segment_list[:-1])

    res = inproc(["store", "info", store, "--segments"])
    assert res.rc == 0 and res.err == ""
    assert f"stream trajectories: 30 records (seq 0-29), {nseg} segment(s)" in res.out
    assert "committed: next seq 30" in res.out and "writer: none" in res.out
    assert res.out.count(".seg  sealed") == nseg - 1 and res.out.count(".seg  active") == 1
    data = json.loads(inproc(["store", "info", store, "--json"]).out)
    assert data["streams"][0]["records"] == 30

    with Store(store).writer(durability="os") as w:
        res = inproc(["store", "info", store])
        assert f"writer: pid={os.getpid()}" in res.out
        w.append(b"x")
    assert store_info(store).streams[0].writer is None


# -- tail -------------------------------------------------------------------------------


def test_tail(store: Path, inproc) -> None:
    res = inproc(["store", "tail", store, "--n", "3"])
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split() == ["seq", "env", "task", "reward", "success", "finish"]
    assert [line.split() for line in lines[1:]] == [
        ["27", "wordle", "27", "0.000", "no", "max_turns"],
        ["28", "maze", "28", "1.000", "yes", "done"],
        ["29", "wordle", "29", "1.000", "yes", "done"],
    ]
    rows = [
        json.loads(x) for x in inproc(["store", "tail", store, "-n", "40", "--json"]).out.split()
    ]
    assert [r["seq"] for r in rows] == list(range(30))
    assert rows[0] == {
        "seq": 0,
        "env": "maze",
        "task_id": 0,
        "reward": 0.0,
        "success": False,
        "finish_reason": "max_turns",
        "episode_id": "r:maze:0:0",
        "policy": "scripted",
        "num_turns": 0,
    }


def test_tail_shows_each_member_of_a_group(tmp_path: Path, inproc) -> None:
    """An RL group is one record in the store; `store tail` lists its members, which share
    the group record's seq."""
    import anyio

    from gymux.stores.sink import StoreSink

    def member(i: int) -> Trajectory:
        return Trajectory(
            run_id="r",
            episode_id=f"g-{i}",
            env_id="maze",
            env_version="1",
            task_id=7,
            split="test",
            sample=i,
            policy="p",
            policy_version="1",
            group_id="g",
            group_size=3,
            reward=float(i == 1),
        )

    async def write() -> None:
        async with StoreSink(tmp_path / "s") as sink:
            await sink.write(member(9))
            await sink.write_group([member(i) for i in range(3)])

    anyio.run(write)
    rows = [
        json.loads(x)
        for x in inproc(["store", "tail", str(tmp_path / "s"), "-n", "10", "--json"]).out.split()
    ]
    assert [(r["seq"], r["episode_id"]) for r in rows] == [
        (0, "g-9"),
        (1, "g-0"),
        (1, "g-1"),
        (1, "g-2"),
    ]
    last = inproc(["store", "tail", str(tmp_path / "s"), "-n", "2"]).out.splitlines()
    assert [line.split()[:2] for line in last[1:]] == [["1", "maze"], ["1", "maze"]]


def test_tail_follow_in_a_subprocess(store: Path, child_env) -> None:
    """``gymux store tail --follow`` prints every trajectory exactly once, old and new, as a
    writer appends them, and exits 0 on Ctrl-C."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gymux",
            "store",
            "tail",
            str(store),
            "--follow",
            "--json",
            "--n",
            "100",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen: list[int] = []
    try:
        with Store(store).writer(durability="always") as w:
            for i in range(30, 36):
                w.append(encode_trajectory(make_trajectory(i)), RecordType.TRAJECTORY)
                time.sleep(0.02)
        deadline = time.monotonic() + 20
        while len(seen) < 36 and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.append(json.loads(lines.get(timeout=0.5))["seq"])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen == list(range(36))


# -- verify -----------------------------------------------------------------------------


def test_verify_clean(store: Path, inproc) -> None:
    assert verify(store).clean
    res = inproc(["store", "verify", store])
    assert res.rc == 0, res.out
    assert "stream trajectories:" in res.out and "30 valid records: clean" in res.out
    assert res.out.splitlines()[-1] == "result: clean"


def test_the_run_folder_finds_its_store(store: Path, inproc) -> None:
    """``gymux store verify runs/demo``: the run folder (OUT) stands for OUT/store."""
    run_folder = store.parent
    res = inproc(["store", "verify", run_folder])
    assert res.rc == 0, res.err
    assert res.out.splitlines()[0] == f"verify {store}"
    assert res.out.splitlines()[-1] == "result: clean"
    res = inproc(["store", "tail", "-n", "2", run_folder])
    assert res.rc == 0, res.err
    assert [line.split()[0] for line in res.out.splitlines()[1:]] == ["28", "29"]
    res = inproc(["store", "info", run_folder])
    assert res.rc == 0 and "30 records" in res.out, res.err


def test_tail_dash_n(store: Path, inproc) -> None:
    for flag in ("-n", "--n"):
        res = inproc(["store", "tail", flag, "1", store])
        assert res.rc == 0, res.err
        assert [line.split()[0] for line in res.out.splitlines()] == ["seq", "29"]


def test_verify_reports_every_damaged_range(store: Path, inproc) -> None:
    stream = store / "trajectories"
    firsts = list_segments(stream)
    segs = [stream / segment_name(f) for f in firsts]
    assert all(len(frames(seg)) == 3 for seg in segs[:-1])
    # three flipped records in two sealed segments, a damaged length field, a torn tail
    # of the active segment, and a missing index
    expected = set()
    for seg, k in ((segs[1], 1), (segs[3], 0), (segs[3], 2)):
        _seq, start, end = damage_middle_record(seg, k)
        if k < 2:
            expected.add((seg.name, "damaged", start, end))
        else:  # the last record of a sealed segment: nothing valid follows
            expected.add((seg.name, "torn-tail", start, end))
    _seq, start, end = frames(segs[2])[1]
    flip(segs[2], start + 5)  # the length field: bad length / checksum until the next frame
    expected.add((segs[2].name, "damaged", start, end))
    size = segs[-1].stat().st_size
    torn = encode_frame(99, RecordType.TRAJECTORY, b"t" * 100)[:60]
    with open(segs[-1], "ab") as fh:
        fh.write(torn)
    expected.add((segs[-1].name, "torn-tail", size, size + 60))
    (stream / index_name(firsts[4])).unlink()
    expected.add((index_name(firsts[4]), "missing-index", None, None))

    report = verify(store)
    assert not report.clean
    assert {(p.segment, p.kind, p.start, p.end) for p in report.problems} == expected

    res = inproc(["store", "verify", store])
    assert res.rc == 1
    for seg, kind, start, end in expected:
        if start is None:
            assert f"  {kind.upper():<22} trajectories/{seg}: " in res.out
        else:
            where = f"trajectories/{seg} bytes {start}-{end} ({end - start} bytes)"
            assert f"  {kind.upper():<22} {where}: " in res.out
    assert res.out.splitlines()[-1].startswith("result: DAMAGED (6 problem(s)")
    rep = json.loads(inproc(["store", "verify", store, "--json"]).out)
    assert rep["clean"] is False and len(rep["streams"][0]["problems"]) == 6


def test_verify_tail_of_a_live_writer_is_a_note(tmp_path: Path) -> None:
    store = write_store(tmp_path / "s", 3)
    stream = store / "trajectories"
    with Store(store).writer(durability="os"):
        seg = stream / segment_name(list_segments(stream)[-1])
        with open(seg, "ab") as fh:
            fh.write(b"\x01\x02\x03")  # a frame being written
        report = verify(store)
        assert report.clean, report.problems
        assert "a writer is active" in report.streams[0].notes[0]
        assert report.streams[0].writer is not None


# -- compact ----------------------------------------------------------------------------


def _check_indexes(stream: Path) -> None:
    firsts = list_segments(stream)
    for first in firsts[:-1]:
        index = parse_index((stream / index_name(first)).read_bytes())
        assert index is not None and index.first_seq == first
        data = (stream / segment_name(first)).read_bytes()
        fr = frames(stream / segment_name(first))
        assert index.count == len(fr) and index.end_offset == len(data) == fr[-1][2]
        assert index.next_seq == fr[-1][0] + 1
        assert index.entries and index.entries[0] == (fr[0][0], SEGMENT_HEADER.size)
        for seq, off in index.entries:
            status, got, _t, _p = parse_frame(data, off, len(data), 1 << 26)
            assert status is FrameStatus.OK and got == seq


def test_compact_merges_segments_and_keeps_every_record(store: Path, inproc) -> None:
    stream = store / "trajectories"
    before = records(stream)
    firsts = list_segments(stream)
    active = dir_listing(stream)[segment_name(firsts[-1])]
    res = inproc(["store", "compact", store, "--target-mb", "0.01"])  # ~10 KiB segments
    assert res.rc == 0, res.err
    after_firsts = list_segments(stream)
    assert 2 < len(after_firsts) < len(firsts) // 2
    assert f"compacted trajectories: {len(firsts)} -> {len(after_firsts)} segment(s)" in res.out
    assert records(stream) == before
    assert after_firsts[-1] == firsts[-1]
    assert dir_listing(stream)[segment_name(firsts[-1])] == active  # active kept as is
    assert all((stream / segment_name(f)).stat().st_size <= 10 * 1024 for f in after_firsts)
    _check_indexes(stream)
    assert verify(store).clean
    assert not [
        p
        for p in stream.iterdir()
        if p.suffix not in (".seg", ".idx") and p.name not in ("LOCK", "COMMIT")
    ]

    # everything into one sealed segment (the default target): readers, seek, a writer
    result = compact(store)
    assert (result.segments_before, result.segments_after) == (len(after_firsts), 2)
    assert result.records == 30 and result.dropped_bytes == 0
    assert records(stream) == before
    _check_indexes(stream)
    reader = StreamReader(stream)
    for seq in (0, 7, 13, 29):
        assert next(reader.records(seq)).seq == seq
    with Store(store).writer(durability="os") as w:
        assert w.append(b"more") == 30
    assert [r[0] for r in records(stream)] == list(range(31))
    assert [t.task_id for t in Store(store).trajectories(env="maze")] == list(range(0, 30, 2))
    assert verify(store).clean


def test_compact_refuses_while_a_writer_is_open(store: Path, inproc) -> None:
    stream = store / "trajectories"
    listing = dir_listing(stream)
    with Store(store).writer(durability="os"):
        with pytest.raises(StoreLockedError, match=f"a writer has it open .*pid={os.getpid()}"):
            compact(store)
        res = inproc(["store", "compact", store])
        assert res.rc == 1 and res.out == ""
        assert res.err.count("\n") == 1 and res.err.startswith("gymux: error: cannot compact")
    assert dir_listing(stream) == listing
    assert compact(store).segments_after == 2


def test_compact_salvage_drops_exactly_the_damaged_bytes(store: Path, inproc) -> None:
    stream = store / "trajectories"
    before = records(stream)
    segs = [stream / segment_name(f) for f in list_segments(stream)]
    bad_seq, start, end = damage_middle_record(segs[2], 1)
    listing = dir_listing(stream)

    with pytest.raises(DamagedStreamError, match="--salvage"):
        compact(store)
    res = inproc(["store", "compact", store])
    assert res.rc == 1 and res.err.count("\n") == 1 and "damaged range" in res.err
    assert dir_listing(stream) == listing  # nothing touched

    res = inproc(["store", "compact", store, "--salvage"])
    assert res.rc == 0, res.err
    assert f"salvage dropped 1 range(s), {end - start} bytes:" in res.out
    assert f"{segs[2].name} bytes {start}-{end} ({end - start}): checksum mismatch" in res.out
    assert records(stream) == [r for r in before if r[0] != bad_seq]
    _check_indexes(stream)
    assert verify(store).clean


def test_compact_salvage_api_counts_torn_sealed_tails(tmp_path: Path) -> None:
    store = write_store(tmp_path / "s", 12)
    stream = store / "trajectories"
    before = records(stream)
    seg = stream / segment_name(list_segments(stream)[1])
    last_seq, start, end = frames(seg)[-1]
    with open(seg, "r+b") as fh:
        fh.truncate(end - 7)  # the last record of a sealed segment is torn
    result = compact(store, salvage=True)
    assert result.dropped_bytes == end - 7 - start
    assert [(d.segment, d.start, d.end) for d in result.dropped] == [(seg.name, start, end - 7)]
    assert records(stream) == [r for r in before if r[0] != last_seq]
    assert verify(store).clean


def crash_compaction(store: Path, crash_at: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a compaction that "crashes" (raises) at its ``crash_at``-th rename."""
    real_replace = os.replace
    calls = 0

    def crashing_replace(src, dst):
        nonlocal calls
        calls += 1
        if calls == crash_at:
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        compact(store, target_bytes=8 * 1024)
    monkeypatch.setattr(os, "replace", real_replace)


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4, 6])
def test_compact_interrupted_is_finished_by_the_next_run(
    store: Path, crash_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash at the n-th rename of a compaction leaves every record recoverable; verify
    reports it and the next compact completes it."""
    stream = store / "trajectories"
    before = records(stream)
    crash_compaction(store, crash_at, monkeypatch)
    report = verify(store)
    kinds = {p.kind for p in report.problems}
    if crash_at > 1:  # the first rename is the manifest's own: nothing started yet
        assert "interrupted-compaction" in kinds
    result = compact(store, target_bytes=8 * 1024)
    assert result.resumed is (crash_at > 1)
    assert records(stream) == before
    _check_indexes(stream)
    assert verify(store).clean


@pytest.mark.parametrize("crash_at", [2, 4, 6])
def test_writer_open_finishes_an_interrupted_compaction(
    store: Path, crash_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer opened after a crashed compaction completes it before appending."""
    from gymux.stores.writer import StreamWriter

    stream = store / "trajectories"
    before = records(stream)
    crash_compaction(store, crash_at, monkeypatch)
    assert (stream / maint.MANIFEST).exists()
    with StreamWriter(stream) as w:
        assert w.next_seq == before[-1][0] + 1
        w.append(b"after")
    assert not (stream / maint.MANIFEST).exists()
    assert not [p for p in stream.iterdir() if p.name.endswith(".tmp")]
    assert records(stream)[:-1] == before
    assert verify(store).clean


def test_compact_moves_a_commit_that_points_into_a_merged_segment(tmp_path: Path) -> None:
    from gymux.stores.writer import encode_commit, read_commit

    store = write_store(tmp_path / "s", 12)
    stream = store / "trajectories"
    firsts = list_segments(stream)
    seq, start, _end = frames(stream / segment_name(firsts[2]))[1]
    (stream / "COMMIT").write_bytes(encode_commit(seq, firsts[2], start))
    compact(store)
    next_seq, segment, offset = read_commit(stream)
    assert (next_seq, segment) == (seq, firsts[0])
    status, got, _t, _p = parse_frame(
        (stream / segment_name(firsts[0])).read_bytes(), offset, 1 << 30, 1 << 26
    )
    assert status is FrameStatus.OK and got == seq
    assert [r.seq for r in StreamReader(stream).records(committed_only=True)] == list(range(seq))


# -- export via the CLI -----------------------------------------------------------------


def test_export_cli(store: Path, tmp_path: Path, inproc) -> None:
    out = tmp_path / "a.jsonl"
    res = inproc(
        [
            "store",
            "export",
            store,
            "--format",
            "agenttraj",
            "--out",
            out,
            "--env",
            "maze",
            "--success",
            "--min-policy-step",
            "10",
        ]
    )
    assert res.rc == 0, res.err
    want = [i for i in range(10, 30) if i % 2 == 0 and i % 3 != 0]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["item_id"] for r in rows] == [f"maze_{i}" for i in want]
    assert (
        res.out == f"exported {len(want)} trajectories (agenttraj) to {out} "
        f"({out.stat().st_size / 1024:.1f} KiB)\n"
    )
    assert rows[0]["conversations"][3] == {"from": "gpt", "value": f"act {want[0]}", "loss": True}

    res = inproc(["store", "export", store, "--format", "chat", "--out", "-", "--failed"])
    rows = [json.loads(x) for x in res.out.splitlines()]
    assert [r["task_id"] for r in rows] == list(range(0, 30, 3))
    assert all(r["success"] is False for r in rows)

    pq_out = tmp_path / "t.parquet"
    res = inproc(["store", "export", store, "--format", "parquet", "--out", pq_out])
    assert res.rc == 0, res.err
    table = pq.read_table(pq_out)
    assert table.column("seq").to_pylist() == list(range(30))
    assert table.column("token_ids")[5].as_py() == list(range(5, 5 + 4 + 5 % 5))


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "{tmp}/missing"], "no such store"),
        (["verify", "{store}/trajectories"], "no gymux store at"),
        (["verify", "{store}/trajectories"], "a gymux run keeps its store in OUT/store"),
        (["tail", "{store}", "--stream", "nope"], "no stream 'nope'"),
        (["compact", "{store}", "--stream", "bad/name"], "invalid stream name"),
        (["export", "{store}", "--format", "xml", "--out", "x"], "invalid choice: 'xml'"),
        (["export", "{store}", "--format", "chat"], "required: --out"),
        (["export", "{store}", "--format", "parquet", "--out", "-"], "Parquet cannot"),
        (["export", "{store}", "--format", "chat", "--out", "{tmp}/no/x"], "does not exist"),
        (
            ["export", "{store}", "--format", "chat", "--out", "x", "--success", "--failed"],
            "not allowed with",
        ),
        (["tail", "{store}", "--n", "-1"], "expected a number >= 0"),
        (["compact", "{store}", "--target-mb", "0"], "positive number of MiB"),
        (["compact", "{store}", "--target-mb", "0.00001"], "--target-mb: a segment must hold"),
        (["frobnicate", "{store}"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    store: Path, tmp_path: Path, inproc, args: list[str], message: str
) -> None:
    argv = [a.format(tmp=tmp_path, store=store) for a in args]
    res = inproc(["store", *argv])
    assert res.rc == 2, res
    assert res.out == ""
    assert res.err.count("\n") == 1 and res.err.startswith("gymux: error: "), res.err
    assert message in res.err


def test_verify_in_a_subprocess(store: Path, tmp_path: Path, run_gymux) -> None:
    stream = store / "trajectories"
    _seq, start, end = damage_middle_record(stream / segment_name(list_segments(stream)[1]))
    proc = run_gymux(["store", "verify", str(store)])
    assert proc.returncode == 1, proc.stderr
    assert f"bytes {start}-{end} ({end - start} bytes): checksum mismatch" in proc.stdout
    assert "  DAMAGED " in proc.stdout
    bad = run_gymux(["store", "info", str(tmp_path / "nothing")])
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == f"gymux: error: no such store: {tmp_path / 'nothing'}\n"
