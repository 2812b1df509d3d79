"""Store shards read as one store: the order key, sharding by rank, groups whole, following
live shards, and shard cursors (exactly once across a restart, all shards in one commit)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gymux.stores import Store, StoreError
from gymux.stores.codec import encode_group, encode_trajectory
from gymux.stores.format import RecordType
from gymux.stores.shards import ShardCursor, StoreShards, rank_of

from doubles.trajectories import make_trajectory


def write_shard(path: Path, node: str, count: int, *, group_at: int | None = None) -> Store:
    """A store with ``count`` records of node ``node`` (record ``group_at`` a group of 2)."""
    store = Store(path)
    with store.writer() as writer:
        for i in range(count):
            if i == group_at:
                members = [
                    make_trajectory(
                        run_id=node, task=i, sample=k, group_id=f"{node}-g", group_size=2
                    )
                    for k in range(2)
                ]
                writer.append(encode_group(members), RecordType.GROUP)
            else:
                writer.append(
                    encode_trajectory(make_trajectory(run_id=node, task=i)), RecordType.TRAJECTORY
                )
    return store


@pytest.fixture
def shards(tmp_path: Path) -> StoreShards:
    # Three nodes with different amounts written.
    write_shard(tmp_path / "b", "b", 5)
    write_shard(tmp_path / "a", "a", 3, group_at=1)
    write_shard(tmp_path / "c", "c", 0)
    return StoreShards({"b": tmp_path / "b", "a": tmp_path / "a", "c": tmp_path / "c"})


def test_one_ordered_view_of_every_shard(shards: StoreShards) -> None:
    assert shards.ids == ["a", "b", "c"]
    keys = [(r.seq, r.shard) for r in shards.records()]
    assert keys == sorted(keys)
    assert keys == [(0, "a"), (0, "b"), (1, "a"), (1, "b"), (2, "a"), (2, "b"), (3, "b"), (4, "b")]
    episodes = [t.episode_id for t in shards.trajectories()]
    # the group record of shard a comes whole, members in order
    assert episodes[2:4] == ["a:e:1:0", "a:e:1:1"]
    assert len(episodes) == 9 and len(set(episodes)) == 9
    # a reader started from a position goes on exactly after it
    items = list(shards.records())
    rest = [(r.seq, r.shard) for r in shards.records(items[3].position)]
    assert rest == keys[4:]
    with pytest.raises(StoreError, match="unknown shard"):
        list(shards.records({"zz": 1}))


def test_ranks_cover_every_shard_disjointly(shards: StoreShards) -> None:
    everything = {(r.shard, r.seq) for r in shards.records()}
    world = 3
    parts = [
        {(r.shard, r.seq) for r in shards.records(rank=k, world_size=world)} for k in range(world)
    ]
    assert set().union(*parts) == everything
    assert sum(len(p) for p in parts) == len(everything)
    for k, part in enumerate(parts):
        assert all(rank_of(seq, shards.index(shard), world) == k for shard, seq in part)
    # one shard: the single store's rule, seq % world_size
    one = StoreShards([shards.stores["b"].path])
    assert [r.seq for r in one.records(rank=1, world_size=2)] == [1, 3]
    # filters apply after sharding
    assert [t.task_id for t in shards.trajectories(rank=0, world_size=1, env="nope")] == []


def test_follow_yields_what_every_live_shard_appends(tmp_path: Path) -> None:
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    shards = StoreShards({"a": a, "b": b})  # nothing written yet (streams missing)
    seen: list[tuple[str, int]] = []
    stop = threading.Event()
    got_all = threading.Event()

    def follow() -> None:
        for r in shards.records(follow=True, poll_s=0.01, stop=stop, idle_timeout_s=60):
            seen.append((r.shard, r.seq))
            if len(seen) == 6:
                got_all.set()
                return

    reader = threading.Thread(target=follow)
    reader.start()
    try:
        with a.writer(durability="always") as wa, b.writer(durability="always") as wb:
            for i in range(3):
                wa.append(
                    encode_trajectory(make_trajectory(run_id="a", task=i)), RecordType.TRAJECTORY
                )
                wb.append(
                    encode_trajectory(make_trajectory(run_id="b", task=i)), RecordType.TRAJECTORY
                )
        assert got_all.wait(60)
    finally:
        stop.set()
        reader.join()
    assert sorted(seen) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    # each shard in its own order
    for shard in "ab":
        assert [s for n, s in seen if n == shard] == [0, 1, 2]


def test_consumer_is_exactly_once_across_restarts(shards: StoreShards) -> None:
    consumer = shards.consumer("grpo", rank=0, world_size=1)
    items = iter(consumer)
    first = [next(items) for _ in range(3)]
    consumer.ack(first[-1], extra={"step": 1})
    # a crash here: the item after the acknowledged one comes again
    unacked = next(items)
    again = shards.consumer("grpo")
    resumed = list(again)
    assert resumed[0].seq == unacked.seq and resumed[0].shard == unacked.shard
    assert again.cursor.state.extra == {"step": 1}
    done = [(i.shard, i.seq) for i in first] + [(i.shard, i.seq) for i in resumed]
    assert done == [(r.shard, r.seq) for r in shards.records()]
    # the group of shard a arrives as one item
    group = [i for i in first + resumed if len(i.trajectories) == 2]
    assert [t.episode_id for t in group[0].trajectories] == ["a:e:1:0", "a:e:1:1"]
    again.ack(resumed[-1])
    assert list(shards.consumer("grpo")) == []
    # the cursor is one file holding every shard, in the first shard's store
    cursor = shards.cursor("grpo")
    assert cursor.path.parent == shards.stores["a"].path / ".cursors" / "trajectories"
    assert cursor.next_seq == {"a": 3, "b": 5, "c": 0}
    assert cursor.state.consumed == 8


def test_consumers_of_two_ranks_split_the_records(shards: StoreShards) -> None:
    got = []
    for rank in range(2):
        consumer = shards.consumer("split", rank=rank, world_size=2)
        items = list(consumer)
        consumer.ack(items[-1])
        got.append({(i.shard, i.seq) for i in items})
        assert list(shards.consumer("split", rank=rank, world_size=2)) == []
    assert not got[0] & got[1]
    assert got[0] | got[1] == {(r.shard, r.seq) for r in shards.records()}


def test_cursor_checks(shards: StoreShards, tmp_path: Path) -> None:
    cursor = shards.cursor("c")
    cursor.commit({"a": 2})
    with pytest.raises(StoreError, match="cannot move back"):
        cursor.commit({"a": 1})
    # a new shard joins: it starts at 0; a cursor naming a shard not given is refused
    write_shard(tmp_path / "d", "d", 2)
    more = StoreShards({**{i: s for i, s in shards.stores.items()}, "d": tmp_path / "d"})
    assert more.cursor("c").next_seq == {"a": 2, "b": 0, "c": 0, "d": 0}
    fewer = StoreShards({"a": shards.stores["a"]})
    with pytest.raises(StoreError, match="not given"):
        fewer.cursor("c")
    cursor.path.write_bytes(b"{")
    with pytest.raises(StoreError, match="unreadable"):
        shards.cursor("c")
    with pytest.raises(ValueError):
        ShardCursor.load(cursor.path, "trajectories", "c", rank=2, world_size=2, shards=["a"])
    with pytest.raises(StoreError, match="no store shards"):
        StoreShards([])
