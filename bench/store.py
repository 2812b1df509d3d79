"""Trajectory store benchmark for gymux (``gymux.stores``).

Measures, each beside baselines measured in the same run on the same disk:

* **write**: records/s and MB/s of ``StreamWriter.append`` with one producer, for ~2.5 KB
  and ~1 MB trajectory records, in each durability mode (``os``, ``batch``, ``always``);
* **concurrent always**: 64 producers with ``always`` durability, as 64 asyncio tasks on
  one ``AsyncStreamWriter`` and as 64 threads on one ``StreamWriter`` (group commit);
* **read**: ``StreamReader.records()`` over the 2.5 KB store (raw records, CRC-checked),
  plus ``decode_meta``, ``decode_trajectory`` and NumPy views of the token arrays.

Baselines: plain sequential ``os.write()`` of the same payload bytes to one file (one call
per record, and in 1 MiB chunks; with and without one ``fdatasync`` at the end), one
``write`` + ``fdatasync`` per record (what ``always`` costs without group commit), and JSON
lines through the standard library (``json.dumps`` of an equivalent dict per record plus
``file.write``; ``json.loads`` per line to read them back).

Payloads are real ``encode_trajectory`` outputs: a pool of 1,024 distinct trajectories
with 5 messages, 2 turns and a ``TokenData`` of 110-160 tokens (packed int32 ids, float32
logprobs, uint8 loss mask), ~2.5 KB each, and 4 long ones (40 turns, ~86k tokens), ~1 MB.

Usage::

    python bench/store.py                  # full run (~2 min on 2 cores)
    python bench/store.py --quick          # smoke version (< 30 s)
    python bench/store.py --json out.json  # also dump every measurement as JSON
    python bench/store.py --dir /mnt/x     # write the files under /mnt/x (default: /tmp)
    python bench/store.py --repeat 5       # rounds (every row once per round; the median
                                           # run of each row is kept; default 3, quick 1)
    # profile one row with cProfile (main thread and the store's writer thread apart):
    python bench/store.py --profile write-2.5KB/batch --profile read/records

See docs/benchmarks.md ("Store") for what each row means and the measured figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from gymux.messages import Message
from gymux.stores.codec import (
    decode_meta,
    decode_trajectory,
    encode_trajectory,
    pack_float32,
    pack_int32,
    pack_uint8,
)
from gymux.stores.format import RecordType
from gymux.stores.reader import StreamReader
from gymux.stores.writer import AsyncStreamWriter, StreamWriter
from gymux.trajectory import FinishReason, TokenData, Trajectory, Turn

# Targets (from issue 3).
BATCH_VS_RAW_TARGET = 0.5
BATCH_RPS_TARGET = 100_000.0
ALWAYS64_RPS_TARGET = 20_000.0
READ_RPS_TARGET = 300_000.0

PRODUCERS = 64
TRAJ = int(RecordType.TRAJECTORY)
MB = 1e6  # figures are decimal megabytes of payload (frame headers not counted)

# Records per row: (quick, default).
COUNTS = {
    "small": (60_000, 200_000),  # 2.5 KB records: os / batch / raw
    "small_jsonl": (10_000, 40_000),  # 2.5 KB records through stdlib JSON (~50x slower)
    "small_always": (2_000, 5_000),  # 2.5 KB, always, one producer; write+fsync per record
    "small_concurrent": (64 * 250, 64 * 1_000),  # 2.5 KB, always, 64 producers
    "big": (200, 600),  # 1 MB records: os / batch / raw
    "big_always": (50, 150),  # 1 MB, always, one producer; write+fsync per record
}
SMALL_POOL = 1024
BIG_POOL = 4

# -- payloads -----------------------------------------------------------------------------

_VOCABULARY = (
    "you are in the middle of a room looking quickly around you see a cabinet drawer "
    "countertop shelf fridge microwave sinkbasin stoveburner toaster garbagecan open "
    "take put go to the apple mug knife from in on nothing happens think first I need"
)
_WORDS = _VOCABULARY.split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def make_trajectory(rng: random.Random, index: int, turns: int, text_words: int) -> Trajectory:
    """A plausible ALFWorld-like episode: system prompt, ``turns`` observation/answer
    pairs, per-turn records, and token data covering the whole conversation."""
    messages = [Message(role="system", content=_text(rng, text_words * 2))]
    turn_list = []
    obs = _text(rng, text_words)
    messages.append(Message(role="user", content=obs))
    for t in range(turns):
        action = f"go to {rng.choice(_WORDS)} {rng.randrange(1, 9)}"
        raw = f"Thought: {_text(rng, text_words // 2)}\nAction: {action}"
        messages.append(Message(role="assistant", content=raw, loss=True))
        done = t == turns - 1
        turn_list.append(
            Turn(
                index=t,
                observation=obs,
                raw_output=raw,
                action=action,
                reward=1.0 if done else 0.0,
                done=done,
                policy_s=rng.uniform(0.2, 2.0),
                env_s=rng.uniform(0.001, 0.05),
                prompt_tokens=rng.randrange(200, 4000),
                completion_tokens=rng.randrange(10, 200),
            )
        )
        if not done:
            obs = _text(rng, text_words)
            messages.append(Message(role="user", content=obs))
    return Trajectory(
        run_id="run-2024-bench",
        episode_id=f"ep-{index:08d}-{rng.getrandbits(32):08x}",
        env_id="alfworld",
        env_version="0.3.1",
        task_id=rng.randrange(10_000),
        split="train",
        sample=rng.randrange(8),
        policy="vllm:qwen2.5-7b-instruct",
        policy_version="2024-06-01",
        messages=messages,
        turns=turn_list,
        reward=1.0,
        success=rng.random() < 0.6,
        finish_reason=FinishReason.DONE,
        started_at=1.7e9 + index,
        wall_s=rng.uniform(1, 30),
        policy_step=rng.randrange(1000),
        tokens=None,
    )


def with_tokens(rng: random.Random, traj: Trajectory, n_tokens: int) -> Trajectory:
    ids = [rng.randrange(151_000) for _ in range(n_tokens)]
    mask = [1 if rng.random() < 0.3 else 0 for _ in range(n_tokens)]
    logprobs = [-rng.expovariate(3.0) if m else 0.0 for m in mask]
    traj.tokens = TokenData(
        ids=pack_int32(ids),
        loss_mask=pack_uint8(mask),
        logprobs=pack_float32(logprobs),
        tokenizer="Qwen/Qwen2.5-7B-Instruct",
    )
    return traj


def json_equivalent(traj: Trajectory) -> dict[str, Any]:
    """What a stdlib JSONL sink would write: the same fields, token arrays as lists."""
    d: dict[str, Any] = msgspec.to_builtins(traj)
    tok = traj.tokens
    if tok is not None:
        d["tokens"] = {
            "ids": array("i", tok.ids).tolist(),
            "loss_mask": list(tok.loss_mask),
            "logprobs": array("f", tok.logprobs).tolist() if tok.logprobs else None,
            "tokenizer": tok.tokenizer,
        }
    return d


class Payloads:
    """A pool of distinct trajectories, their encoded records and JSON equivalents."""

    def __init__(self, kind: str, pool: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.trajectories: list[Trajectory] = []
        for i in range(pool):
            if kind == "small":
                t = make_trajectory(rng, i, turns=2, text_words=4)
                with_tokens(rng, t, rng.randrange(110, 160))
            else:
                t = make_trajectory(rng, i, turns=40, text_words=300)
                with_tokens(rng, t, rng.randrange(84_000, 89_000))
            self.trajectories.append(t)
        self.records = [encode_trajectory(t) for t in self.trajectories]
        self.dicts = [json_equivalent(t) for t in self.trajectories] if kind == "small" else []
        self.mean_size = sum(map(len, self.records)) / len(self.records)

    def cycle(self, n: int) -> Iterator[bytes]:
        recs = self.records
        k = len(recs)
        for i in range(n):
            yield recs[i % k]

    def total_bytes(self, n: int) -> int:
        recs = self.records
        k = len(recs)
        full, rest = divmod(n, k)
        return full * sum(map(len, recs)) + sum(len(r) for r in recs[:rest])


# -- measurement helpers ------------------------------------------------------------------


class Clock:
    """Wall and process CPU time (all threads) of a ``with`` block."""

    def __enter__(self) -> Clock:
        self.c0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu_s = time.process_time() - self.c0


def settle() -> None:
    """Between runs, outside any timing: flush dirty pages and collect garbage, so that
    one row does not pay for the previous row's writeback."""
    os.sync()
    gc.collect()


def _row(
    group: str,
    name: str,
    *,
    kind: str,
    mode: str,
    size: str,
    producers: int | str,
    records: int,
    nbytes: int,
    seconds: float,
    cpu_s: float,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "group": group,
        "name": name,
        "key": f"{group}/{name}",
        "kind": kind,
        "mode": mode,
        "size": size,
        "producers": producers,
        "records": records,
        "bytes": nbytes,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "records_per_s": records / seconds,
        "mb_per_s": nbytes / MB / seconds,
        **extra,
    }


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    if n != len(data):  # regular files don't do short writes in practice
        view = memoryview(data)[n:]
        while view:
            view = view[os.write(fd, view) :]


# -- baselines ----------------------------------------------------------------------------


def raw_write(
    path: Path, payloads: Payloads, n: int, *, chunk: int = 0
) -> tuple[float, float, float]:
    """Sequential ``os.write`` of the payloads (one call each, or joined into ``chunk``-byte
    writes); returns (write seconds, final fdatasync seconds, cpu seconds)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with Clock() as c:
            if chunk:
                buf: list[bytes] = []
                size = 0
                for p in payloads.cycle(n):
                    buf.append(p)
                    size += len(p)
                    if size >= chunk:
                        _write_all(fd, b"".join(buf))
                        buf, size = [], 0
                if buf:
                    _write_all(fd, b"".join(buf))
            else:
                write = os.write
                for p in payloads.cycle(n):
                    if write(fd, p) != len(p):
                        raise OSError("short write")
        t_write = c.seconds
        t0 = time.perf_counter()
        os.fdatasync(fd)
        t_sync = time.perf_counter() - t0
    finally:
        os.close(fd)
    return t_write, t_sync, c.cpu_s


def raw_write_fsync_each(path: Path, payloads: Payloads, n: int) -> tuple[float, float]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with Clock() as c:
            for p in payloads.cycle(n):
                _write_all(fd, p)
                os.fdatasync(fd)
    finally:
        os.close(fd)
    return c.seconds, c.cpu_s


def jsonl_write(path: Path, payloads: Payloads, n: int) -> tuple[float, float, int]:
    dicts = payloads.dicts
    k = len(dicts)
    nbytes = 0
    with Clock() as c, open(path, "w", encoding="utf-8") as f:
        dumps = json.dumps
        write = f.write
        for i in range(n):
            line = dumps(dicts[i % k]) + "\n"
            write(line)
            nbytes += len(line)  # ASCII: json.dumps escapes non-ASCII by default
    return c.seconds, c.cpu_s, nbytes


def raw_read(paths: list[Path]) -> tuple[float, float, int]:
    nbytes = 0
    with Clock() as c:
        for p in paths:
            with open(p, "rb") as f:
                nbytes += len(f.read())
    return c.seconds, c.cpu_s, nbytes


def jsonl_read(path: Path) -> tuple[float, float, int, int]:
    n = nbytes = 0
    with Clock() as c:
        loads = json.loads
        with open(path, encoding="utf-8") as f:
            for line in f:
                loads(line)
                n += 1
                nbytes += len(line)
    return c.seconds, c.cpu_s, n, nbytes


# -- the store ----------------------------------------------------------------------------


def store_write(
    path: Path,
    payloads: Payloads,
    n: int,
    mode: str,
    *,
    encode: bool = False,
) -> dict[str, float]:
    """One producer calling ``StreamWriter.append``. The time runs from the first append
    until every record is written to the OS (``os``) or durable (``batch``: ``flush()``;
    ``always``: the last append returned). ``close()`` is timed apart."""
    w = StreamWriter(path, durability=mode)  # type: ignore[arg-type]
    w.open()
    try:
        with Clock() as c:
            append = w.append
            if encode:
                trajs = payloads.trajectories
                k = len(trajs)
                for i in range(n):
                    append(encode_trajectory(trajs[i % k]), TRAJ)
            else:
                for p in payloads.cycle(n):
                    append(p, TRAJ)
            last = w.next_seq - 1
            if mode == "batch":
                w.flush()
            elif mode == "os":
                # In ``os`` mode a written batch counts as durable; flush() would fsync.
                while w.durable_seq < last:
                    time.sleep(0.0002)
        syncs = w.syncs
    finally:
        t0 = time.perf_counter()
        w.close()
        close_s = time.perf_counter() - t0
    return {"seconds": c.seconds, "cpu_s": c.cpu_s, "close_s": close_s, "syncs": syncs}


def store_write_async(path: Path, payloads: Payloads, n: int, producers: int) -> dict[str, float]:
    """``producers`` asyncio tasks awaiting ``AsyncStreamWriter.append`` (``always``)."""
    per = n // producers
    recs = payloads.records
    k = len(recs)

    async def producer(w: AsyncStreamWriter, j: int) -> None:
        for i in range(per):
            await w.append(recs[(j * per + i) % k], TRAJ)

    async def main() -> dict[str, float]:
        aw = AsyncStreamWriter(path, durability="always")
        async with aw:
            with Clock() as c:
                await asyncio.gather(*(producer(aw, j) for j in range(producers)))
            syncs = aw.writer.syncs
        return {"seconds": c.seconds, "cpu_s": c.cpu_s, "syncs": syncs}

    return asyncio.run(main())


def store_write_threads(path: Path, payloads: Payloads, n: int, producers: int) -> dict[str, float]:
    """``producers`` threads calling ``StreamWriter.append`` (``always``)."""
    per = n // producers
    recs = payloads.records
    k = len(recs)
    start = threading.Barrier(producers + 1)
    errors: list[BaseException] = []

    def producer(w: StreamWriter, j: int) -> None:
        start.wait()
        try:
            for i in range(per):
                w.append(recs[(j * per + i) % k], TRAJ)
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    with StreamWriter(path, durability="always") as w:
        threads = [
            threading.Thread(target=producer, args=(w, j), daemon=True) for j in range(producers)
        ]
        for t in threads:
            t.start()
        with Clock() as c:
            start.wait()
            for t in threads:
                t.join()
        syncs = w.syncs
    if errors:
        raise errors[0]
    return {"seconds": c.seconds, "cpu_s": c.cpu_s, "syncs": syncs}


def store_read(path: Path, how: str) -> tuple[float, float, int, int]:
    reader = StreamReader(path)
    n = nbytes = 0
    with Clock() as c:
        if how == "records":
            for r in reader.records():
                n += 1
                nbytes += len(r.payload)
        elif how == "meta":
            for r in reader.records():
                decode_meta(r.payload)
                n += 1
                nbytes += len(r.payload)
        elif how == "trajectory":
            for r in reader.records():
                decode_trajectory(r.payload)
                n += 1
                nbytes += len(r.payload)
        elif how == "numpy":
            from gymux.stores.codec import token_arrays

            for r in reader.records():
                t = decode_trajectory(r.payload)
                if t.tokens is not None:
                    token_arrays(t.tokens)
                n += 1
                nbytes += len(r.payload)
        else:
            raise ValueError(how)
    return c.seconds, c.cpu_s, n, nbytes


# -- the plan -----------------------------------------------------------------------------

#: A row of the table: its key ("group/name"), what it runs on a fresh path (returning one
#: or more rows), and under which name to keep the path of its first run (for the reads).
Task = tuple[str, Callable[[Path], list[dict[str, Any]]], str]


class Bench:
    """Runs the tasks in ``repeat`` rounds (each round runs every task once, in order), so
    that a burst of load from other processes hits one run of many rows rather than every
    run of one row; each row reports the run with the median time."""

    def __init__(self, root: Path, quick: bool, repeat: int) -> None:
        self.root = root
        self.quick = quick
        self.repeat = repeat
        self.rows: list[dict[str, Any]] = []
        self.keep: dict[str, Path] = {}
        self._uid = 0

    def count(self, what: str) -> int:
        return COUNTS[what][0 if self.quick else 1]

    def fresh(self, key: str) -> Path:
        self._uid += 1
        return self.root / f"{self._uid:04d}-{key.replace('/', '_').replace('+', '_')}"

    def cleanup(self, path: Path) -> None:
        if path in self.keep.values():
            return
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def run_once(self, task: Task) -> list[dict[str, Any]]:
        key, run, keep = task
        settle()
        path = self.fresh(key)
        rows = run(path)
        if keep and keep not in self.keep:
            self.keep[keep] = path
        self.cleanup(path)
        return rows

    def run(self, tasks: list[Task]) -> None:
        runs: dict[str, list[list[dict[str, Any]]]] = {key: [] for key, _, _ in tasks}
        for i in range(self.repeat):
            print(f"round {i + 1}/{self.repeat}", file=sys.stderr, flush=True)
            for task in tasks:
                rows = self.run_once(task)
                runs[task[0]].append(rows)
                r = rows[0]
                print(
                    f"  {task[0]:<30} {r['records_per_s']:>10,.0f} rec/s {r['mb_per_s']:>7,.0f}"
                    f" MB/s  {r['seconds']:6.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
        for key, _, _ in tasks:
            done = runs[key]
            order = sorted(range(len(done)), key=lambda i: done[i][0]["seconds"])
            chosen = done[order[(len(order) - 1) // 2]]
            for j, row in enumerate(chosen):
                row["runs_s"] = [r[j]["seconds"] for r in done]
                self.rows.append(row)


def _raw_task(group: str, size: str, pay: Payloads, n: int) -> Task:
    def run(path: Path) -> list[dict[str, Any]]:
        t_w, t_s, cpu = raw_write(path, pay, n)
        nb = pay.total_bytes(n)
        common = {"size": size, "producers": 1, "records": n, "nbytes": nb, "cpu_s": cpu}
        return [
            _row(group, "raw", kind="baseline", mode="os.write", seconds=t_w, **common),
            _row(
                group,
                "raw+fsync",
                kind="baseline",
                mode="os.write+1 fsync",
                seconds=t_w + t_s,
                sync_s=t_s,
                **common,
            ),
        ]

    return f"{group}/raw", run, ""


def _read_row(
    name: str, kind: str, mode: str, records: int, nbytes: int, seconds: float, cpu_s: float
) -> dict[str, Any]:
    return _row(
        "read",
        name,
        kind=kind,
        mode=mode,
        size="2.5KB",
        producers=1,
        records=records,
        nbytes=nbytes,
        seconds=seconds,
        cpu_s=cpu_s,
    )


def _baseline_task(
    group: str,
    name: str,
    mode: str,
    size: str,
    n: int,
    write: Callable[[Path], tuple[float, float, int]],
    keep: str = "",
) -> Task:
    """A one-row baseline: ``write(path)`` returns (seconds, cpu seconds, bytes)."""

    def run(path: Path) -> list[dict[str, Any]]:
        seconds, cpu, nbytes = write(path)
        return [
            _row(
                group,
                name,
                kind="baseline",
                mode=mode,
                size=size,
                producers=1,
                records=n,
                nbytes=nbytes,
                seconds=seconds,
                cpu_s=cpu,
            )
        ]

    return f"{group}/{name}", run, keep


def _raw_chunked_task(group: str, size: str, pay: Payloads, n: int) -> Task:
    def write(path: Path) -> tuple[float, float, int]:
        t_w, _t_s, cpu = raw_write(path, pay, n, chunk=1 << 20)
        return t_w, cpu, pay.total_bytes(n)

    return _baseline_task(group, "raw-1MiB", "os.write 1MiB", size, n, write)


def _fsync_each_task(group: str, size: str, pay: Payloads, n: int) -> Task:
    def write(path: Path) -> tuple[float, float, int]:
        t, cpu = raw_write_fsync_each(path, pay, n)
        return t, cpu, pay.total_bytes(n)

    return _baseline_task(group, "raw-fsync-each", "write+fsync/rec", size, n, write)


def _jsonl_task(group: str, size: str, pay: Payloads, n: int) -> Task:
    return _baseline_task(
        group, "jsonl", "json.dumps+write", size, n, lambda path: jsonl_write(path, pay, n), "jsonl"
    )


def _store_task(
    group: str, size: str, pay: Payloads, n: int, mode: str, *, encode: bool = False, keep: str = ""
) -> Task:
    name = f"{mode}+encode" if encode else mode

    def run(path: Path) -> list[dict[str, Any]]:
        r = store_write(path, pay, n, mode, encode=encode)
        return [
            _row(
                group,
                name,
                kind="store",
                mode=name,
                size=size,
                producers=1,
                records=n,
                nbytes=pay.total_bytes(n),
                **r,
            )
        ]

    return f"{group}/{name}", run, keep


def _concurrent_task(group: str, size: str, pay: Payloads, n: int, how: str) -> Task:
    fn = store_write_async if how == "async" else store_write_threads
    name = f"always-{PRODUCERS}-{how}"

    def run(path: Path) -> list[dict[str, Any]]:
        r = fn(path, pay, n, PRODUCERS)
        return [
            _row(
                group,
                name,
                kind="store",
                mode=f"always, {how}",
                size=size,
                producers=PRODUCERS,
                records=n,
                nbytes=pay.total_bytes(n),
                **r,
            )
        ]

    return f"{group}/{name}", run, ""


_READ_MODES = {
    "records": "records()",
    "meta": "+decode_meta",
    "trajectory": "+decode_trajectory",
    "numpy": "+decode+np views",
}


def _read_tasks(b: Bench) -> list[Task]:
    def raw(_p: Path) -> list[dict[str, Any]]:
        store = b.keep["store-small"]
        t, cpu, nb = raw_read(sorted(store.glob("*.seg")))
        n = b.count("small")
        return [_read_row("raw", "baseline", "file.read", n, nb, t, cpu)]

    def store(how: str) -> Callable[[Path], list[dict[str, Any]]]:
        def run(_p: Path) -> list[dict[str, Any]]:
            t, cpu, n, nb = store_read(b.keep["store-small"], how)
            if n != b.count("small"):
                raise SystemExit(f"read {n} records, wrote {b.count('small')}")
            return [_read_row(how, "store", _READ_MODES[how], n, nb, t, cpu)]

        return run

    def jsonl(_p: Path) -> list[dict[str, Any]]:
        t, cpu, n, nb = jsonl_read(b.keep["jsonl"])
        return [_read_row("jsonl", "baseline", "json.loads", n, nb, t, cpu)]

    tasks: list[Task] = [("read/raw", raw, "")]
    tasks += [(f"read/{how}", store(how), "") for how in _READ_MODES]
    tasks.append(("read/jsonl", jsonl, ""))
    return tasks


def plan(b: Bench, small: Payloads, big: Payloads) -> list[Task]:
    g, s = "write-2.5KB", "2.5KB"
    n, n1 = b.count("small"), b.count("small_always")
    tasks = [
        _raw_task(g, s, small, n),
        _raw_chunked_task(g, s, small, n),
        _jsonl_task(g, s, small, b.count("small_jsonl")),
        _store_task(g, s, small, n, "os"),
        _store_task(g, s, small, n, "batch", keep="store-small"),
        _store_task(g, s, small, n, "batch", encode=True),
        _fsync_each_task(g, s, small, n1),
        _store_task(g, s, small, n1, "always"),
        _concurrent_task(g, s, small, b.count("small_concurrent"), "async"),
        _concurrent_task(g, s, small, b.count("small_concurrent"), "threads"),
    ]
    g, s = "write-1MB", "1MB"
    n, n1 = b.count("big"), b.count("big_always")
    tasks += [
        _raw_task(g, s, big, n),
        _store_task(g, s, big, n, "os"),
        _store_task(g, s, big, n, "batch"),
        _fsync_each_task(g, s, big, n1),
        _store_task(g, s, big, n1, "always"),
    ]
    return tasks + _read_tasks(b)


# -- report -------------------------------------------------------------------------------


def _get(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    for r in rows:
        if r["key"] == key:
            return r
    return None


def report(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = []
    head = (
        f"{'group':<11} {'row':<18} {'mode':<19} {'size':>5} {'prod':>4} {'records':>9} "
        f"{'MB':>7} {'seconds':>8} {'records/s':>10} {'MB/s':>7} {'cpu s':>6} "
        f"{'x raw':>7} {'x jsonl':>7}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for r in rows:
        group = r["group"]
        raw = _get(rows, f"{group}/raw")
        jl = _get(rows, f"{group}/jsonl")
        x_raw = f"{r['records_per_s'] / raw['records_per_s']:.2f}x" if raw else "-"
        # JSONL has no durability: compare it with rows that don't fsync per record
        comparable = jl and "always" not in r["mode"] and "fsync/rec" not in r["mode"]
        x_jl = f"{r['records_per_s'] / jl['records_per_s']:.2f}x" if comparable else "-"
        lines.append(
            f"{group:<11} {r['name']:<18} {r['mode']:<19} {r['size']:>5} "
            f"{r['producers']!s:>4} {r['records']:>9,} {r['bytes'] / MB:>7,.0f} "
            f"{r['seconds']:>8.3f} {r['records_per_s']:>10,.0f} {r['mb_per_s']:>7,.0f} "
            f"{r['cpu_s']:>6.2f} {x_raw:>7} {x_jl:>7}"
        )

    targets: list[dict[str, Any]] = []
    batch = _get(rows, "write-2.5KB/batch")
    raw = _get(rows, "write-2.5KB/raw")
    chunked = _get(rows, "write-2.5KB/raw-1MiB")
    synced = _get(rows, "write-2.5KB/raw+fsync")
    if batch and raw:
        ratio = batch["records_per_s"] / raw["records_per_s"]
        extra = "".join(
            f"; {batch['records_per_s'] / other['records_per_s']:.0%} of {label}"
            for other, label in (
                (synced, "raw + one final fdatasync"),
                (chunked, "raw in 1 MiB chunks"),
            )
            if other
        )
        targets.append(
            {
                "target": f"batch, 2.5 KB, 1 producer: >= {BATCH_VS_RAW_TARGET:.0%} of raw "
                f"os.write per record and >= {BATCH_RPS_TARGET:,.0f} records/s",
                "measured": f"{batch['records_per_s']:,.0f} records/s = {ratio:.0%} of raw "
                f"({raw['records_per_s']:,.0f} records/s){extra}",
                "pass": ratio >= BATCH_VS_RAW_TARGET and batch["records_per_s"] >= BATCH_RPS_TARGET,
            }
        )
    each = _get(rows, "write-2.5KB/raw-fsync-each")
    single = _get(rows, "write-2.5KB/always")
    for how in ("async", "threads"):
        r = _get(rows, f"write-2.5KB/always-{PRODUCERS}-{how}")
        if not r:
            continue
        vs = []
        if each:
            vs.append(
                f"{r['records_per_s'] / each['records_per_s']:.1f}x one write+fdatasync per record"
            )
        if single:
            vs.append(f"{r['records_per_s'] / single['records_per_s']:.1f}x always with 1 producer")
        per_sync = (
            f"{r['records'] / r['syncs']:.1f} records per fdatasync" if r.get("syncs") else ""
        )
        targets.append(
            {
                "target": f"always, 2.5 KB, {PRODUCERS} producers "
                + (
                    "(asyncio tasks on AsyncStreamWriter, the runtime's StoreSink path): >= "
                    if how == "async"
                    else "(threads on StreamWriter.append; also measured): >= "
                )
                + f"{ALWAYS64_RPS_TARGET:,.0f} records/s",
                "measured": f"{r['records_per_s']:,.0f} records/s ({per_sync}; "
                + ", ".join(vs)
                + ")",
                "pass": r["records_per_s"] >= ALWAYS64_RPS_TARGET,
            }
        )
    rd = _get(rows, "read/records")
    if rd:
        info = []
        for k, label in (
            ("meta", "+decode_meta"),
            ("trajectory", "+decode_trajectory"),
            ("jsonl", "stdlib JSONL"),
        ):
            x = _get(rows, f"read/{k}")
            if x:
                info.append(f"{label} {x['records_per_s']:,.0f}")
        targets.append(
            {
                "target": f"read, 2.5 KB trajectories with packed token arrays: >= "
                f"{READ_RPS_TARGET:,.0f} records/s (StreamReader.records(), CRC-checked "
                "raw records)",
                "measured": f"{rd['records_per_s']:,.0f} records/s, {rd['mb_per_s']:,.0f} MB/s"
                f" (for reference: {', '.join(info)} records/s)",
                "pass": rd["records_per_s"] >= READ_RPS_TARGET,
            }
        )
    lines.append("")
    for t in targets:
        lines.append(f"[{'PASS' if t['pass'] else 'FAIL'}] {t['target']}: {t['measured']}")
    return lines, targets


# -- profiling ----------------------------------------------------------------------------


class _ThreadProfiles:
    """cProfile for the writer threads too: ``cProfile`` only sees the thread that enabled
    it, so the benchmark wraps ``StreamWriter._run`` (in this process only)."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._orig = StreamWriter._run

    def __enter__(self) -> _ThreadProfiles:
        orig = self._orig
        profiles = self.profiles

        def _run(w: StreamWriter) -> None:
            p = cProfile.Profile()
            profiles.append(p)
            p.enable()
            try:
                orig(w)
            finally:
                p.disable()

        StreamWriter._run = _run  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        StreamWriter._run = self._orig  # type: ignore[method-assign]


def _print_stats(title: str, profs: list[cProfile.Profile], out: Path | None) -> None:
    if not profs:
        return
    buf = io.StringIO()
    stats = pstats.Stats(profs[0], stream=buf)
    for p in profs[1:]:
        stats.add(p)
    if out is not None:
        stats.dump_stats(str(out))
    stats.sort_stats("tottime").print_stats(25)
    print(f"\n==== {title} (sorted by tottime) ====", file=sys.stderr)
    print(buf.getvalue(), file=sys.stderr)


def profile_rows(b: Bench, tasks: list[Task], keys: list[str], out_dir: Path | None) -> None:
    by_key = {t[0]: t for t in tasks}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; rows: {', '.join(by_key)}")
    if any(k.startswith("read/") for k in keys):  # the reads need the store and JSONL file
        for k in ("write-2.5KB/batch", "write-2.5KB/jsonl"):
            b.run_once(by_key[k])
    for key in keys:
        main = cProfile.Profile()
        with _ThreadProfiles() as tp:
            main.enable()
            b.run_once(by_key[key])
            main.disable()
        safe = key.replace("/", "_")
        _print_stats(
            f"{key}: main thread (producer / reader)",
            [main],
            out_dir / f"{safe}.main.prof" if out_dir else None,
        )
        _print_stats(
            f"{key}: store writer thread",
            tp.profiles,
            out_dir / f"{safe}.writer.prof" if out_dir else None,
        )


# -- main ---------------------------------------------------------------------------------


def machine_info(root: Path) -> dict[str, Any]:
    import google_crc32c

    info: dict[str, Any] = {
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "msgspec": msgspec.__version__,
        "google_crc32c": getattr(google_crc32c, "implementation", "?"),
        "dir": str(root),
    }
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", str(root)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        info["filesystem"] = out
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke version (< 30 s)")
    parser.add_argument("--json", metavar="PATH", help="write all measurements to PATH")
    parser.add_argument("--dir", metavar="DIR", help="where to write (default: a temp dir in /tmp)")
    parser.add_argument(
        "--repeat", type=int, help="rounds; each row keeps its median run (default 3; quick 1)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--profile",
        action="append",
        metavar="ROW",
        help="cProfile one row instead of the table (e.g. write-2.5KB/batch, read/records, "
        "write-2.5KB/always-64-async); repeatable",
    )
    parser.add_argument("--profile-dir", metavar="DIR", help="also dump .prof files here")
    args = parser.parse_args()

    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="gymux-bench-store-", dir=base))
    repeat = args.repeat or (1 if args.quick or args.profile else 3)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    try:
        print("building payloads ...", file=sys.stderr, flush=True)
        small = Payloads("small", SMALL_POOL)
        big = Payloads("big", BIG_POOL, seed=2)
        print(
            f"  2.5 KB records: mean {small.mean_size:,.0f} B over {SMALL_POOL} trajectories "
            f"({small.trajectories[0].tokens.length if small.trajectories[0].tokens else 0} "
            f"tokens in the first); 1 MB records: mean {big.mean_size:,.0f} B over {BIG_POOL}",
            file=sys.stderr,
        )
        b = Bench(root, args.quick, repeat)
        tasks = plan(b, small, big)
        if args.profile:
            out_dir = Path(args.profile_dir) if args.profile_dir else None
            if out_dir:
                out_dir.mkdir(parents=True, exist_ok=True)
            profile_rows(b, tasks, args.profile, out_dir)
            return
        b.run(tasks)
        info = machine_info(root)
        info["loadavg_before"] = load_before
        lines, targets = report(b.rows)
        total = time.perf_counter() - t_start
        fs = " ".join(info.get("filesystem", "?").split()[:2])
        print()
        print(
            f"Store benchmark ({'quick' if args.quick else 'full'}; each row: median of "
            f"{repeat} run(s)). Python {info['python']}, {info['cpus']} CPUs, {fs} at {base}."
        )
        print(
            f"2.5KB = mean {small.mean_size:,.0f} B, 1MB = mean {big.mean_size:,.0f} B per "
            f"record; MB = 1e6 payload bytes. Load average before/after: "
            f"{load_before[0]:.2f} / {info['loadavg'][0]:.2f}."
        )
        print()
        for line in lines:
            print(line)
        print(f"\n({total:.0f} s in all)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "machine": info,
                        "quick": args.quick,
                        "repeat": repeat,
                        "payload_mean_bytes": {"2.5KB": small.mean_size, "1MB": big.mean_size},
                        "rows": b.rows,
                        "targets": targets,
                        "total_s": total,
                    },
                    f,
                    indent=1,
                )
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
