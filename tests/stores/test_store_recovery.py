"""Corruption matrix for a stream, in the manner of LevelDB's log tests.

Every case damages real segment files on disk and checks both sides:

* the READER (``StreamReader.records``): it yields exactly the intact records, never a
  wrong one, stops quietly at a damaged *tail*, and raises :class:`CorruptionError`
  (segment, byte offset) for damage followed by valid data unless ``salvage=True``;
* WRITER RECOVERY (opening a ``StreamWriter`` on the damaged stream): it truncates a torn
  tail of the last segment exactly (and logs the byte count), raises the same
  ``CorruptionError`` for damage followed by valid data, and the stream stays appendable
  with the next sequence number.
"""

from __future__ import annotations

import itertools
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from gymux.stores.commit import read_commit
from gymux.stores.errors import CorruptionError
from gymux.stores.format import (
    FRAME,
    SEGMENT_HEADER,
    FrameStatus,
    RecordType,
    encode_frame,
    encode_segment_header,
    index_name,
    list_segments,
    parse_frame,
    parse_index,
    segment_name,
)
from gymux.stores.reader import Position, StreamReader
from gymux.stores.scan import DEFAULT_INDEX_INTERVAL
from gymux.stores.sync_writer import StreamWriter

from doubles.store_writer_proc import payload_for

HEADER = SEGMENT_HEADER.size


@dataclass(frozen=True)
class Frame:
    seq: int
    segment: int
    start: int
    end: int

    @property
    def path_name(self) -> str:
        return segment_name(self.segment)


def build(
    path: Path,
    n: int,
    *,
    segment_bytes: int = 1 << 20,
    sizes: int = 300,
    index_interval: int = DEFAULT_INDEX_INTERVAL,
) -> None:
    """A stream of ``n`` records with payload ``payload_for(seq, sizes)``."""
    with StreamWriter(
        path, durability="os", segment_bytes=segment_bytes, index_interval=index_interval
    ) as w:
        for seq in range(n):
            assert w.append(payload_for(seq, sizes)) == seq


def frames(path: Path) -> list[Frame]:
    """Every frame of the stream, found by parsing the segment files directly."""
    out = []
    for first in list_segments(path):
        data = (path / segment_name(first)).read_bytes()
        off = HEADER
        while off < len(data):
            status, seq, _t, payload = parse_frame(data, off, len(data), 1 << 30)
            assert status is FrameStatus.OK
            end = off + FRAME.size + len(payload)
            out.append(Frame(seq, first, off, end))
            off = end
    return out


def read(path: Path, **options: object) -> list[int]:
    """Seqs the reader yields, checking every payload."""
    seqs = []
    for record in StreamReader(path, **options).records():  # type: ignore[arg-type]
        assert record.payload == payload_for(record.seq, 300), f"wrong payload at {record.seq}"
        seqs.append(record.seq)
    return seqs


def read_until_error(path: Path) -> tuple[list[int], CorruptionError]:
    seqs = []
    with pytest.raises(CorruptionError) as info:
        for record in StreamReader(path).records():
            assert record.payload == payload_for(record.seq, 300)
            seqs.append(record.seq)
    return seqs, info.value


def recover_and_append(path: Path, expect_next: int, **options: object) -> StreamWriter:
    """Open a writer (recovery), append one record, close; returns the closed writer."""
    w = StreamWriter(path, durability="always", **options)  # type: ignore[arg-type]
    w.open()
    try:
        assert w.next_seq == expect_next
        assert w.append(payload_for(expect_next, 300)) == expect_next
        assert w.durable_seq == expect_next
    finally:
        w.close()
    return w


def seg(path: Path, frame: Frame) -> Path:
    return path / frame.path_name


def patch(file: Path, offset: int, data: bytes) -> None:
    buf = bytearray(file.read_bytes())
    buf[offset : offset + len(data)] = data
    file.write_bytes(bytes(buf))


def flip(file: Path, offset: int, bit: int) -> None:
    buf = bytearray(file.read_bytes())
    buf[offset] ^= 1 << bit
    file.write_bytes(bytes(buf))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base"
    build(path, 8)
    return path


def fresh(base: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(base, dst)
    return dst


# -- truncated tail -----------------------------------------------------------------------


def test_truncated_tail_at_every_offset_of_last_record(base: Path, tmp_path: Path) -> None:
    fs = frames(base)
    last = fs[-1]
    assert last.end - last.start > 100
    for cut in range(last.start, last.end):
        path = fresh(base, tmp_path, "cut")
        with open(seg(path, last), "r+b") as fh:
            fh.truncate(cut)
        assert read(path) == list(range(last.seq)), cut
        with structlog.testing.capture_logs() as logs:
            w = recover_and_append(path, last.seq)
        torn = cut - last.start
        assert w.recovered_tail_bytes == torn, cut
        if torn:
            assert any(e.get("dropped_bytes") == torn for e in logs), logs
        # the torn bytes are gone, the new record follows the previous one exactly
        new = frames(path)
        assert [f.seq for f in new] == list(range(last.seq + 1))
        assert new[-1].start == last.start
        assert read(path) == list(range(last.seq + 1))


def test_truncated_tail_of_freshly_rolled_segment(tmp_path: Path) -> None:
    """The last record alone in the newest segment, cut at every offset, also inside the
    segment header (a crash right after the roll created the file)."""
    for n in range(2, 40):  # find a stream whose last record starts a new segment
        base = tmp_path / f"base{n}"
        build(base, n, segment_bytes=1200)
        fs = frames(base)
        last = fs[-1]
        if last.start == HEADER:
            break
    assert last.start == HEADER and fs[-2].segment != last.segment
    assert (base / index_name(fs[-2].segment)).exists()
    for cut in range(0, last.end):
        path = fresh(base, tmp_path, "cut")
        with open(seg(path, last), "r+b") as fh:
            fh.truncate(cut)
        assert read(path) == list(range(last.seq)), cut
        w = recover_and_append(path, last.seq)
        assert w.recovered_tail_bytes == (cut if cut < HEADER else cut - HEADER), cut
        assert [f.seq for f in frames(path)] == list(range(last.seq + 1))
        assert frames(path)[-1].start == HEADER
        assert read(path) == list(range(last.seq + 1))


# -- zero-filled and garbage tails -----------------------------------------------------------


@pytest.mark.parametrize("tail_kind", ["zeros", "garbage0", "garbage1", "garbage2", "zeros+torn"])
def test_zero_and_garbage_tails(base: Path, tmp_path: Path, tail_kind: str) -> None:
    fs = frames(base)
    path = fresh(base, tmp_path, "t")
    file = seg(path, fs[-1])
    size = file.stat().st_size
    if tail_kind.startswith("zeros"):
        tail = bytes(4096)
        if tail_kind == "zeros+torn":  # a torn record header, then zeros
            tail = file.read_bytes()[fs[2].start : fs[2].start + 9] + tail
    else:
        tail = random.Random(tail_kind).randbytes(4096)
    with open(file, "ab") as fh:
        fh.write(tail)
    assert read(path) == list(range(8))
    assert StreamReader(path).end() == Position(fs[-1].segment, size, 8)
    w = recover_and_append(path, 8)
    assert w.recovered_tail_bytes == len(tail)
    assert frames(path)[-1].start == size
    assert read(path) == list(range(9))


def test_zero_filled_tail_in_a_new_stream(tmp_path: Path) -> None:
    path = tmp_path / "s"
    build(path, 0)
    with open(path / segment_name(0), "ab") as fh:
        fh.write(bytes(4096))
    assert read(path) == []
    assert recover_and_append(path, 0).recovered_tail_bytes == 4096
    assert read(path) == [0]


# -- bad length ------------------------------------------------------------------------------


def _set_length(file: Path, frame: Frame, length: int) -> None:
    patch(file, frame.start + 4, struct.pack("<I", length))


@pytest.mark.parametrize("delta", ["huge", "+1", "-1", "zero", "past-end"])
def test_bad_length_in_last_record(base: Path, tmp_path: Path, delta: str) -> None:
    fs = frames(base)
    last = fs[-1]
    path = fresh(base, tmp_path, "t")
    true_len = last.end - last.start - FRAME.size
    length = {
        "huge": 0xFFFFFFFF,
        "+1": true_len + 1,
        "-1": true_len - 1,
        "zero": 0,
        "past-end": true_len + 10_000,
    }[delta]
    _set_length(seg(path, last), last, length)
    assert read(path) == list(range(7))
    w = recover_and_append(path, 7)
    assert w.recovered_tail_bytes == last.end - last.start
    assert read(path) == list(range(8))


@pytest.mark.parametrize("delta", ["huge", "+1", "-1", "past-end"])
def test_bad_length_in_the_middle(base: Path, tmp_path: Path, delta: str) -> None:
    fs = frames(base)
    bad = fs[3]
    path = fresh(base, tmp_path, "t")
    true_len = bad.end - bad.start - FRAME.size
    length = {"huge": 0xFFFFFFFF, "+1": true_len + 1, "-1": true_len - 1}.get(delta, 1 << 20)
    _set_length(seg(path, bad), bad, length)
    seqs, err = read_until_error(path)
    assert seqs == [0, 1, 2]
    assert (err.segment, err.offset, err.resume_offset) == (str(seg(path, bad)), bad.start, bad.end)
    with pytest.raises(CorruptionError) as info:
        StreamWriter(path).open()
    assert (info.value.offset, info.value.resume_offset) == (bad.start, bad.end)


# -- bad checksum in the middle --------------------------------------------------------------


def test_bad_checksum_in_the_middle(base: Path, tmp_path: Path) -> None:
    fs = frames(base)
    bad = fs[4]
    path = fresh(base, tmp_path, "t")
    file = seg(path, bad)
    flip(file, bad.start + 1, 3)  # inside the CRC field
    seqs, err = read_until_error(path)
    assert seqs == [0, 1, 2, 3]
    assert err.segment == str(file)
    assert err.offset == bad.start and err.resume_offset == bad.end
    assert f"at byte {bad.start}" in str(err) and segment_name(0) in str(err)
    before = file.read_bytes()
    with pytest.raises(CorruptionError) as info:
        StreamWriter(path).open()
    e = info.value
    assert (e.segment, e.offset, e.resume_offset) == (str(file), bad.start, bad.end)
    assert "checksum" in e.reason
    assert file.read_bytes() == before, "a failed recovery must not modify the segment"
    # the lock was released: another writer (here a salvaging one) can open
    w = StreamWriter(path, salvage=True).open()
    w.close()


def test_bad_payload_byte_in_the_middle_of_a_sealed_segment(tmp_path: Path) -> None:
    path = tmp_path / "s"
    build(path, 40, segment_bytes=2000)
    fs = frames(path)
    segments = list_segments(path)
    assert len(segments) >= 4
    victim = next(f for f in fs if f.segment == segments[1] and f.seq > segments[1])
    following = next(f for f in fs if f.seq == victim.seq + 1)
    assert following.segment == victim.segment, "victim must be in the middle of its segment"
    flip(seg(path, victim), victim.end - 1, 0)
    seqs, err = read_until_error(path)
    assert seqs == list(range(victim.seq))
    assert (err.segment, err.offset) == (str(seg(path, victim)), victim.start)
    assert err.resume_offset == victim.end
    # salvage skips exactly that record
    reader = StreamReader(path, salvage=True)
    got = [r.seq for r in reader.records()]
    assert got == [s for s in range(40) if s != victim.seq]
    assert reader.skipped_bytes == victim.end - victim.start


def test_damaged_last_record_of_a_sealed_segment(tmp_path: Path) -> None:
    """A sealed segment has no legitimate torn tail: damage at its end is followed by the
    valid data of the next segment, so it is corruption for the reader and, when the
    writer has to rebuild that segment's index, for writer recovery too."""
    path = tmp_path / "s"
    build(path, 40, segment_bytes=2000)
    fs = frames(path)
    segments = list_segments(path)
    victim = [f for f in fs if f.segment == segments[1]][-1]
    file = seg(path, victim)
    flip(file, victim.start + 10, 2)  # inside the seq field
    seqs, err = read_until_error(path)
    assert seqs == list(range(victim.seq))
    assert (err.segment, err.offset) == (str(file), victim.start)
    (path / index_name(segments[1])).unlink()
    with pytest.raises(CorruptionError) as info:
        StreamWriter(path).open()
    assert (info.value.segment, info.value.offset) == (str(file), victim.start)
    # salvage mode reads past it, counting the skipped bytes
    reader = StreamReader(path, salvage=True)
    assert [r.seq for r in reader.records()] == [s for s in range(40) if s != victim.seq]
    assert reader.skipped_bytes == victim.end - victim.start


# -- valid frames out of sequence -----------------------------------------------------------


def _raw_stream(path: Path, seqs: list[int]) -> list[Frame]:
    """A one-segment stream holding checksum-valid frames with the given seqs, in order."""
    path.mkdir()
    data = bytearray(encode_segment_header(0, 1))
    out = []
    for seq in seqs:
        frame = encode_frame(seq, RecordType.DATA, payload_for(seq, 300))
        out.append(Frame(seq, 0, len(data), len(data) + len(frame)))
        data += frame
    (path / segment_name(0)).write_bytes(bytes(data))
    return out


def test_replayed_frame_in_the_middle_is_corruption(tmp_path: Path) -> None:
    """A checksum-valid frame whose seq goes backwards (a replayed or misplaced block) is
    damage, for the reader as for writer recovery: never a duplicated record."""
    path = tmp_path / "s"
    fs = _raw_stream(path, [0, 1, 2, 3, 4, 5, 2, 6, 7])
    dup = fs[6]
    seqs, err = read_until_error(path)
    assert seqs == [0, 1, 2, 3, 4, 5]
    assert (err.offset, err.resume_offset) == (dup.start, dup.end)
    with pytest.raises(CorruptionError) as info:
        StreamWriter(path).open()
    assert (info.value.offset, info.value.resume_offset) == (dup.start, dup.end)
    reader = StreamReader(path, salvage=True)
    assert [r.seq for r in reader.records()] == list(range(8))
    assert reader.skipped_bytes == dup.end - dup.start
    assert [r.seq for r in StreamReader(path, salvage=True).records(3)] == list(range(3, 8))


def test_replayed_frame_at_the_tail_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "s"
    fs = _raw_stream(path, [0, 1, 2, 3, 1])
    assert read(path) == [0, 1, 2, 3]
    w = recover_and_append(path, 4)
    assert w.recovered_tail_bytes == fs[-1].end - fs[-1].start
    assert read(path) == [0, 1, 2, 3, 4]


# -- bit flips -------------------------------------------------------------------------------


def _flip_positions(frame: Frame, rng: random.Random) -> list[tuple[int, int]]:
    header = [(frame.start + i, b) for i in range(FRAME.size) for b in range(8)]
    payload = [
        (rng.randrange(frame.start + FRAME.size, frame.end), rng.randrange(8)) for _ in range(12)
    ]
    return header + payload


def test_bit_flips_in_a_middle_record_are_always_detected(base: Path, tmp_path: Path) -> None:
    fs = frames(base)
    victim = fs[5]
    original = seg(base, victim).read_bytes()
    path = fresh(base, tmp_path, "t")
    file = seg(path, victim)
    for offset, bit in _flip_positions(victim, random.Random(1)):
        buf = bytearray(original)
        buf[offset] ^= 1 << bit
        file.write_bytes(bytes(buf))
        seqs, err = read_until_error(path)
        assert seqs == [0, 1, 2, 3, 4], (offset, bit)
        assert err.offset == victim.start and err.resume_offset == victim.end, (offset, bit)
        with pytest.raises(CorruptionError) as info:
            StreamWriter(path).open()
        assert info.value.offset == victim.start, (offset, bit)
        assert file.read_bytes() == bytes(buf)


def test_bit_flips_in_the_last_record_are_a_torn_tail(base: Path, tmp_path: Path) -> None:
    fs = frames(base)
    victim = fs[-1]
    original = seg(base, victim).read_bytes()
    for offset, bit in _flip_positions(victim, random.Random(2)):
        path = fresh(base, tmp_path, "t")
        buf = bytearray(original)
        buf[offset] ^= 1 << bit
        seg(path, victim).write_bytes(bytes(buf))
        assert read(path) == list(range(7)), (offset, bit)
        w = recover_and_append(path, 7)
        assert w.recovered_tail_bytes == victim.end - victim.start, (offset, bit)
        assert read(path) == list(range(8))


# -- segment rolls, seek, indexes ------------------------------------------------------------


def test_records_spanning_many_segments(tmp_path: Path) -> None:
    path = tmp_path / "s"
    n = 300
    with StreamWriter(path, durability="os", segment_bytes=1500, index_interval=256) as w:
        for seq in range(n):
            w.append(payload_for(seq, 300))
        big = w.append(b"big" * 2000)  # larger than a segment: a segment of its own
    segments = list_segments(path)
    assert len(segments) > 30
    assert big in segments
    reader = StreamReader(path)
    records = list(reader.records())
    assert [r.seq for r in records] == list(range(n + 1))
    assert all(r.payload == payload_for(r.seq, 300) for r in records[:n])
    assert records[n].payload == b"big" * 2000
    # every sealed segment has a valid index consistent with the segment; the active has none
    fs = frames(path)
    for first in segments[:-1]:
        index = parse_index((path / index_name(first)).read_bytes())
        assert index is not None
        mine = [f for f in fs if f.segment == first]
        assert index.first_seq == first and index.count == len(mine)
        assert index.end_offset == mine[-1].end and index.next_seq == mine[-1].seq + 1
        starts = {f.start: f.seq for f in mine}
        assert index.entries and all(starts.get(off) == s for s, off in index.entries)
    assert not (path / index_name(segments[-1])).exists()
    # seek(seq) lands on seq, from a Position and from an int
    for seq in [*range(0, n + 1, 7), n - 1, n]:
        pos = reader.seek(seq)
        assert pos.seq == seq
        first = next(reader.records(pos))
        assert first.seq == seq
        assert next(StreamReader(path).records(seq)).seq == seq
    end = reader.seek(n + 5)
    assert list(reader.records(end)) == []
    assert end == reader.end() == records[-1].next
    # resuming from each record's `next` yields the following record
    for a, b in itertools.pairwise(records):
        assert next(reader.records(a.next)).seq == b.seq


def test_seek_with_missing_or_damaged_indexes(tmp_path: Path) -> None:
    base = tmp_path / "base"
    n = 200
    build(base, n, segment_bytes=2000, index_interval=300)
    segments = list_segments(base)
    originals = {f: (base / index_name(f)).read_bytes() for f in segments[:-1]}
    for damage in ["delete", "truncate", "flip", "garbage", "empty"]:
        path = tmp_path / damage
        shutil.copytree(base, path)
        for i, first in enumerate(segments[:-1]):
            idx = path / index_name(first)
            data = idx.read_bytes()
            if damage == "delete":
                idx.unlink()
            elif damage == "truncate":
                idx.write_bytes(data[: len(data) // 2])
            elif damage == "flip":
                flip(idx, (i * 13) % len(data), i % 8)
            elif damage == "garbage":
                idx.write_bytes(random.Random(i).randbytes(len(data)))
            else:
                idx.write_bytes(b"")
            assert parse_index(idx.read_bytes()) is None if idx.exists() else True
        reader = StreamReader(path)
        assert [r.seq for r in reader.records()] == list(range(n)), damage
        for seq in range(0, n, 3):
            pos = reader.seek(seq)
            assert pos.seq == seq and next(reader.records(pos)).seq == seq, (damage, seq)
        # writer open rebuilds every index, byte for byte as the writer sealed it
        with structlog.testing.capture_logs() as logs:
            recover_and_append(path, n, index_interval=300)
        assert any("index" in e["event"] for e in logs)
        for first in segments[:-1]:
            assert (path / index_name(first)).read_bytes() == originals[first], damage
        assert read(path) == list(range(n + 1))


# -- empty segments --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zero-bytes", "header-only", "torn-header"])
def test_empty_last_segment(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "s"
    build(path, 20, segment_bytes=2000)
    n = 20
    old_last = list_segments(path)[-1]
    # what a roll that crashed right after creating the next segment leaves behind
    with StreamWriter(path, durability="os", segment_bytes=2000) as w:
        w._roll(n)  # seal the active segment (index) and create segment n
    file = path / segment_name(n)
    assert (path / index_name(old_last)).exists()
    if kind == "zero-bytes":
        file.write_bytes(b"")
    elif kind == "torn-header":
        file.write_bytes(file.read_bytes()[:11])
    assert file.stat().st_size == {"zero-bytes": 0, "header-only": HEADER, "torn-header": 11}[kind]
    reader = StreamReader(path)
    assert read(path) == list(range(n))
    assert reader.seek(n).seq == n
    assert list(reader.records(n)) == []
    assert [r.seq for r in reader.records(n - 1)] == [n - 1]
    w = recover_and_append(path, n)
    assert w.recovered_tail_bytes == {"zero-bytes": 0, "header-only": 0, "torn-header": 11}[kind]
    assert list_segments(path)[-1] == n
    assert frames(path)[-1] == Frame(n, n, HEADER, frames(path)[-1].end)
    assert read(path) == list(range(n + 1))


def test_stream_with_only_a_zero_byte_segment(tmp_path: Path) -> None:
    # a stream whose only segment is a 0-byte file (crash while creating the stream)
    path = tmp_path / "new"
    path.mkdir()
    (path / segment_name(0)).write_bytes(b"")
    assert read(path) == []
    assert recover_and_append(path, 0).recovered_tail_bytes == 0
    assert read(path) == [0]


def test_damaged_segment_header_followed_by_records(base: Path, tmp_path: Path) -> None:
    path = fresh(base, tmp_path, "t")
    file = path / segment_name(0)
    flip(file, 9, 1)  # the version field
    # the reader does not need the header: the records themselves are checksummed
    assert read(path) == list(range(8))
    with pytest.raises(CorruptionError) as info:
        StreamWriter(path).open()
    assert (info.value.offset, info.value.resume_offset) == (0, HEADER)
    with StreamWriter(path, salvage=True, durability="always") as w:
        assert w.salvaged_bytes == HEADER and w.next_seq == 8
        w.append(payload_for(8, 300))
    assert read(path) == list(range(9))
    recover_and_append(path, 9)


# -- salvage ---------------------------------------------------------------------------------


def test_salvage_reader_and_writer(tmp_path: Path) -> None:
    path = tmp_path / "s"
    build(path, 12)
    fs = frames(path)
    damaged = [fs[3], fs[4], fs[8]]
    file = seg(path, fs[0])
    for f in damaged:
        patch(file, f.start + FRAME.size, b"\xff\xfe")
    with open(file, "ab") as fh:  # and a torn tail
        fh.write(bytes(100))
    keep = [s for s in range(12) if s not in (3, 4, 8)]
    reader = StreamReader(path, salvage=True)
    got = list(reader.records())
    assert [r.seq for r in got] == keep
    assert all(r.payload == payload_for(r.seq, 300) for r in got)
    skipped = sum(f.end - f.start for f in damaged)
    assert reader.skipped_bytes == skipped
    # without salvage: an error at the first damage
    seqs, err = read_until_error(path)
    assert seqs == [0, 1, 2] and err.offset == fs[3].start and err.resume_offset == fs[5].start
    with pytest.raises(CorruptionError):
        StreamWriter(path).open()
    # a salvaging writer keeps every valid record, drops the damage and the tail, appends
    with structlog.testing.capture_logs() as logs:
        w = StreamWriter(path, salvage=True, durability="always").open()
    try:
        assert w.salvaged_bytes == skipped
        assert w.next_seq == 12
        assert w.append(payload_for(12, 300)) == 12
    finally:
        w.close()
    assert any(e.get("skipped_bytes") == skipped for e in logs)
    assert read(path) == [*keep, 12]
    commit = read_commit(path)
    assert commit is not None and commit[0] == 13
