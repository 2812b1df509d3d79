"""Training readers: sharding, filters, seeded shuffle, exact resume, follow, and torch.

Every test reads a real store written by StreamWriter in the test (small segments, so the
records span several segment files; a few non-trajectory records are mixed in).
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from pathlib import Path

import pytest

import gymux.stores.dataset as dataset_module
from gymux.messages import Message
from gymux.stores import RecordType, Store, StreamReader, StreamWriter
from gymux.stores.codec import encode_trajectory, pack_float32, pack_int32, pack_uint8
from gymux.stores.dataset import TrajectoryDataset
from gymux.trajectory import FinishReason, TokenData, Trajectory

STREAM = "trajectories"
ENVS = ("maze", "wordle", "alfworld")
N = 150


def make_trajectory(i: int) -> Trajectory:
    n = 3 + i % 7
    return Trajectory(
        run_id="run-1",
        episode_id=f"ep-{i:04d}",
        env_id=ENVS[i % 3],
        env_version="1",
        task_id=i,
        split="test",
        sample=i % 2,
        policy="oracle",
        policy_version="v1",
        messages=[
            Message(role="user", content=f"task {i}"),
            Message(role="assistant", content="go north", loss=True),
        ],
        reward=float(i % 4 == 0),
        success=i % 4 == 0,
        finish_reason=FinishReason.DONE if i % 5 else FinishReason.MAX_TURNS,
        policy_step=None if i % 11 == 0 else i // 15,
        tokens=TokenData(
            ids=pack_int32([i * 100 + k for k in range(n)]),
            logprobs=pack_float32([-0.25 * k for k in range(n)]),
            loss_mask=pack_uint8([k % 2 for k in range(n)]),
            tokenizer="test-tok",
        ),
    )


def write_store(root: Path, trajectories: list[Trajectory]) -> dict[int, Trajectory]:
    """Write the trajectories (plus a DATA record every 20) with small segments; returns
    ``seq -> trajectory`` for the trajectory records."""
    by_seq: dict[int, Trajectory] = {}
    store = Store(root)
    with StreamWriter(store.stream_path(STREAM), segment_bytes=4096) as w:
        for i, t in enumerate(trajectories):
            if i % 20 == 7:
                w.append(b"not a trajectory", RecordType.DATA)
            by_seq[w.append(encode_trajectory(t), RecordType.TRAJECTORY)] = t
    return by_seq


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Trajectory]]:
    root = tmp_path_factory.mktemp("dataset") / "store"
    by_seq = write_store(root, [make_trajectory(i) for i in range(N)])
    assert len(StreamReader(root / STREAM).segments()) > 3  # spans several segments
    return root, by_seq


def episodes(items: list[Trajectory]) -> list[str]:
    return [t.episode_id for t in items]


def expected_ids(by_seq: dict[int, Trajectory], keep=lambda t: True) -> set[str]:
    return {t.episode_id for t in by_seq.values() if keep(t)}


# -- sharding -------------------------------------------------------------------------------


FILTER_CASES = [
    ({}, lambda t: True),
    ({"env": "wordle"}, lambda t: t.env_id == "wordle"),
    (
        {"success": True, "min_policy_step": 2},
        lambda t: t.success and t.policy_step is not None and t.policy_step >= 2,
    ),
]


@pytest.mark.parametrize(("filters", "keep"), FILTER_CASES)
def test_ranks_times_workers_are_a_disjoint_cover(store, filters, keep) -> None:
    root, by_seq = store
    world_size, num_workers = 3, 2
    seen: collections.Counter[int] = collections.Counter()
    for rank in range(world_size):
        for worker in range(num_workers):
            ds = TrajectoryDataset(
                root,
                STREAM,
                rank=rank,
                world_size=world_size,
                worker_id=worker,
                num_workers=num_workers,
                decode=False,
                **filters,
            )
            shard = rank * num_workers + worker
            assert ds.shard == shard and ds.num_shards == 6
            seqs = [seq for seq, _ in ds]
            assert seqs, "every shard has records"
            assert all(seq % 6 == shard for seq in seqs)
            assert seqs == sorted(seqs)  # no shuffle: stream order
            seen.update(seqs)
    assert all(count == 1 for count in seen.values()), "some record was read twice"
    assert {by_seq[seq].episode_id for seq in seen} == expected_ids(by_seq, keep)
    assert len(seen) == len(expected_ids(by_seq, keep))


def test_decoded_items_are_the_written_trajectories(store) -> None:
    root, by_seq = store
    items = list(TrajectoryDataset(Store(root, create=False), STREAM))
    assert [t.episode_id for t in items] == [by_seq[s].episode_id for s in sorted(by_seq)]
    assert items == [by_seq[s] for s in sorted(by_seq)]


def test_bad_shard_arguments_are_rejected(store) -> None:
    root, _ = store
    with pytest.raises(ValueError, match="rank"):
        TrajectoryDataset(root, rank=2, world_size=2)
    with pytest.raises(ValueError, match="worker_id"):
        TrajectoryDataset(root, worker_id=1, num_workers=1)
    with pytest.raises(ValueError, match="shuffle_buffer"):
        TrajectoryDataset(root, shuffle_buffer=-1)


# -- shuffle --------------------------------------------------------------------------------


def test_shuffle_is_a_seeded_permutation(store) -> None:
    root, by_seq = store

    def order(seed: int, epoch: int = 0, buffer: int = 16) -> list[str]:
        ds = TrajectoryDataset(root, STREAM, shuffle_buffer=buffer, seed=seed)
        ds.set_epoch(epoch)
        return episodes(list(ds))

    plain = episodes(list(TrajectoryDataset(root, STREAM)))
    a, a_again, b = order(1), order(1), order(2)
    assert a == a_again, "same seed and data: same order"
    assert a != b, "different seeds: different orders"
    assert a != plain
    assert sorted(a) == sorted(b) == sorted(plain), "a permutation: each record exactly once"
    assert len(set(a)) == len(by_seq)
    assert order(1, epoch=1) != a, "set_epoch re-seeds"
    assert order(1, epoch=1) == order(1, epoch=1)
    # the buffer really mixes: some records move far from their stream position
    moved = max(abs(a.index(ep) - plain.index(ep)) for ep in plain)
    assert moved > 16
    # a buffer larger than the data still yields every record once
    assert sorted(order(3, buffer=10_000)) == sorted(plain)


# -- resume ---------------------------------------------------------------------------------


RESUME_OPTIONS = {
    "rank": 1,
    "world_size": 2,
    "worker_id": 1,
    "num_workers": 2,
    "shuffle_buffer": 6,
    "seed": 1234,
}


@pytest.mark.parametrize("filters", [{}, {"env": ["maze", "wordle"]}])
def test_resume_yields_exactly_the_remainder(store, filters) -> None:
    root, _ = store

    def make(**extra) -> TrajectoryDataset:
        return TrajectoryDataset(root, STREAM, **RESUME_OPTIONS, **filters, **extra)

    reference = make()
    reference.set_epoch(3)
    full = episodes(list(reference))
    assert len(full) > 12
    # the reference's final state: everything read, nothing buffered
    final = reference.state_dict()
    assert final["exhausted"] and final["buffer"] == [] and final["yielded"] == len(full)

    for k in sorted({0, 1, 2, 5, 6, 7, len(full) // 2, len(full) - 6, len(full) - 1, len(full)}):
        first = make()
        first.set_epoch(3)
        it = iter(first)
        head = [next(it).episode_id for _ in range(k)]
        state = json.loads(json.dumps(first.state_dict()))  # JSON round trip
        assert state["yielded"] == k
        assert state["epoch"] == 3
        assert len(state["buffer"]) <= RESUME_OPTIONS["shuffle_buffer"]
        assert len(json.dumps(state)) < 1000, "state is small: no payloads"
        if 0 < k < len(full) - 6:
            assert state["position"] is not None and state["buffer"]

        resumed = make()  # a fresh dataset at epoch 0; the state carries epoch 3
        resumed.load_state_dict(state)
        assert resumed.state_dict() == state
        rest = episodes(list(resumed))
        assert head + rest == full, f"resume after {k} items"
        # the rest of the original iterator agrees too
        assert [t.episode_id for t in it] == rest


def test_resume_without_shuffle_and_raw_payloads(store) -> None:
    root, _ = store
    full = list(TrajectoryDataset(root, STREAM, decode=False, success=False))
    for k in (0, 3, len(full) - 1, len(full)):
        ds = TrajectoryDataset(root, STREAM, decode=False, success=False)
        it = iter(ds)
        head = [next(it) for _ in range(k)]
        state = json.loads(json.dumps(ds.state_dict()))
        assert state["buffer"] == []
        again = TrajectoryDataset(root, STREAM, decode=False, success=False)
        again.load_state_dict(state)
        assert head + list(again) == full


def test_resume_twice_and_state_before_iteration(store) -> None:
    root, _ = store
    opts = {"shuffle_buffer": 9, "seed": 5}
    full = episodes(list(TrajectoryDataset(root, STREAM, **opts)))
    ds = TrajectoryDataset(root, STREAM, **opts)
    fresh_state = ds.state_dict()
    assert fresh_state["position"] is None and fresh_state["yielded"] == 0
    it = iter(ds)
    # torchdata takes the worker's initial state right after iter(): it must be "0 yielded"
    assert ds.state_dict() == fresh_state
    got = [next(it).episode_id for _ in range(10)]
    s1 = json.loads(json.dumps(ds.state_dict()))
    ds2 = TrajectoryDataset(root, STREAM, **opts)
    ds2.load_state_dict(s1)
    it2 = iter(ds2)
    assert ds2.state_dict() == s1  # resumed pass, nothing consumed yet
    got += [next(it2).episode_id for _ in range(25)]
    s2 = json.loads(json.dumps(ds2.state_dict()))
    assert s2["yielded"] == 35
    ds3 = TrajectoryDataset(root, STREAM, **opts)
    ds3.load_state_dict(s2)
    got += episodes(list(ds3))
    assert got == full
    # after the resumed pass ends, the next iter() is a fresh pass from the start
    assert episodes(list(ds3)) == full


def test_resume_with_other_options_is_refused(store) -> None:
    root, _ = store
    ds = TrajectoryDataset(root, STREAM, **RESUME_OPTIONS)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    other_rank = {**RESUME_OPTIONS, "rank": 0}
    with pytest.raises(ValueError, match="same sharding"):
        TrajectoryDataset(root, STREAM, **other_rank).load_state_dict(state)
    other_seed = {**RESUME_OPTIONS, "seed": 1}
    with pytest.raises(ValueError, match="seed"):
        TrajectoryDataset(root, STREAM, **other_seed).load_state_dict(state)
    with pytest.raises(ValueError, match="not a TrajectoryDataset state"):
        TrajectoryDataset(root, STREAM).load_state_dict({"position": None})


# -- filters --------------------------------------------------------------------------------


def test_filters_check_metadata_and_never_decode_filtered_bodies(store, monkeypatch) -> None:
    root, by_seq = store
    calls = []
    real = dataset_module.decode_trajectory

    def counting(payload: bytes) -> Trajectory:
        calls.append(1)
        return real(payload)

    monkeypatch.setattr(dataset_module, "decode_trajectory", counting)

    cases = [
        ({"env": "maze"}, lambda t: t.env_id == "maze"),
        ({"success": True}, lambda t: t.success),
        (
            {"success": False, "env": ["wordle", "alfworld"]},
            lambda t: not t.success and t.env_id != "maze",
        ),
        # RL staleness: policy_step known and >= 5 (None never passes)
        ({"min_policy_step": 5}, lambda t: t.policy_step is not None and t.policy_step >= 5),
        ({"finish_reasons": ["max_turns"]}, lambda t: t.finish_reason == FinishReason.MAX_TURNS),
        (
            {"where": lambda m: m.num_tokens >= 8, "env": "maze"},
            lambda t: t.env_id == "maze" and t.tokens.length >= 8,
        ),
    ]
    for filters, keep in cases:
        calls.clear()
        got = list(TrajectoryDataset(root, STREAM, **filters))
        want = [by_seq[s] for s in sorted(by_seq) if keep(by_seq[s])]
        assert got == want, filters
        assert 0 < len(got) < len(by_seq)
        assert len(calls) == len(got), "decoded a body that the filter dropped"

    calls.clear()
    raw = list(TrajectoryDataset(root, STREAM, decode=False, env="maze"))
    assert len(raw) == len(expected_ids(by_seq, lambda t: t.env_id == "maze"))
    assert calls == [], "decode=False never decodes bodies"

    with pytest.raises(ValueError):
        TrajectoryDataset(root, STREAM, finish_reasons=["exploded"])


# -- committed_only and follow ----------------------------------------------------------------


def _wait_for(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_committed_only_stops_at_the_commit(tmp_path) -> None:
    store = Store(tmp_path / "store")
    path = store.stream_path(STREAM)
    writer = StreamWriter(path, durability="batch", sync_interval_s=3600, sync_bytes=1 << 30)
    with writer:
        for i in range(10):
            writer.append(encode_trajectory(make_trajectory(i)), RecordType.TRAJECTORY)
        writer.flush()  # durable: the COMMIT file now says 10
        for i in range(10, 16):
            writer.append(encode_trajectory(make_trajectory(i)), RecordType.TRAJECTORY)
        # written to the segment file, but not synced, so not committed
        _wait_for(lambda: sum(1 for _ in StreamReader(path).records()) == 16)
        assert StreamReader(path).committed()[0] == 10

        committed = TrajectoryDataset(store, STREAM, committed_only=True)
        assert [t.task_id for t in committed] == list(range(10))
        everything = TrajectoryDataset(store, STREAM)
        assert [t.task_id for t in everything] == list(range(16))

        # a pass saved at the commit and resumed after more is durable reads just the new part
        ds = TrajectoryDataset(store, STREAM, committed_only=True, decode=False)
        assert len(list(ds)) == 10
        state = json.loads(json.dumps(ds.state_dict()))
        assert state["exhausted"] and state["position"]["seq"] == 10
        writer.flush()
    resumed = TrajectoryDataset(store, STREAM, committed_only=True)
    resumed.load_state_dict(state)
    assert [t.task_id for t in resumed] == list(range(10, 16))
    again = TrajectoryDataset(store, STREAM, committed_only=True)
    assert [t.task_id for t in again] == list(range(16))


def test_follow_picks_up_records_appended_while_iterating(tmp_path) -> None:
    root = tmp_path / "store"
    write_store(root, [make_trajectory(i) for i in range(5)])
    started = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            started.wait(10)
            with StreamWriter(Store(root).stream_path(STREAM), segment_bytes=2048) as w:
                for i in range(5, 45):
                    w.append(encode_trajectory(make_trajectory(i)), RecordType.TRAJECTORY)
                    if i % 4 == 0:
                        w.flush()
                        time.sleep(0.005)
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    thread = threading.Thread(target=produce)
    thread.start()
    got: list[int] = []
    try:
        # idle_timeout_s only bounds a failure; the loop ends once all 45 have arrived
        ds = TrajectoryDataset(root, STREAM, follow=True, idle_timeout_s=10.0, poll_s=0.005)
        for t in ds:
            got.append(t.task_id)
            started.set()
            if len(got) == 45:
                break
    finally:
        started.set()
        thread.join(20)
    assert not errors
    assert got == list(range(45)), "every record exactly once, in order"


def test_follow_with_shards_and_shuffle(tmp_path) -> None:
    root = tmp_path / "store"
    write_store(root, [make_trajectory(i) for i in range(4)])
    store = Store(root)

    def produce() -> None:
        time.sleep(0.05)
        with StreamWriter(store.stream_path(STREAM)) as w:
            for i in range(4, 40):
                w.append(encode_trajectory(make_trajectory(i)), RecordType.TRAJECTORY)
                if i % 8 == 0:
                    w.flush()
                    time.sleep(0.01)

    thread = threading.Thread(target=produce)
    thread.start()
    results: dict[int, list[int]] = {}

    def consume(worker: int) -> None:
        ds = TrajectoryDataset(
            store, STREAM, worker_id=worker, num_workers=2, shuffle_buffer=4, seed=9,
            follow=True, idle_timeout_s=5.0, poll_s=0.005,  # slack for a busy machine
        )  # fmt: skip
        results[worker] = [t.task_id for t in ds]

    consumers = [threading.Thread(target=consume, args=(w,)) for w in range(2)]
    for c in consumers:
        c.start()
    for c in [thread, *consumers]:
        c.join(20)
    assert sorted(results[0] + results[1]) == list(range(40))
    assert results[0] != sorted(results[0]), "shuffled"


# -- torch ----------------------------------------------------------------------------------


def _tagged(t: Trajectory) -> dict:
    """A transform that runs in the DataLoader worker: tensors plus where they came from."""
    import torch

    from gymux.stores.torch_dataset import trajectory_tensors

    info = torch.utils.data.get_worker_info()
    out = trajectory_tensors(t)
    out["episode"] = t.episode_id
    out["task_id"] = t.task_id
    out["worker"] = -1 if info is None else info.id
    return out


def test_torch_import_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "gymux.stores.torch_dataset", raising=False)
    with pytest.raises(ImportError, match=r"pip install gymux\[torch\]"):
        import gymux.stores.torch_dataset  # noqa: F401


def test_torch_dataloader_workers_are_a_disjoint_cover(store) -> None:
    torch = pytest.importorskip("torch")
    from gymux.stores.torch_dataset import TorchTrajectoryDataset

    root, by_seq = store
    seen: list[str] = []
    for rank in range(2):
        ds = TorchTrajectoryDataset(
            root, STREAM, rank=rank, world_size=2, transform=_tagged, shuffle_buffer=5, seed=1
        )
        assert isinstance(ds, torch.utils.data.IterableDataset)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        items = list(loader)
        workers = {item["worker"] for item in items}
        assert workers == {0, 1}, "both worker processes produced data"
        seq_of = {t.episode_id: s for s, t in by_seq.items()}
        for item in items:
            # shard = rank * num_workers + worker, over 2 ranks x 2 workers
            assert seq_of[item["episode"]] % 4 == rank * 2 + item["worker"]
        seen += [item["episode"] for item in items]
    assert sorted(seen) == sorted(expected_ids(by_seq))
    assert len(seen) == len(set(seen))


def test_token_tensors_are_zero_copy_views_with_the_right_dtypes(store) -> None:
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    from gymux.stores.torch_dataset import token_tensors, trajectory_tensors

    root, _ = store
    t = next(iter(TrajectoryDataset(root, STREAM, env="wordle")))
    n = 3 + t.task_id % 7
    tensors = token_tensors(t.tokens)
    assert tensors["ids"].dtype == torch.int32
    assert tensors["logprobs"].dtype == torch.float32
    assert tensors["loss_mask"].dtype == torch.uint8
    assert tensors["ids"].tolist() == [t.task_id * 100 + k for k in range(n)]
    assert tensors["logprobs"].tolist() == [-0.25 * k for k in range(n)]
    assert tensors["loss_mask"].tolist() == [k % 2 for k in range(n)]
    # no copy: the tensors point into the decoded bytes objects
    for key, buf in (("ids", t.tokens.ids), ("logprobs", t.tokens.logprobs)):
        assert tensors[key].data_ptr() == np.frombuffer(buf, dtype=np.uint8).ctypes.data

    full = trajectory_tensors(t)
    assert full["reward"].dtype == torch.float32 and full["success"].dtype == torch.bool
    assert full["policy_step"].item() == (-1 if t.policy_step is None else t.policy_step)
    empty = token_tensors(TokenData(ids=b"", loss_mask=b""))
    assert empty["ids"].shape == (0,) and empty["ids"].dtype == torch.int32
    assert "logprobs" not in empty
    with pytest.raises(ValueError, match="no token data"):
        trajectory_tensors(Trajectory(**{**_fields(t), "tokens": None}))


def _fields(t: Trajectory) -> dict:
    return {f: getattr(t, f) for f in t.__struct_fields__}


def test_pad_collate_batches_from_a_dataloader(store) -> None:
    torch = pytest.importorskip("torch")
    from gymux.stores.torch_dataset import TorchTrajectoryDataset, pad_collate, trajectory_tensors

    root, by_seq = store
    ds = TorchTrajectoryDataset(root, STREAM, world_size=1, transform=trajectory_tensors)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=pad_collate)
    batches = list(loader)
    assert sum(b["ids"].shape[0] for b in batches) == len(by_seq)
    b = batches[0]
    lengths = b["lengths"].tolist()
    assert b["ids"].shape == (4, max(lengths)) and b["ids"].dtype == torch.int32
    assert b["attention_mask"].sum(dim=1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert b["loss_mask"][row, n:].sum().item() == 0
        assert b["ids"][row, n:].eq(0).all()
    assert b["reward"].shape == (4,) and b["success"].dtype == torch.bool


def test_torch_dataset_state_roundtrip_in_process(store) -> None:
    pytest.importorskip("torch")
    from gymux.stores.torch_dataset import TorchTrajectoryDataset

    root, _ = store
    opts = {"world_size": 1, "shuffle_buffer": 7, "seed": 11, "transform": _tagged}
    full = [x["episode"] for x in TorchTrajectoryDataset(root, STREAM, **opts)]
    ds = TorchTrajectoryDataset(root, STREAM, **opts)
    it = iter(ds)
    head = [next(it)["episode"] for _ in range(13)]
    state = json.loads(json.dumps(ds.state_dict()))
    again = TorchTrajectoryDataset(root, STREAM, **opts)
    again.load_state_dict(state)
    assert head + [x["episode"] for x in again] == full
    with pytest.raises(TypeError, match="DataLoader"):
        TorchTrajectoryDataset(root, STREAM, num_workers=2)


def test_stateful_dataloader_resumes_exactly(store) -> None:
    pytest.importorskip("torch")
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    from gymux.stores.torch_dataset import TorchTrajectoryDataset

    root, _ = store

    def loader():
        ds = TorchTrajectoryDataset(
            root, STREAM, world_size=1, shuffle_buffer=5, seed=2, transform=_tagged
        )
        return stateful.StatefulDataLoader(ds, batch_size=None, num_workers=2)

    full = [x["episode"] for x in loader()]
    for k in (0, 7, len(full) // 2):
        first = loader()
        it = iter(first)
        head = [next(it)["episode"] for _ in range(k)]
        state = first.state_dict()
        del it
        second = loader()
        second.load_state_dict(state)
        assert head + [x["episode"] for x in second] == full
