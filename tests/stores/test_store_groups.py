"""Atomic RL groups in the store: readers see all of a group or none of it, also after a
crash mid-group (a torn ``GROUP`` record is cut by recovery)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import anyio
import pytest

from gymux.stores import RecordType, Store
from gymux.stores.codec import decode_group, encode_group, encode_trajectory
from gymux.stores.dataset import TrajectoryDataset
from gymux.stores.export import iter_trajectories, to_arrow_table
from gymux.stores.format import list_segments, segment_name
from gymux.stores.sink import StoreSink
from gymux.trajectory import Trajectory

from doubles.procs import REPO_ROOT, clean_env, reaped
from doubles.trajectories import make_trajectory


def group(gid: str, n: int, *, task: int = 0) -> list[Trajectory]:
    return [
        make_trajectory(
            episode_id=f"{gid}-{i}",
            task=task,
            sample=i,
            group_id=gid,
            group_size=n,
            reward=float(i),
            success=i % 2 == 0,
        )
        for i in range(n)
    ]


def write_mixed(root: Path) -> list[list[Trajectory]]:
    """Solo trajectories and groups, interleaved; returns them as written, in order."""
    units: list[list[Trajectory]] = []
    store = Store(root)
    with store.writer() as w:
        for k in range(12):
            if k % 3 == 0:
                unit = [make_trajectory(episode_id=f"solo{k}", task=k)]
                w.append(encode_trajectory(unit[0]), RecordType.TRAJECTORY)
            else:
                unit = group(f"g{k}", 2 + k % 4, task=k)
                w.append(encode_group(unit), RecordType.GROUP)
            units.append(unit)
    return units


def ids(items: list[Trajectory]) -> list[str]:
    return [t.episode_id for t in items]


def test_group_codec_round_trips_and_rejects_bad_payloads() -> None:
    members = group("g", 3)
    payload = encode_group(members)
    assert decode_group(payload) == [encode_trajectory(t) for t in members]
    with pytest.raises(ValueError):
        decode_group(payload[:-1])
    with pytest.raises(ValueError):
        decode_group(payload + b"x")
    with pytest.raises(ValueError):
        encode_group([])


def test_readers_expand_groups_in_order(tmp_path: Path) -> None:
    units = write_mixed(tmp_path / "s")
    everything = [t.episode_id for unit in units for t in unit]
    store = Store(tmp_path / "s")
    assert ids(list(store.trajectories())) == everything
    assert ids([t for _, t in iter_trajectories(store)]) == everything
    table = to_arrow_table(store)
    assert table.column("episode_id").to_pylist() == everything
    # A filter is asked about each member: a group can be kept in part.
    kept = ids(list(store.trajectories(success=True)))
    assert kept == [t.episode_id for unit in units for t in unit if t.success]
    assert "g1-0" in kept and "g1-1" not in kept


def test_dataset_shards_whole_groups_and_resumes_mid_group(tmp_path: Path) -> None:
    units = write_mixed(tmp_path / "s")
    everything = Counter(t.episode_id for unit in units for t in unit)
    seen: Counter[str] = Counter()
    for rank in range(2):
        got = ids(list(TrajectoryDataset(tmp_path / "s", rank=rank, world_size=2)))
        seen.update(got)
        # Record seq k goes to rank k % 2: a group's members all land on one rank.
        for k, unit in enumerate(units):
            for t in unit:
                assert (t.episode_id in got) == (k % 2 == rank)
    assert seen == everything
    # Stop after every possible number of items, even mid-group, and resume.
    full = ids(list(TrajectoryDataset(tmp_path / "s", shuffle_buffer=4, seed=3)))
    assert Counter(full) == everything
    for stop_after in range(len(full) + 1):
        ds = TrajectoryDataset(tmp_path / "s", shuffle_buffer=4, seed=3)
        it = iter(ds)
        head = [next(it).episode_id for _ in range(stop_after)]
        state = json.loads(json.dumps(ds.state_dict()))
        again = TrajectoryDataset(tmp_path / "s", shuffle_buffer=4, seed=3)
        again.load_state_dict(state)
        assert head + ids(list(again)) == full, stop_after


def test_torch_dataset_yields_group_members(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from gymux.stores.torch_dataset import TorchTrajectoryDataset

    units = write_mixed(tmp_path / "s")
    ds = TorchTrajectoryDataset(tmp_path / "s", rank=0, world_size=1)
    assert ids(list(ds)) == [t.episode_id for unit in units for t in unit]


def test_a_torn_group_is_invisible_and_recovery_cuts_it(tmp_path: Path) -> None:
    root = tmp_path / "s"
    units = write_mixed(root)
    stream = Store(root).stream_path("trajectories")
    seg = stream / segment_name(list_segments(stream)[-1])
    size = seg.stat().st_size
    last = units[-1]
    assert len(last) > 1  # the last unit is a group
    with open(seg, "r+b") as fh:  # the writer died in the middle of the last group
        fh.truncate(size - 40)
    expected = [t.episode_id for unit in units[:-1] for t in unit]
    assert ids(list(Store(root).trajectories())) == expected  # before recovery
    with Store(root).writer() as w:  # recovery
        assert w.recovered_tail_bytes > 0
        w.append(encode_group(group("after", 2)), RecordType.GROUP)
    assert ids(list(Store(root).trajectories())) == [*expected, "after-0", "after-1"]


CHILD = """
import sys, anyio
from gymux.stores.sink import StoreSink
from gymux.trajectory import Trajectory

def member(gid, i, n):
    return Trajectory(run_id="r", episode_id=f"{gid}-{i}", env_id="e", env_version="1",
                      task_id=0, split="test", sample=i, policy="p", policy_version="1",
                      group_id=gid, group_size=n, reward=float(i))

async def main():
    async with StoreSink(sys.argv[1]) as sink:
        k = 0
        while True:
            n = 1 + k % 5
            gid = f"{sys.argv[2]}{k}"
            await sink.write_group([member(gid, i, n) for i in range(n)])
            print(gid, flush=True)
            k += 1

anyio.run(main)
"""


def test_sigkilled_writer_leaves_only_whole_groups(tmp_path: Path) -> None:
    root = tmp_path / "s"
    acked: list[str] = []
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), f"k{round_}-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=clean_env(),
        )
        with reaped(proc):
            assert proc.stdout is not None
            lines = []
            for _ in range(20 + 7 * round_):  # wait for acknowledged groups, then kill
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else ""
                lines.append(line.strip())
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        acked += lines
        # Readers (before any recovery) see whole groups only.
        members: dict[str, list[Trajectory]] = {}
        for t in Store(root).trajectories():
            assert t.group_id is not None
            members.setdefault(t.group_id, []).append(t)
        for gid, ts in members.items():
            assert [t.sample for t in ts] == list(range(ts[0].group_size)), gid
        assert set(acked) <= set(members)  # every acknowledged group survived


def test_follow_reader_sees_groups_whole(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store(root).writer():
        pass  # the stream exists before the reader follows it
    got: list[Trajectory] = []
    done = threading.Event()

    def follow() -> None:
        for t in Store(root).trajectories(follow=True, idle_timeout_s=30):
            got.append(t)
            if t.episode_id == "end-0":
                break
        done.set()

    async def write() -> None:
        async with StoreSink(root, durability="batch") as sink:
            for k in range(20):
                await sink.write_group(group(f"g{k}", 1 + k % 4))
                await sink.flush()
            await sink.write_group(group("end", 1))

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    anyio.run(write)
    assert done.wait(60)
    thread.join(10)
    by_group = Counter(t.group_id for t in got)
    assert by_group == Counter({f"g{k}": 1 + k % 4 for k in range(20)} | {"end": 1})
