"""Trainer batches from the store: tensors, sizes, ranks, staleness, exactly-once acks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gymux.stores import RecordType, Store
from gymux.stores.batches import TrainingBatches, grpo_advantages, sample_version
from gymux.stores.codec import encode_group, encode_trajectory
from gymux.stores.cursor import ConsumerCursor
from gymux.trajectory import TokenData, Trajectory, Turn, pack_float32, pack_int32, pack_uint8

from doubles.procs import REPO_ROOT, clean_env, reaped
from doubles.trajectories import make_trajectory


def member(gid: str, i: int, n: int, *, length: int, version: int | None, reward: float):
    prompt = length // 2
    return make_trajectory(
        episode_id=f"{gid}-{i}",
        sample=i,
        group_id=gid,
        group_size=n,
        reward=reward,
        policy_step=version,
        tokens=TokenData(
            ids=pack_int32([100 + (i + k) % 50 for k in range(length)]),
            loss_mask=pack_uint8([0] * prompt + [1] * (length - prompt)),
            logprobs=pack_float32([0.0] * prompt + [-0.5] * (length - prompt)),
        ),
    )


def make_group(gid: str, n: int, rng: random.Random, version: int | None = 0):
    return [
        member(
            gid,
            i,
            n,
            length=rng.randint(3, 12),
            version=version,
            reward=float(rng.randint(0, 3)),
        )
        for i in range(n)
    ]


def write_groups(root: Path, groups: list[list[Trajectory]]) -> None:
    with Store(root).writer() as w:
        for g in groups:
            if len(g) == 1 and g[0].group_id is None:
                w.append(encode_trajectory(g[0]), RecordType.TRAJECTORY)
            else:
                w.append(encode_group(g), RecordType.GROUP)


def test_grpo_advantages_are_group_normalised() -> None:
    adv = grpo_advantages([1.0, 0.0, 0.0, 1.0])
    assert adv == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-5)
    assert grpo_advantages([2.0, 2.0]) == [0.0, 0.0]
    assert grpo_advantages([3.0, 1.0], scale=False) == [1.0, -1.0]
    assert grpo_advantages([]) == []


def test_sample_version_prefers_policy_step_then_oldest_turn_version() -> None:
    assert sample_version(make_trajectory(policy_step=4)) == 4
    turns = [
        Turn(index=0, observation="", raw_output="", action=None, weight_version="7"),
        Turn(
            index=1,
            observation="",
            raw_output="",
            action=None,
            weight_version="9",
            weight_versions=[(0, "5"), (3, "9")],
        ),
    ]
    assert sample_version(make_trajectory(turns=turns)) == 5
    assert sample_version(make_trajectory()) is None


def test_batch_arrays_are_padded_and_match_the_trajectories(tmp_path: Path) -> None:
    rng = random.Random(1)
    groups = [make_group(f"g{k}", 3, rng, version=k) for k in range(4)]
    write_groups(tmp_path / "s", groups)
    batches = TrainingBatches(tmp_path / "s", "t", max_sequences=6)
    got = list(batches)
    assert [b.group_ids for b in got] == [["g0", "g1"], ["g2", "g3"]]
    for b, pair in zip(got, [groups[:2], groups[2:]], strict=True):
        rows = [t for g in pair for t in g]
        width = max(t.tokens.length for t in rows)  # type: ignore[union-attr]
        assert b.input_ids.shape == (6, width) and b.input_ids.dtype == np.int64
        for i, t in enumerate(rows):
            assert t.tokens is not None
            n = t.tokens.length
            assert b.input_ids[i, :n].tolist() == list(np.frombuffer(t.tokens.ids, "<i4"))
            assert (b.input_ids[i, n:] == 0).all()
            assert b.attention_mask[i].tolist() == [1] * n + [0] * (width - n)
            assert b.loss_mask[i, :n].tolist() == list(np.frombuffer(t.tokens.loss_mask, "u1"))
            assert b.loss_mask[i, n:].sum() == 0
            assert b.logprobs[i, :n].tolist() == list(np.frombuffer(t.tokens.logprobs, "<f4"))  # type: ignore[arg-type]
        assert b.group_index.tolist() == [0, 0, 0, 1, 1, 1]
        assert b.weight_versions.tolist() == [t.policy_step for t in rows]
        for gi, g in enumerate(pair):
            sel = b.group_index == gi
            expected = grpo_advantages([t.reward for t in g])
            assert b.advantages[sel].tolist() == pytest.approx(expected, abs=1e-6)
        torch_batch = b.to_torch()
        assert torch_batch["input_ids"].shape == (6, width)
    assert [(b.start_seq, b.end_seq) for b in got] == [(0, 2), (2, 4)]


def test_sizes_by_sequences_and_tokens_never_split_groups(tmp_path: Path) -> None:
    rng = random.Random(2)
    groups = [make_group(f"g{k}", rng.randint(1, 5), rng) for k in range(40)]
    write_groups(tmp_path / "s", groups)
    sizes = {g[0].group_id: len(g) for g in groups}
    for kwargs in (
        {"max_sequences": 7},
        {"max_tokens": 60},
        {"max_sequences": 4, "max_tokens": 40},
    ):
        seen: list[str] = []
        for b in TrainingBatches(tmp_path / "s", "t", **kwargs):  # type: ignore[arg-type]
            seen += b.group_ids
            assert b.num_sequences == sum(sizes[g] for g in b.group_ids)  # whole groups
            alone = len(b.group_ids) == 1
            if "max_sequences" in kwargs and not alone:
                assert b.num_sequences <= kwargs["max_sequences"]
            if "max_tokens" in kwargs and not alone:
                assert b.input_ids.size <= kwargs["max_tokens"]
        assert seen == list(sizes)


def test_ranks_split_groups_by_record(tmp_path: Path) -> None:
    rng = random.Random(3)
    groups = [make_group(f"g{k}", 2, rng) for k in range(9)]
    solo = make_trajectory(
        episode_id="solo",
        tokens=TokenData(ids=pack_int32([1, 2]), loss_mask=pack_uint8([0, 1])),
    )
    text_only = make_trajectory(episode_id="text")
    write_groups(tmp_path / "s", [*groups, [solo], [text_only]])
    per_rank = []
    for rank in range(3):
        batches = TrainingBatches(tmp_path / "s", "t", rank=rank, world_size=3, max_sequences=4)
        per_rank.append([g for b in batches for g in b.group_ids])
        for seq in range(11):
            name = "solo" if seq == 9 else f"g{seq}"
            if seq < 10:
                assert (name in per_rank[rank]) == (seq % 3 == rank)
    assert sorted(g for gs in per_rank for g in gs) == sorted(
        [*(f"g{k}" for k in range(9)), "solo"]
    )
    rank1 = TrainingBatches(tmp_path / "s", "t", rank=1, world_size=3, max_sequences=4)
    list(rank1)
    assert rank1.skipped_no_tokens == 1  # seq 10, text only


def test_ack_moves_the_cursor_and_unacked_batches_come_again(tmp_path: Path) -> None:
    rng = random.Random(4)
    write_groups(tmp_path / "s", [make_group(f"g{k}", 2, rng) for k in range(6)])
    first = TrainingBatches(tmp_path / "s", "t", max_sequences=4)
    it = iter(first)
    b1, b2 = next(it), next(it)
    with pytest.raises(Exception, match="order"):
        first.ack(b2)
    first.ack(b1, extra={"step": 1})
    # A new process: b2 was never acknowledged, so it comes again; b1 does not.
    second = TrainingBatches(tmp_path / "s", "t", max_sequences=4)
    again = list(second)
    assert [b.group_ids for b in again] == [b2.group_ids, ["g4", "g5"]]
    for b in again:
        second.ack(b)
    cursor = ConsumerCursor.load(tmp_path / "s", "t")
    assert cursor.next_seq == 6 and cursor.state.consumed_groups == 6
    assert list(TrainingBatches(tmp_path / "s", "t", max_sequences=4)) == []
    # Another consumer name has its own cursor.
    assert len(list(TrainingBatches(tmp_path / "s", "other", max_sequences=4))) == 3


def test_stale_groups_are_skipped_and_counted(tmp_path: Path) -> None:
    rng = random.Random(5)
    versions = [0, 5, 1, 6, 2, 7]
    write_groups(
        tmp_path / "s", [make_group(f"g{k}", 2, rng, version=v) for k, v in enumerate(versions)]
    )
    batches = TrainingBatches(
        tmp_path / "s", "t", max_sequences=2, max_staleness=2, current_version=lambda: 7
    )
    got = []
    for b in batches:
        got.append((b.group_ids, b.skipped_stale))
        batches.ack(b)
    assert got == [(["g1"], 1), (["g3"], 1), (["g5"], 1)]
    assert ConsumerCursor.load(tmp_path / "s", "t").state.skipped_stale == 3
    with pytest.raises(ValueError):
        TrainingBatches(tmp_path / "s", "t", max_sequences=2, max_staleness=1)


@pytest.mark.parametrize("seed", range(12))
def test_property_no_consumed_sample_is_older_than_s(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    staleness = rng.randint(0, 3)
    version = [0]
    groups = []
    for k in range(rng.randint(5, 40)):
        if rng.random() < 0.2:
            version[0] += 1
        v = max(0, version[0] - rng.randint(0, 6))
        groups.append(make_group(f"g{k}", rng.randint(1, 4), rng, version=v))
    write_groups(tmp_path / "s", groups)
    trainer = [rng.randint(0, 3)]
    batches = TrainingBatches(
        tmp_path / "s",
        "t",
        max_sequences=rng.randint(1, 8),
        max_staleness=staleness,
        current_version=lambda: trainer[0],
    )
    consumed: list[str] = []
    for b in batches:
        assert (b.weight_versions >= trainer[0] - staleness).all()
        consumed += b.group_ids
        batches.ack(b)
        trainer[0] += rng.randint(0, 2)  # the trainer's weights move on between steps
    cursor = ConsumerCursor.load(tmp_path / "s", "t")
    # Every group was consumed or skipped, once, except stale ones after the last batch.
    assert len(consumed) == len(set(consumed)) == cursor.state.consumed_groups
    assert cursor.state.consumed_groups + batches.skipped_stale <= len(groups)
    assert set(consumed) <= {g[0].group_id for g in groups}
    tail = len(groups) - cursor.next_seq
    assert cursor.state.consumed_groups + cursor.state.skipped_stale + tail == len(groups)


# -- two ranks, one SIGKILLed mid-epoch and restarted ------------------------------------

CONSUMER = """
import json, os, sys
from pathlib import Path
from gymux.stores.batches import TrainingBatches

store, rank, world, logdir, total, pause_at = sys.argv[1:7]
rank, world, total, pause_at = int(rank), int(world), int(total), int(pause_at)
logdir = Path(logdir)
batches = TrainingBatches(store, "trainer", rank=rank, world_size=world, max_sequences=8,
                          follow=True)
# Logs of batches yielded but never acknowledged (a kill between log and ack) are void.
for f in logdir.glob(f"r{rank}-*.json"):
    if int(f.name.split("-")[1]) >= batches.cursor.next_seq:
        f.unlink()
print("ready", batches.cursor.next_seq, flush=True)
n = 0
if batches.cursor.state.consumed_groups < total:
    for batch in batches:
        path = logdir / f"r{rank}-{batch.start_seq:08d}-{batch.end_seq:08d}.json"
        with open(path, "w") as fh:
            json.dump(batch.group_ids, fh)
            fh.flush()
            os.fsync(fh.fileno())
        print("logged", n, flush=True)
        if n == pause_at:
            sys.stdin.readline()  # the parent kills us here: logged, not acknowledged
        batches.ack(batch)
        n += 1
        if batches.cursor.state.consumed_groups >= total:
            break
print("done", flush=True)
"""


def spawn_consumer(root: Path, rank: int, logdir: Path, total: int, pause_at: int):
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CONSUMER,
            str(root),
            str(rank),
            "2",
            str(logdir),
            str(total),
            str(pause_at),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=clean_env(),
    )


def wait_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, f"child ended: {proc.stderr.read() if proc.stderr else ''}"
        if line.startswith(prefix):
            return line.strip()


def test_two_ranks_one_killed_and_restarted_consume_every_group_once(tmp_path: Path) -> None:
    root, logdir = tmp_path / "s", tmp_path / "logs"
    logdir.mkdir()
    rng = random.Random(6)
    groups = [make_group(f"g{k}", 4, rng) for k in range(48)]  # 24 per rank: 12 batches
    store = Store(root)
    with store.writer(durability="always") as w:
        for g in groups[:16]:
            w.append(encode_group(g), RecordType.GROUP)
        rank0 = spawn_consumer(root, 0, logdir, 24, pause_at=3)
        rank1 = spawn_consumer(root, 1, logdir, 24, pause_at=-1)
        with reaped(rank0), reaped(rank1):
            wait_line(rank0, "ready")
            wait_line(rank1, "ready")
            for g in groups[16:]:  # the rest arrives while they consume: a live store
                w.append(encode_group(g), RecordType.GROUP)
            w.flush()
            assert wait_line(rank0, "logged 3") == "logged 3"
            os.kill(rank0.pid, signal.SIGKILL)
            rank0.wait(30)
            assert rank0.returncode == -signal.SIGKILL
            acked = ConsumerCursor.load(root, "trainer", rank=0, world_size=2)
            assert acked.state.consumed_groups == 6  # batches 0-2 acknowledged
            restarted = spawn_consumer(root, 0, logdir, 24, pause_at=-1)
            with reaped(restarted):
                assert wait_line(restarted, "ready") == f"ready {acked.next_seq}"
                out0, err0 = restarted.communicate(timeout=120)
                out1, err1 = rank1.communicate(timeout=120)
            assert restarted.returncode == 0, err0
            assert rank1.returncode == 0, err1
            assert out0.strip().endswith("done") and out1.strip().endswith("done")
    consumed: Counter[str] = Counter()
    for f in logdir.glob("*.json"):
        consumed.update(json.loads(f.read_text()))
    assert consumed == Counter(g[0].group_id for g in groups)  # all of them, none twice
