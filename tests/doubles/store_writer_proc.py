"""Helper process for the store tests (run with ``sys.executable``; not a test module).

Modes::

    crash PATH SEGMENT_BYTES         StreamWriter(always); append payload_for(seq) forever,
                                     printing each acknowledged seq (the parent SIGKILLs it);
                                     rolls are slowed down so that kills often hit them
    hold PATH                        open a StreamWriter, print "ready <pid>", wait for stdin
                                     to close, close the writer, print "closed"
    batch PATH COUNT SEGMENT_BYTES SEED
                                     StreamWriter(batch); append COUNT records with small
                                     random pauses, close, print "done <next_seq>"
    split PATH COUNT SEGMENT_BYTES SEED
                                     write COUNT frames with raw os.write calls split at random
                                     byte boundaries, rolling segments as the real writer
                                     does (seal: .idx via encode_index, then the next .seg)

Every record's payload is :func:`payload_for` of its sequence number, so a reader can check
each record's content, not just its checksum. Tests start it with :func:`spawn`.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from gymux.stores.format import (
    RecordType,
    encode_frame,
    encode_index,
    encode_segment_header,
    index_name,
    segment_name,
)
from gymux.stores.sync_writer import StreamWriter

#: Index interval the split writer uses (small, so sealed segments get several entries).
SPLIT_INDEX_INTERVAL = 512
#: This file, run as a script by :func:`spawn`.
SCRIPT = Path(__file__).resolve()


def spawn(
    *args: object, stdin: int | IO[Any] | None = None, text: bool = True
) -> subprocess.Popen[Any]:
    """Start this helper (``args``: a mode and its arguments) with its stdout piped."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        text=text,
    )


def payload_for(seq: int, max_size: int = 1500) -> bytes:
    """A payload determined by ``seq`` alone: 1..max_size bytes, content derived from seq."""
    size = 1 + (seq * 2654435761) % max_size
    block = hashlib.sha256(seq.to_bytes(8, "little")).digest()
    return (block * (size // len(block) + 1))[:size]


def _crash(path: Path, segment_bytes: int) -> None:
    w = StreamWriter(path, durability="always", segment_bytes=segment_bytes)
    real_fdatasync = w._fdatasync

    def fdatasync(fd: int) -> None:
        # Widen the windows of a roll (index written, next segment created) and of
        # recovery, so that random kills land in them often: sleep when syncing any file
        # but the active segment. Only timing changes, never what is written.
        if fd != w._fd:
            time.sleep(0.003)
        real_fdatasync(fd)

    w._fdatasync = fdatasync
    w.open()
    print(f"open {w.next_seq} {w.recovered_tail_bytes}", flush=True)
    while True:
        seq = w.next_seq
        got = w.append(payload_for(seq))
        if got != seq:
            print(f"error: expected seq {seq}, got {got}", flush=True)
            os._exit(3)
        print(got, flush=True)


def _hold(path: Path) -> None:
    with StreamWriter(path, durability="always") as w:
        w.append(b"held")
        print(f"ready {os.getpid()}", flush=True)
        sys.stdin.read()
    print("closed", flush=True)


def _batch(path: Path, count: int, segment_bytes: int, seed: int) -> None:
    rng = random.Random(seed)
    with StreamWriter(
        path, durability="batch", segment_bytes=segment_bytes, sync_interval_s=0.005
    ) as w:
        for _ in range(count):
            seq = w.next_seq
            w.append(payload_for(seq))
            if rng.random() < 0.05:
                time.sleep(rng.random() * 0.005)
        w.flush()
        print(f"done {w.next_seq}", flush=True)


def _write_split(fd: int, data: bytes, rng: random.Random) -> None:
    """Write ``data`` in several pieces cut at random byte boundaries, pausing between."""
    pos = 0
    while pos < len(data):
        n = rng.choice((1, 2, 3, 5, 8, 13, 17, 64, 500, 4096))
        n = min(n, len(data) - pos)
        written = os.write(fd, data[pos : pos + n])
        pos += written
        if rng.random() < 0.3:
            time.sleep(rng.random() * 0.0005)


def _split(path: Path, count: int, segment_bytes: int, seed: int) -> None:
    from gymux.stores.format import IndexData

    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)

    def create(first: int) -> int:
        fd = os.open(path / segment_name(first), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        _write_split(fd, encode_segment_header(first, time.time_ns()), rng)
        return fd

    first = 0
    fd = create(first)
    size = 32
    records = 0
    entries: list[tuple[int, int]] = []
    last_indexed = -SPLIT_INDEX_INTERVAL
    for seq in range(count):
        frame = encode_frame(seq, RecordType.DATA, payload_for(seq))
        if records and size + len(frame) > segment_bytes:
            # seal exactly like StreamWriter._roll: index first, then the next segment
            os.fsync(fd)
            os.close(fd)
            index = IndexData(first, records, size, seq, SPLIT_INDEX_INTERVAL, entries)
            tmp = path / (index_name(first) + ".tmp")
            tmp.write_bytes(encode_index(index))
            os.replace(tmp, path / index_name(first))
            first, size, records, entries = seq, 32, 0, []
            last_indexed = -SPLIT_INDEX_INTERVAL
            fd = create(first)
        if size - last_indexed >= SPLIT_INDEX_INTERVAL:
            entries.append((seq, size))
            last_indexed = size
        _write_split(fd, frame, rng)
        size += len(frame)
        records += 1
    os.close(fd)
    print(f"done {count}", flush=True)


def main(argv: list[str]) -> None:
    import structlog

    # stdout is the protocol with the parent; the store's log lines go to stderr
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    mode, path = argv[0], Path(argv[1])
    if mode == "crash":
        _crash(path, int(argv[2]))
    elif mode == "hold":
        _hold(path)
    elif mode == "batch":
        _batch(path, int(argv[2]), int(argv[3]), int(argv[4]))
    elif mode == "split":
        _split(path, int(argv[2]), int(argv[3]), int(argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
