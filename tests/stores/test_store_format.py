"""The store's framing and the writer's guarantees, on real files.

Framing units (masking, frames, headers, indexes), the store written by format 1 (kept in
tests/data/store-format1), oversized records, one writer per stream (in this process and
across processes), fatal fsync errors, the durability modes and ``committed_only``,
backpressure, and the async writer under many concurrent producers.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from gymux.messages import Message
from gymux.sinks import read_jsonl
from gymux.stores import Store
from gymux.stores.async_writer import AsyncStreamWriter
from gymux.stores.codec import decode_meta, pack_float32, pack_int32, pack_uint8
from gymux.stores.commit import read_commit
from gymux.stores.errors import RecordTooLargeError, StoreClosedError, StoreLockedError
from gymux.stores.format import (
    FORMAT_VERSION,
    FRAME,
    SEGMENT_HEADER,
    FrameStatus,
    IndexData,
    RecordType,
    crc32c,
    encode_frame,
    encode_index,
    encode_segment_header,
    find_next_frame,
    index_name,
    list_segments,
    mask,
    parse_frame,
    parse_index,
    parse_segment_header,
    segment_name,
    unmask,
)
from gymux.stores.reader import StreamReader
from gymux.stores.sync_writer import StreamWriter
from gymux.trajectory import FinishReason, TokenData, Trajectory, Turn

from doubles.store_writer_proc import SCRIPT, payload_for, spawn
from doubles.trajectories import make_trajectory

DATA = Path(__file__).parent / "data"
MAX = 1 << 20

# -- masking and frames ----------------------------------------------------------------------


def test_mask_round_trip_and_is_not_identity() -> None:
    rng = random.Random(0)
    values = [0, 1, 0xFFFFFFFF, 0xA282EAD8, 0x80000000, *(rng.getrandbits(32) for _ in range(2000))]
    for v in values:
        assert unmask(mask(v)) == v
        assert mask(unmask(v)) == v
        assert 0 <= mask(v) <= 0xFFFFFFFF
    assert sum(mask(v) == v for v in values) == 0
    # masking changes the checksum of data that itself holds checksums
    assert mask(crc32c(b"")) != crc32c(b"") and mask(0) != 0


def test_crc32c_known_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


def test_zero_frames_never_parse() -> None:
    for n in range(0, 300):
        status = parse_frame(bytes(n), 0, n, MAX)[0]
        assert status is not FrameStatus.OK, n
        assert status in (FrameStatus.END, FrameStatus.TRUNCATED, FrameStatus.BAD_CRC), n
    assert find_next_frame(bytes(8192), -1, 8192, MAX) is None
    # the masked CRC of an all-zero header is not zero, so zeros can't checksum
    assert mask(crc32c(bytes(FRAME.size - 4))) != 0
    # even with a valid checksum, type 0 is never accepted
    body = struct.pack("<IQB", 0, 0, 0)
    frame = struct.pack("<I", mask(crc32c(body))) + body
    assert parse_frame(frame, 0, len(frame), MAX)[0] is FrameStatus.BAD_TYPE


def test_frame_round_trip_and_statuses() -> None:
    payload = b"hello store"
    frame = encode_frame(42, RecordType.TRAJECTORY, payload)
    assert len(frame) == FRAME.size + len(payload)
    buf = b"xx" + frame + frame
    assert parse_frame(buf, 2, len(buf), MAX) == (FrameStatus.OK, 42, 2, payload)
    assert parse_frame(buf, len(buf), len(buf), MAX)[0] is FrameStatus.END
    for cut in range(1, len(frame)):
        assert parse_frame(frame[:cut], 0, cut, MAX)[0] is FrameStatus.TRUNCATED
    # over the bound: a length field running past the data, or failing its checksum, is a
    # bad length; a complete frame with a valid checksum is a record (of a writer with a
    # larger max_record_bytes)
    small = len(payload) - 1
    assert parse_frame(frame[:-1], 0, len(frame) - 1, small)[0] is FrameStatus.BAD_LENGTH
    bad = frame[:-1] + b"?"
    assert parse_frame(bad, 0, len(bad), small)[0] is FrameStatus.BAD_LENGTH
    assert parse_frame(bad, 0, len(bad), MAX)[0] is FrameStatus.BAD_CRC
    assert parse_frame(frame, 0, len(frame), small)[0] is FrameStatus.OK
    assert parse_frame(encode_frame(1, 1, b""), 0, FRAME.size, MAX)[1:] == (1, 1, b"")
    # find_next_frame resynchronises on the next valid frame
    junk = b"\x00\x01garbage" + frame
    assert find_next_frame(junk, 0, len(junk), MAX) == 9
    # each header field is covered by the checksum
    for i in range(FRAME.size):
        bad = bytearray(frame)
        bad[i] ^= 0x10
        assert parse_frame(bytes(bad), 0, len(bad), MAX)[0] is not FrameStatus.OK


def test_segment_header_round_trip() -> None:
    head = encode_segment_header(1234, 99)
    assert len(head) == SEGMENT_HEADER.size
    assert parse_segment_header(head) == (FORMAT_VERSION, 1234, 99)
    assert parse_segment_header(head[:-1]) is None
    assert parse_segment_header(bytes(32)) is None
    for i in range(len(head)):
        bad = bytearray(head)
        bad[i] ^= 1
        assert parse_segment_header(bytes(bad)) is None
    assert segment_name(7) == "00000000000000000007.seg"
    assert index_name(7) == "00000000000000000007.idx"


def test_index_round_trip_and_damage() -> None:
    index = IndexData(100, 50, 9000, 150, 1024, [(100, 32), (110, 1100), (130, 2300)])
    data = encode_index(index)
    back = parse_index(data)
    assert back is not None
    assert (back.first_seq, back.count, back.end_offset, back.next_seq, back.interval) == (
        100,
        50,
        9000,
        150,
        1024,
    )
    assert back.entries == index.entries
    assert back.floor(99) == (100, SEGMENT_HEADER.size)
    assert back.floor(100) == (100, 32)
    assert back.floor(129) == (110, 1100)
    assert back.floor(10_000) == (130, 2300)
    for cut in range(len(data)):
        assert parse_index(data[:cut]) is None
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x80
        assert parse_index(bytes(bad)) is None


# -- the store written by format 1 -----------------------------------------------------------

FORMAT1 = DATA / "store-format1"


def format1_trajectories() -> list[Trajectory]:
    """The trajectories tests/data/store-format1 holds (written with store format 1 and
    trajectory schema 2 by :func:`write_format1_fixture`)."""
    out = []
    for i in range(6):
        env = "maze" if i % 2 == 0 else "wordle"
        n_turns = i % 3 + 1
        turns = [
            Turn(
                index=k,
                observation=f"obs {i}.{k}",
                raw_output=f"Thought: step {k}\n\nAction:\nmove up",
                action="move up" if k != 1 else None,
                reward=1.0 if k == n_turns - 1 and i % 2 == 0 else 0.0,
                done=k == n_turns - 1,
                parse_error=None if k != 1 else "no action",
                policy_s=0.25 * k,
                env_s=0.125,
                prompt_tokens=100 + k,
                completion_tokens=10 + k,
                policy_finish="stop" if k else "length",
            )
            for k in range(n_turns)
        ]
        messages = [Message(role="user", content=f"task {i} " + "instructions " * 20)]
        for t in turns:
            messages.append(Message(role="assistant", content=t.raw_output, loss=True))
            messages.append(Message(role="user", content=t.observation))
        tokens = None
        if i % 3 != 0:
            ids = [(i * 1000 + k) % 50_000 for k in range(40 + i)]
            tokens = TokenData(
                ids=pack_int32(ids),
                loss_mask=pack_uint8([k % 2 for k in range(len(ids))]),
                logprobs=pack_float32([-0.5 * (k % 4) for k in range(len(ids))]) if i % 2 else None,
                tokenizer="tok-a" if i % 2 else "",
            )
        reasons = list(FinishReason)
        out.append(
            make_trajectory(
                schema_version=2,  # the fixture's records were written by schema 2
                run_id="run-format1",
                env=env,
                task=i,
                policy="oracle",
                policy_version="v1",
                messages=messages,
                turns=turns,
                reward=1.0 if i % 2 == 0 else 0.0,
                success=i % 2 == 0,
                finish_reason=reasons[i % len(reasons)],
                error=None if i % 2 == 0 else f"error {i}",
                attempts=1 + i % 2,
                invalid_actions=int(n_turns > 1),
                started_at=1_790_000_000.5 + i,
                wall_s=0.75 * i,
                policy_step=None if i < 2 else 10 * i,
                tokens=tokens,
            )
        )
    return out


def write_format1_fixture(path: Path) -> None:
    """How tests/data/store-format1 was made (once, by store format 1). Never rerun to
    "fix" the test: the point is that today's reader reads yesterday's files."""
    from gymux.stores.codec import encode_trajectory

    store = Store(path)
    with store.writer(durability="always", segment_bytes=4000, index_interval=512) as w:
        for t in format1_trajectories():
            w.append(encode_trajectory(t), RecordType.TRAJECTORY)
    (path / "trajectories" / "LOCK").unlink()


def test_reads_store_written_by_format_1(tmp_path: Path) -> None:
    files = [p for p in FORMAT1.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 50_000
    assert (FORMAT1 / "STORE").exists() and (FORMAT1 / "trajectories" / "COMMIT").exists()
    expected = format1_trajectories()
    store = Store(FORMAT1, create=False)
    assert store.streams() == ["trajectories"]
    assert list(store.trajectories()) == expected
    assert list(store.trajectories(committed_only=True)) == expected
    assert list(store.trajectories(success=True)) == [t for t in expected if t.success]
    assert list(store.trajectories(env="wordle", min_policy_step=20)) == [
        t for t in expected if t.env_id == "wordle" and (t.policy_step or 0) >= 20
    ]
    reader = store.reader()
    segments = reader.segments()
    assert len(segments) >= 2, "the fixture should hold a sealed segment with its index"
    assert all((FORMAT1 / "trajectories" / index_name(f)).exists() for f in segments[:-1])
    records = list(reader.records())
    assert [r.seq for r in records] == list(range(len(expected)))
    assert {r.type for r in records} == {RecordType.TRAJECTORY}
    metas = [decode_meta(r.payload) for r in records]
    assert [m.episode_id for m in metas] == [t.episode_id for t in expected]
    assert [m.num_tokens for m in metas] == [t.tokens.length if t.tokens else 0 for t in expected]
    assert reader.seek(3).seq == 3 and next(reader.records(3)).seq == 3
    assert read_commit(FORMAT1 / "trajectories") == (
        len(expected),
        segments[-1],
        reader.end().offset,
    )
    # a current writer appends to the old store
    copy = tmp_path / "store"
    shutil.copytree(FORMAT1, copy)
    store = Store(copy)
    with store.writer(durability="always") as w:
        assert w.next_seq == len(expected)
        assert w.recovered_tail_bytes == 0
        w.append(b"new", RecordType.DATA)
    assert [r.seq for r in store.reader().records()] == list(range(len(expected) + 1))
    assert list(store.trajectories()) == expected


def test_reader_refuses_a_newer_store_format(tmp_path: Path) -> None:
    (tmp_path / "STORE").write_text('{"format": "gymux-store", "version": 999}\n')
    with pytest.raises(Exception, match="newer"):
        Store(tmp_path)


def test_reads_trajectories_of_schema_1() -> None:
    trajectories = list(read_jsonl(DATA / "trajectories-schema1.jsonl"))
    assert len(trajectories) == 5
    for t in trajectories:
        assert t.schema_version == 1
        assert t.tokens is None  # added in schema 2: defaults
        assert t.policy_step is None
        assert t.turns and all(turn.policy_finish == "stop" for turn in t.turns)
        assert t.messages and t.env_id in ("maze", "wordle")
    assert sum(t.success for t in trajectories) == 3
    assert trajectories[0].turns[0].action is not None


# -- oversized records -----------------------------------------------------------------------


def test_record_too_large_is_rejected_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StreamWriter(path, max_record_bytes=1000, durability="always") as w:
        w.append(b"a" * 1000)
        size = (path / segment_name(0)).stat().st_size
        with pytest.raises(RecordTooLargeError) as info:
            w.append(b"b" * 1001)
        message = str(info.value)
        assert "1,001" in message and "1,000" in message and "max_record_bytes" in message
        assert isinstance(info.value, ValueError)
        assert w.next_seq == 1
        w.flush()
        assert (path / segment_name(0)).stat().st_size == size
        assert w.append(b"c") == 1
    assert [r.payload[:1] for r in StreamReader(path).records()] == [b"a", b"c"]


def test_records_over_a_smaller_bound_are_never_dropped(tmp_path: Path) -> None:
    """max_record_bytes is a setting, not part of the format: a stream reopened with a
    smaller bound must still read, and never truncate, a durable record over it."""
    path = tmp_path / "s"
    with StreamWriter(path, max_record_bytes=5000, durability="always") as w:
        w.append(b"a" * 100)
        w.append(b"b" * 4000)  # the last record: where recovery truncates torn tails
    reader = StreamReader(path, max_record_bytes=1000)
    assert [len(r.payload) for r in reader.records()] == [100, 4000]
    with StreamWriter(path, max_record_bytes=1000) as w:
        assert w.recovered_tail_bytes == 0 and w.next_seq == 2
        with pytest.raises(RecordTooLargeError):
            w.append(b"c" * 4000)
        w.append(b"c" * 10)
    assert [len(r.payload) for r in StreamReader(path).records()] == [100, 4000, 10]


# -- one writer per stream -------------------------------------------------------------------


def test_second_writer_in_the_same_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    first = StreamWriter(path).open()
    try:
        with pytest.raises(StoreLockedError, match=f"pid={os.getpid()}"):
            StreamWriter(path).open()
        with pytest.raises(StoreLockedError):
            StreamWriter(path).open()  # still refused; the failed tries don't break the lock
        first.append(b"x")
    finally:
        first.close()
    with StreamWriter(path) as second:
        assert second.next_seq == 1


def test_second_writer_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    child = spawn("hold", path, stdin=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline().split()
        assert line == ["ready", str(child.pid)]
        with pytest.raises(StoreLockedError) as info:
            StreamWriter(path).open()
        assert f"pid={child.pid}" in str(info.value)
        child.stdin.close()
        assert child.stdout.readline().strip() == "closed"
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with StreamWriter(path) as w:  # released on close
        assert w.next_seq == 1
    # a SIGKILLed holder releases the lock too (flock dies with the process)
    child = spawn("hold", path, stdin=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split()[0] == "ready"
        with pytest.raises(StoreLockedError, match=f"pid={child.pid}"):
            StreamWriter(path).open()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with StreamWriter(path) as w:
        assert w.next_seq == 2
        # and a subprocess is refused while this process holds the stream
        out = subprocess.run(
            [sys.executable, str(SCRIPT), "hold", str(path)],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode != 0
        assert "StoreLockedError" in out.stderr and f"pid={os.getpid()}" in out.stderr


# -- fsync failure ---------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["batch", "always"])
def test_fsync_failure_is_fatal_and_never_retried(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "s"
    w = StreamWriter(path, durability=durability, sync_interval_s=0.005)  # type: ignore[arg-type]
    w.open()
    try:
        w.append(b"before")
        w.flush(timeout=10)
        calls: list[int] = []

        def failing(fd: int) -> None:
            calls.append(fd)
            raise OSError(errno.EIO, "injected I/O error")

        w._fdatasync = failing
        with pytest.raises(StoreClosedError, match="injected"):
            seq = w.append(b"lost?")
            w.wait_durable(seq, timeout=10)
        with pytest.raises(StoreClosedError):
            w.append(b"after")
        with pytest.raises(StoreClosedError):
            w.flush(timeout=10)
        time.sleep(0.05)
        assert len(calls) == 1
    finally:
        with contextlib.suppress(StoreClosedError):
            w.close()
    assert len(calls) == 1, "a failed fsync must never be retried (not even by close)"
    # the stream can be reopened by a new writer (its recovery decides what survived)
    with StreamWriter(path, durability="always") as w2:
        assert w2.next_seq >= 1
        w2.append(b"again")
    payloads = [r.payload for r in StreamReader(path).records()]
    assert payloads[0] == b"before" and payloads[-1] == b"again"


def test_fsync_failure_at_close_is_reported_and_leaks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    fds = len(os.listdir("/proc/self/fd"))
    w = StreamWriter(path, durability="os").open()
    w.append(b"x")
    calls = []

    def failing(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "injected")

    w._fdatasync = failing
    with pytest.raises(StoreClosedError, match="injected"):
        w.close()
    assert len(calls) == 1
    assert len(os.listdir("/proc/self/fd")) == fds, "segment or lock file descriptor leaked"
    with StreamWriter(path) as w2:
        assert w2.next_seq == 1


@pytest.mark.anyio
async def test_async_fsync_failure(tmp_path: Path) -> None:
    async with AsyncStreamWriter(tmp_path / "s", durability="always") as aw:
        await aw.append(b"ok")
        calls = []

        def failing(fd: int) -> None:
            calls.append(fd)
            raise OSError(errno.EIO, "injected")

        aw.writer._fdatasync = failing
        with pytest.raises(StoreClosedError):
            await aw.append(b"x")
        with pytest.raises(StoreClosedError):
            await aw.append(b"y")
    assert len(calls) == 1


# -- durability modes ------------------------------------------------------------------------


def _committed(path: Path) -> list[int]:
    return [r.seq for r in StreamReader(path).records(committed_only=True)]


def test_always_mode_append_returns_durable_and_committed(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StreamWriter(path, durability="always", segment_bytes=600) as w:
        for i in range(60):
            seq = w.append(payload_for(i, 200))
            assert seq == i
            assert w.durable_seq >= seq
            commit = read_commit(path)
            assert commit is not None and commit[0] > seq, (seq, commit)
            assert _committed(path)[-1] == seq
        assert w.syncs >= 60
        assert w.segments_rolled > 3


def test_batch_mode_durable_within_sync_interval(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StreamWriter(path, durability="batch", sync_interval_s=0.05, sync_bytes=1 << 30) as w:
        for _ in range(5):
            seq = w.append(b"x" * 100)
            appended = time.monotonic()
            while w.durable_seq < seq:
                # without a flush or close: a bound, not a speed assertion
                assert time.monotonic() - appended < 30, "never durable without a flush"
                time.sleep(0.002)
            # COMMIT follows once the waiter is woken: allow the writer thread a moment
            deadline = time.monotonic() + 30
            while _committed(path)[-1:] != [seq]:
                assert time.monotonic() < deadline
                time.sleep(0.002)
        assert w.syncs >= 5
    # sync_bytes triggers a sync long before a (huge) interval
    path = tmp_path / "b"
    with StreamWriter(path, durability="batch", sync_interval_s=3600, sync_bytes=2000) as w:
        for _ in range(30):
            seq = w.append(b"y" * 100)
        deadline = time.monotonic() + 30  # a bound, not a speed assertion
        while w.durable_seq < 15:
            assert time.monotonic() < deadline, "sync_bytes did not trigger a sync"
            time.sleep(0.002)


def test_batch_mode_committed_only_stops_at_commit(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StreamWriter(path, durability="batch", sync_interval_s=3600, sync_bytes=1 << 30) as w:
        w.append(b"first")
        w.flush()
        assert _committed(path) == [0]
        for i in range(1, 20):
            w.append(b"later %d" % i)
        deadline = time.monotonic() + 30  # a bound, not a speed assertion
        while len(list(StreamReader(path).records())) < 20:  # written (os level) ...
            assert time.monotonic() < deadline
            time.sleep(0.002)
        assert _committed(path) == [0]  # ... but not committed
        assert w.durable_seq == 0
        w.flush()
        assert _committed(path) == list(range(20))


def test_os_mode_visible_without_fsync(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StreamWriter(path, durability="os") as w:
        calls = []
        w._fdatasync = lambda fd: calls.append(fd)
        for i in range(50):
            w.append(b"%d" % i)
        deadline = time.monotonic() + 30  # a bound, not a speed assertion
        while len(list(StreamReader(path).records())) < 50:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        assert calls == [] and w.syncs == 0
    assert len(calls) == 1  # close syncs once
    assert [r.payload for r in StreamReader(path).records()] == [b"%d" % i for i in range(50)]


def test_committed_only_reader_never_passes_commit(tmp_path: Path) -> None:
    path = tmp_path / "s"
    stop = threading.Event()
    violations: list[str] = []
    reads = [0]

    def reader() -> None:
        r = StreamReader(path)
        while not stop.is_set():
            records = list(r.records(committed_only=True))
            commit = read_commit(path)  # the commit only moves forward
            if records:
                assert commit is not None
                last = records[-1]
                if last.seq >= commit[0] or (last.next.segment, last.next.offset) > commit[1:]:
                    violations.append(f"{last} beyond {commit}")
                if [x.seq for x in records] != list(range(len(records))):
                    violations.append("gap or duplicate")
            reads[0] += 1

    with StreamWriter(path, durability="batch", sync_interval_s=0.003, segment_bytes=4000) as w:
        t = threading.Thread(target=reader)
        t.start()
        try:
            for i in range(3000):
                w.append(payload_for(i, 100))
                if i % 100 == 0:
                    time.sleep(0.002)
        finally:
            stop.set()
            t.join()
    assert reads[0] > 5
    assert violations == []


# -- backpressure ----------------------------------------------------------------------------


def test_backpressure_bounds_pending_bytes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    frame = 500 + FRAME.size
    bound = 8 * frame - 12  # 7 frames + one more payload fit, 8 frames don't
    w = StreamWriter(
        path,
        durability="batch",
        sync_bytes=1,  # sync after every batch ...
        max_pending_bytes=bound,
        max_record_bytes=600,
    )
    assert w.max_pending_bytes == bound
    w.open()
    real = w._fdatasync

    def slow(fd: int) -> None:  # ... and make each sync slow
        time.sleep(0.01)
        real(fd)

    w._fdatasync = slow
    seen = [0]
    batches = []
    write_batch = w._write_batch

    def spy(batch: list[tuple[int, bytes, bytes]]) -> int:
        batches.append(sum(len(h) + len(p) for _, h, p in batch))
        return write_batch(batch)

    w._write_batch = spy  # type: ignore[method-assign]
    stop = threading.Event()

    def monitor() -> None:
        while not stop.is_set():
            with w._cond:
                seen[0] = max(seen[0], w._pending_bytes)
            time.sleep(0.0002)

    m = threading.Thread(target=monitor)
    m.start()
    blocked = [0]

    def produce(k: int) -> None:
        for _i in range(60):
            t0 = time.monotonic()
            w.append(bytes([k]) * 500)
            if time.monotonic() - t0 > 0.004:
                blocked[0] += 1

    try:
        producers = [threading.Thread(target=produce, args=(k,)) for k in range(3)]
        for p in producers:
            p.start()
        for p in producers:
            p.join()
        w.flush()
    finally:
        stop.set()
        m.join()
        w.close()
    assert max(batches) <= bound and seen[0] <= bound, (max(batches), seen[0], bound)
    assert max(batches) >= 5 * frame, "the queue never filled: backpressure was not exercised"
    assert blocked[0] > 10, "appends never waited"
    assert len(list(StreamReader(path).records())) == 180


# -- async writer ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_writer_64_producers_always(tmp_path: Path) -> None:
    path = tmp_path / "s"
    per = 25
    acked: dict[int, bytes] = {}
    aw = AsyncStreamWriter(path, durability="always", segment_bytes=16_000)
    syncs = []
    async with aw:
        real = aw.writer._fdatasync

        def counting(fd: int) -> None:
            syncs.append(fd)
            real(fd)

        aw.writer._fdatasync = counting

        async def producer(k: int) -> None:
            for i in range(per):
                payload = f"{k}:{i}:".encode() + payload_for(k * per + i, 300)
                seq = await aw.append(payload)
                assert aw.writer.durable_seq >= seq
                assert seq not in acked
                acked[seq] = payload
                if i % 5 == 0:
                    await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            for k in range(64):
                tg.start_soon(producer, k)
    n = 64 * per
    assert sorted(acked) == list(range(n))
    records = list(StreamReader(path).records())
    assert [r.seq for r in records] == list(range(n))
    assert all(r.payload == acked[r.seq] for r in records)
    assert len(syncs) < n // 2, f"{len(syncs)} fsyncs for {n} records: no group commit"


@pytest.mark.anyio
async def test_async_backpressure_does_not_block_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "s"
    frame = 500 + FRAME.size
    # with 5 frames queued, one more *payload* fits under the bound but one more *frame*
    # does not: where the async fast path and the queue disagree, the loop would block
    aw = AsyncStreamWriter(
        path,
        durability="batch",
        sync_bytes=1,
        max_pending_bytes=5 * frame + 510,
        max_record_bytes=600,
    )
    gaps = []
    async with aw:
        real = aw.writer._fdatasync

        def slow(fd: int) -> None:  # slow enough that a sync on the loop cannot hide
            time.sleep(0.3)
            real(fd)

        aw.writer._fdatasync = slow
        done = anyio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await anyio.sleep(0.001)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async def producer(k: int) -> None:
            for _ in range(6):
                await aw.append(bytes([k]) * 500)

        # A full garbage collection of this long-lived test process can pause the loop
        # for 100+ ms on its own; that is not what this test measures.
        gc.collect()
        gc.disable()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                async with anyio.create_task_group() as producers:
                    for k in range(8):
                        producers.start_soon(producer, k)
                await aw.flush()
                done.set()
        finally:
            gc.enable()
    assert len(list(StreamReader(path).records())) == 48
    # a sync on the loop would stall it >= 0.3 s; a busy machine's scheduling gaps are
    # far shorter than that
    assert max(gaps) < 0.25, f"event loop blocked for {max(gaps):.3f}s"


def test_segment_age_rolls(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StreamWriter(path, durability="batch", segment_age_s=0.1) as w:
        w.append(b"a")
        w.flush()
        deadline = time.monotonic() + 30  # a bound, not a speed assertion
        while len(list_segments(path)) < 2:  # rolls when idle, too
            assert time.monotonic() < deadline, "segment_age_s never rolled"
            time.sleep(0.01)
        time.sleep(0.3)
        assert len(list_segments(path)) == 2, "an empty segment must not be rolled"
        w.append(b"b")
        time.sleep(0.15)
        w.append(b"c")  # the segment holding b is too old: c starts a new one
    segments = list_segments(path)
    assert segments[:3] == [0, 1, 2]
    assert [r.payload for r in StreamReader(path).records()] == [b"a", b"b", b"c"]
    assert all(parse_index((path / index_name(f)).read_bytes()) for f in segments[:-1])


def test_list_segments_ignores_other_files(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StreamWriter(path, segment_bytes=300) as w:
        for _ in range(5):
            w.append(b"z" * 200)
    (path / (index_name(0) + ".tmp")).write_bytes(b"")
    (path / "junk.seg").write_bytes(b"")
    (path / "00000000000000000001.seg.salvage").write_bytes(b"")
    assert list_segments(path) == [0, 1, 2, 3, 4]
    assert len(list(StreamReader(path).records())) == 5


def test_commit_survives_a_torn_slot(tmp_path: Path) -> None:
    """COMMIT alternates two slots: tearing the newer one leaves the older one readable."""
    path = tmp_path / "s"
    w = StreamWriter(path, durability="always").open()
    for i in range(5):
        w.append(b"x%d" % i)
    newest = read_commit(path)
    assert newest is not None and newest[0] == 5
    data = bytearray((path / "COMMIT").read_bytes())
    w.close()
    assert len(data) == 72  # two slots
    slots = [data[:36], data[36:]]
    # find the slot holding the newest position and tear it
    from gymux.stores.writer import encode_commit

    which = 0 if bytes(slots[0]) == encode_commit(*newest) else 1
    data[which * 36 + 20] ^= 0xFF
    (path / "COMMIT").write_bytes(bytes(data))
    older = read_commit(path)
    assert older is not None and older[0] == 4  # the other slot: the previous durable point
    # a format-1 single-slot COMMIT still reads
    (path / "COMMIT").write_bytes(encode_commit(*newest))
    assert read_commit(path) == newest
