"""Tailing a live stream: ``records(follow=True)`` against writers in other processes.

The "split writer" (tests/doubles/store_writer_proc.py) writes every frame, and every segment
header, with several raw ``os.write`` calls cut at arbitrary byte boundaries, so the reader
keeps finding partial frames at the tail; it seals and rolls segments the way
``StreamWriter`` does. The reader must yield every record exactly once, in order.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import gymux.stores.reader as reader_module
from gymux.stores.commit import read_commit
from gymux.stores.format import FrameStatus, index_name, list_segments, parse_index
from gymux.stores.reader import Record, StreamReader
from gymux.stores.sync_writer import StreamWriter

from doubles.store_writer_proc import payload_for, spawn


def _follow(path: Path, last_seq: int, start: int | None = None, **options: object) -> list[Record]:
    out = []
    for record in StreamReader(path).records(  # type: ignore[call-overload]
        start, follow=True, idle_timeout_s=20, poll_s=0.001, **options
    ):
        out.append(record)
        if record.seq >= last_seq:
            break
    return out


def _check(records: list[Record], seqs: range) -> None:
    assert [r.seq for r in records] == list(seqs)
    for r in records:
        assert r.payload == payload_for(r.seq), r.seq


@pytest.mark.parametrize(("seed", "segment_bytes"), [(1, 3000), (2, 40_000), (3, 1 << 24)])
def test_follow_a_writer_that_splits_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, segment_bytes: int
) -> None:
    path = tmp_path / "s"
    path.mkdir()
    n = 300
    truncated = [0]
    real_parse = reader_module.parse_frame

    def spy(buf: bytes, offset: int, end: int, max_len: int):  # type: ignore[no-untyped-def]
        result = real_parse(buf, offset, end, max_len)
        if result[0] is FrameStatus.TRUNCATED:
            truncated[0] += 1
        return result

    monkeypatch.setattr(reader_module, "parse_frame", spy)
    child = spawn("split", path, n, segment_bytes, seed)
    late: list[Record] = []
    # a second reader starts at a sequence number that is not written yet
    t = threading.Thread(target=lambda: late.extend(_follow(path, n - 1, start=n // 2)))
    t.start()
    try:
        records = _follow(path, n - 1)
        t.join(30)
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    _check(records, range(n))
    _check(late, range(n // 2, n))
    assert truncated[0] > 0, "the reader never saw a partial frame: the test tested nothing"
    segments = list_segments(path)
    if segment_bytes < 1 << 20:
        assert len(segments) > 3
    for first in segments[:-1]:
        assert parse_index((path / index_name(first)).read_bytes()) is not None
    # and a reader that starts now sees the same
    _check(list(StreamReader(path).records()), range(n))


def test_follow_real_writer_in_batch_mode_committed_only(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StreamWriter(path):  # create the stream (and its first segment)
        pass
    n = 3000
    child = spawn("batch", path, n, 20_000, 7)
    plain: list[Record] = []
    t = threading.Thread(target=lambda: plain.extend(_follow(path, n - 1)))
    t.start()
    committed = []
    beyond = []
    try:
        for record in StreamReader(path).records(
            follow=True, committed_only=True, idle_timeout_s=20, poll_s=0.001
        ):
            commit = read_commit(path)  # it only moves forward
            assert commit is not None
            if record.seq >= commit[0] or (record.next.segment, record.next.offset) > commit[1:]:
                beyond.append((record.seq, commit))
            committed.append(record)
            if record.seq >= n - 1:
                break
        t.join(30)
        assert child.stdout is not None
        assert child.stdout.read().split() == ["done", str(n)]
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert beyond == [], "committed_only yielded records past COMMIT"
    _check(committed, range(n))
    _check(plain, range(n))
    assert len(list_segments(path)) > 10


def test_follow_idle_timeout_counts_from_the_last_record(tmp_path: Path) -> None:
    """A slow consumer must not make ``follow`` give up right after a segment change: the
    idle time counts from the last record yielded."""
    path = tmp_path / "s"
    with StreamWriter(path, durability="always") as w:
        for seq in range(3):
            w.append(payload_for(seq))
        w._roll(3)  # the next segment exists, still empty
    appender_done = threading.Event()
    consumed = threading.Event()

    # The consumer is slower (3 x 1.2 s) than the idle timeout (3 s), and the appender's
    # record comes 0.3 s after the consumer asked for it: 2.7 s of slack for a busy machine.
    def append_later() -> None:
        consumed.wait(60)
        time.sleep(0.3)
        with StreamWriter(path, durability="always") as w2:
            w2.append(payload_for(3))
        appender_done.set()

    t = threading.Thread(target=append_later)
    t.start()
    got = []
    for record in StreamReader(path).records(follow=True, idle_timeout_s=3.0, poll_s=0.01):
        got.append(record.seq)
        time.sleep(1.2)  # a slow consumer: 3.6 s for the first three records
        if record.seq == 2:
            consumed.set()
        if record.seq == 3:
            break
    consumed.set()
    t.join()
    assert appender_done.is_set()
    assert got == [0, 1, 2, 3]


def test_follow_stops_on_event_and_idle(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StreamWriter(path) as w:
        w.append(b"a")
    reader = StreamReader(path)
    stop = threading.Event()
    stop.set()
    t0 = time.monotonic()
    assert [r.payload for r in reader.records(follow=True, stop=stop)] == [b"a"]
    assert [r.payload for r in reader.records(follow=True, idle_timeout_s=0.1)] == [b"a"]
    assert time.monotonic() - t0 < 60  # both stopped, neither followed forever
