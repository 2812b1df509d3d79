"""Crash test: a writer process appending with ``always`` durability is SIGKILLed at random
moments, again and again, on the same stream.

The child (tests/doubles/store_writer_proc.py ``crash``) prints every sequence number that
``append`` acknowledged. After each kill the stream is read back and must hold every
acknowledged record, in order, nothing duplicated, every payload intact (payloads are
derived from their sequence numbers); then the next child recovers the stream and appends
on. Small segments make rolls (seal, index, new segment) frequent, so kills also land in
the middle of rolls and of recovery itself.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from pathlib import Path

from gymux.stores.format import index_name, list_segments, parse_index, segment_name
from gymux.stores.reader import StreamReader
from gymux.stores.sync_writer import StreamWriter

from doubles.store_writer_proc import payload_for, spawn

SEGMENT_BYTES = 48 * 1024
KILLS = 36
BUDGET_S = 30.0


class Child:
    """A crash-mode writer process whose stdout lines are collected by a thread."""

    def __init__(self, path: Path) -> None:
        self.proc = spawn("crash", path, SEGMENT_BYTES, text=False)
        self.raw = b""
        self.opened = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            self.raw += chunk
            if b"\n" in self.raw:
                self.opened.set()

    def kill(self) -> list[str]:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._thread.join(10)
        assert self.proc.returncode == -signal.SIGKILL, self.raw[-500:]
        complete = self.raw[: self.raw.rfind(b"\n") + 1]  # a torn last line is not an ack
        return complete.decode().splitlines()


def check_stream(path: Path, min_count: int) -> int:
    """Read everything back; returns the number of records."""
    if not path.exists():  # killed before the writer created the stream
        assert min_count == 0
        return 0
    count = 0
    for record in StreamReader(path).records():
        assert record.seq == count, f"expected seq {count}, got {record.seq}"
        assert record.payload == payload_for(record.seq), f"corrupt payload at {record.seq}"
        count += 1
    assert count >= min_count, f"lost acknowledged records: {count} < {min_count}"
    # every sealed segment has its index, consistent with the segment and its successor
    segments = list_segments(path)
    for first, following in itertools.pairwise(segments):
        index = parse_index((path / index_name(first)).read_bytes())
        assert index is not None, f"sealed segment {first} has no valid index"
        assert index.next_seq == following
        assert index.end_offset == (path / segment_name(first)).stat().st_size
    return count


def test_sigkill_writer_at_random_moments(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    rng = random.Random(0x5EED)
    start = time.monotonic()
    count = 0  # records in the stream after the last kill
    acked_total = 0
    kills = 0
    killed_before_open = 0
    # a reader in this process follows the stream through all the crashes and recoveries
    path.mkdir()
    followed: list[int] = []
    follow_errors: list[str] = []
    stop = threading.Event()

    def follow() -> None:
        try:
            for record in StreamReader(path).records(follow=True, stop=stop, poll_s=0.005):
                if record.payload != payload_for(record.seq):
                    follow_errors.append(f"corrupt payload at {record.seq}")
                followed.append(record.seq)
        except Exception as exc:  # reported by the main thread
            follow_errors.append(repr(exc))

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        count, acked_total, kills, killed_before_open = _crash_loop(path, rng, start)
        deadline = time.monotonic() + 20
        while len(followed) < count and not follow_errors and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        follower.join(30)
    assert follow_errors == []
    # every record exactly once, in order, across every crash and recovery
    assert followed == list(range(count))
    assert kills >= 30
    assert acked_total > 1000, "too few acknowledged appends to mean anything"
    assert len(list_segments(path)) > 10, "segment rolls did not happen"
    assert killed_before_open < kills // 2
    # a last, orderly recovery in this process continues the sequence
    with StreamWriter(path, durability="always", segment_bytes=SEGMENT_BYTES) as w:
        assert w.next_seq == count
        assert w.append(payload_for(count)) == count
    assert check_stream(path, count + 1) == count + 1


def _crash_loop(path: Path, rng: random.Random, start: float) -> tuple[int, int, int, int]:
    """Spawn, kill at a random moment and check, KILLS times (fewer on a slow machine)."""
    count = 0  # records in the stream after the last kill
    acked_total = 0
    kills = 0
    killed_before_open = 0
    for _ in range(KILLS):
        child = Child(path)
        try:
            if rng.random() < 0.25:
                # anywhere: during start-up, recovery, or appending
                time.sleep(rng.uniform(0.0, 0.35))
            else:
                assert child.opened.wait(20), "writer process did not start"
                time.sleep(rng.uniform(0.0, 0.2))
            lines = child.kill()
        finally:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        kills += 1
        acked = []
        if lines:
            word, next_seq, _recovered = lines[0].split()
            assert word == "open"
            # recovery agrees with the reader on where the valid records end
            assert int(next_seq) == count
            acked = [int(x) for x in lines[1:]]
            assert acked == list(range(count, count + len(acked))), "acks out of order"
        else:
            killed_before_open += 1
        acked_total += len(acked)
        count = check_stream(path, max(count, acked[-1] + 1 if acked else 0))
        if kills >= 30 and time.monotonic() - start > BUDGET_S:
            break  # a slow machine: enough kills already, keep the suite's time bounded
    return count, acked_total, kills, killed_before_open
