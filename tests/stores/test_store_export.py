"""Exports of a store (gymux.stores.export, gymux.stores.hf): AgentTraj and chat JSONL,
Parquet/Arrow with token list columns, and the Hugging Face ``datasets`` loader.

Stores are real: one is written by running the runtime (``gymux run --env maze --policy
oracle``), the others by appending encoded trajectories with a ``StreamWriter``; outputs
are real files read back with ``json``, ``pyarrow`` and ``datasets``.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import structlog

from gymux.cli.main import main
from gymux.env_plugins.builtin.maze.env import TEST_IDS
from gymux.messages import Message
from gymux.stores import CorruptionError, RecordType, Store, StoreError
from gymux.stores.codec import encode_trajectory, pack_float32, pack_int32, pack_uint8
from gymux.stores.export import (
    agenttraj_record,
    export_agenttraj,
    export_chat,
    export_parquet,
    to_arrow_table,
)
from gymux.stores.format import FRAME, SEGMENT_HEADER, encode_frame, list_segments, segment_name
from gymux.stores.hf import load_hf_dataset
from gymux.trajectory import FinishReason, TokenData, Trajectory, Turn

from doubles.trajectories import make_trajectory as build

pytestmark = pytest.mark.usefixtures("fresh_structlog")


# -- helpers ----------------------------------------------------------------------------


def make_trajectory(
    i: int,
    *,
    env: str = "maze",
    success: bool = True,
    policy_step: int | None = None,
    tokens: str = "full",
    system: bool = False,
) -> Trajectory:
    """A trajectory shaped like the runtime's: instruction, "OK", then obs/action pairs."""
    messages = [Message(role="system", content=f"sys {i}")] if system else []
    messages += [
        Message(role="user", content=f"instruction {i}"),
        Message(role="assistant", content="OK"),
        Message(role="user", content=f"obs {i}.0"),
        Message(role="assistant", content=f"act {i}.0", loss=True),
        Message(role="user", content=f"obs {i}.1"),
        Message(role="assistant", content=f"act {i}.1", loss=True),
    ]
    token_data = None
    if tokens != "none":
        n = 5 + i % 7
        ids = [151_643, -7, *range(i * 1000, i * 1000 + n - 2)]
        token_data = TokenData(
            ids=pack_int32(ids),
            loss_mask=pack_uint8([k % 2 for k in range(n)]),
            logprobs=pack_float32([-0.25 * k for k in range(n)]) if tokens == "full" else None,
            tokenizer="tok-a",
        )
    return build(
        run_id="run-1",
        env=env,
        task=i,
        policy="scripted",
        policy_version="v1",
        messages=messages,
        turns=[Turn(index=0, observation="o", raw_output="r", action="a", reward=0.5)],
        reward=1.0 if success else 0.25 * (i % 3),
        success=success,
        finish_reason=FinishReason.DONE if success else FinishReason.MAX_TURNS,
        policy_step=policy_step,
        tokens=token_data,
    )


def write_store(path: Path, trajectories: list[Trajectory], **options) -> Path:
    options.setdefault("durability", "os")
    with Store(path).writer(**options) as w:
        for t in trajectories:
            w.append(encode_trajectory(t), RecordType.TRAJECTORY)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Trajectory]]:
    """The store of a real ``gymux run --env maze --policy oracle``, and its trajectories."""
    structlog.reset_defaults()
    out = tmp_path_factory.mktemp("maze") / "out"
    rc = main(
        ["run", "--env", "maze", "--policy", "oracle", "--out", str(out), "--progress", "off"]
    )
    structlog.reset_defaults()
    assert rc == 0
    store = out / "store"
    trajs = list(Store(store, create=False).trajectories())
    assert len(trajs) == len(TEST_IDS)
    return store, trajs


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Trajectory]]:
    """20 trajectories over two envs, mixed outcomes, policy steps and token data, written
    over several segments."""
    trajs = [
        make_trajectory(
            i,
            env="maze" if i % 2 else "wordle",
            success=i % 3 != 0,
            policy_step=i // 4 if i % 5 else None,
            tokens=["full", "no-logprobs", "none"][i % 3] if i % 4 else "full",
        )
        for i in range(20)
    ]
    path = tmp_path_factory.mktemp("mixed") / "store"
    write_store(path, trajs, segment_bytes=4096)
    assert len(list_segments(path / "trajectories")) > 2
    return path, trajs


# -- AgentTraj --------------------------------------------------------------------------


def test_agenttraj_export_of_a_real_run(maze_run, tmp_path: Path) -> None:
    store, trajs = maze_run
    out = tmp_path / "agenttraj.jsonl"
    result = export_agenttraj(store, out)
    rows = read_jsonl(out)
    assert result.trajectories == len(rows) == len(trajs)
    assert result.bytes == out.stat().st_size
    assert not out.with_name(out.name + ".tmp").exists()
    for row, t in zip(rows, trajs, strict=True):
        assert list(row) == ["conversations", "item_id", "reward", "success"]
        assert row["item_id"] == f"maze_{t.task_id}"
        assert row["reward"] == t.reward and isinstance(row["reward"], float)
        assert row["success"] is t.success is True
        conv = row["conversations"]
        assert len(conv) == len(t.messages)
        for k, (turn, message) in enumerate(zip(conv, t.messages, strict=True)):
            assert list(turn) == ["from", "value", "loss"]
            assert turn["from"] == ("human" if k % 2 == 0 else "gpt")
            assert turn["from"] == {"user": "human", "assistant": "gpt"}[message.role]
            assert turn["value"] == message.content
        # the instruction, the scripted "OK" and the observations are not learned from;
        # every model output is
        assert conv[0]["loss"] is False and conv[0]["value"].startswith("You are an expert maze")
        assert conv[1] == {"from": "gpt", "value": "OK", "loss": False}
        assert all(turn["loss"] is False for turn in conv if turn["from"] == "human")
        assert all(turn["loss"] is True for turn in conv[3:] if turn["from"] == "gpt")
        assert sum(turn["loss"] for turn in conv) == len(t.turns)


def test_agenttraj_maps_system_messages_and_keeps_alternation() -> None:
    t = make_trajectory(3, system=True)
    t.messages.insert(4, Message(role="user", content="extra obs"))  # two user turns in a row
    t.messages.append(Message(role="assistant", content="no-loss tail", loss=False))
    rec = agenttraj_record(t)
    conv = rec["conversations"]
    sides = [c["from"] for c in conv]
    assert sides == ["human", "gpt", "human", "gpt", "human", "gpt"]
    assert conv[0] == {"from": "human", "value": "sys 3\n\ninstruction 3", "loss": False}
    assert conv[2]["value"] == "obs 3.0\n\nextra obs"
    # joined gpt turns learn only if every part was marked for loss
    assert conv[5] == {"from": "gpt", "value": "act 3.1\n\nno-loss tail", "loss": False}
    assert [c["loss"] for c in conv[:5]] == [False, False, False, True, False]
    assert rec["item_id"] == "maze_3" and rec["success"] is True
    nulled = agenttraj_record(t, null_human_loss=True)["conversations"]
    assert [c["loss"] for c in nulled if c["from"] == "human"] == [None, None, None]
    assert [c["loss"] for c in nulled if c["from"] == "gpt"] == [False, True, False]


def test_agenttraj_filters(mixed_store, tmp_path: Path) -> None:
    store, trajs = mixed_store
    out = tmp_path / "f.jsonl"
    export_agenttraj(store, out, env="wordle", success=True, min_policy_step=2)
    expected = [
        t
        for t in trajs
        if t.env_id == "wordle" and t.success and t.policy_step is not None and t.policy_step >= 2
    ]
    assert expected  # the filter keeps some and drops some
    assert len(expected) < len(trajs)
    assert [r["item_id"] for r in read_jsonl(out)] == [f"wordle_{t.task_id}" for t in expected]
    failed = tmp_path / "failed.jsonl"
    export_agenttraj(store, failed, success=False)
    rows = read_jsonl(failed)
    assert [r["item_id"] for r in rows] == [
        f"{t.env_id}_{t.task_id}" for t in trajs if not t.success
    ]
    assert all(r["success"] is False for r in rows)


# -- chat -------------------------------------------------------------------------------


def test_chat_export(mixed_store, tmp_path: Path) -> None:
    store, trajs = mixed_store
    out = tmp_path / "chat.jsonl"
    result = export_chat(store, out, env=["maze"])
    rows = read_jsonl(out)
    maze = [t for t in trajs if t.env_id == "maze"]
    assert result.trajectories == len(rows) == len(maze)
    for row, t in zip(rows, maze, strict=True):
        assert row == {
            "messages": [{"role": m.role, "content": m.content} for m in t.messages],
            "env": "maze",
            "task_id": t.task_id,
            "reward": t.reward,
            "success": t.success,
            "finish_reason": str(t.finish_reason),
            "episode_id": t.episode_id,
        }


def test_chat_export_keeps_system_role(tmp_path: Path) -> None:
    store = write_store(tmp_path / "store", [make_trajectory(0, system=True)])
    export_chat(store, tmp_path / "c.jsonl")
    (row,) = read_jsonl(tmp_path / "c.jsonl")
    assert row["messages"][0] == {"role": "system", "content": "sys 0"}
    assert [m["role"] for m in row["messages"][1:3]] == ["user", "assistant"]


# -- Parquet / Arrow --------------------------------------------------------------------


def test_parquet_round_trip(mixed_store, tmp_path: Path) -> None:
    store, trajs = mixed_store
    out = tmp_path / "t.parquet"
    result = export_parquet(store, out, batch_rows=6)
    assert result.trajectories == len(trajs)
    meta = pq.ParquetFile(out).metadata
    assert meta.num_row_groups == 4  # 20 rows in batches of 6
    table = pq.read_table(out)
    assert table.num_rows == len(trajs)
    schema = table.schema
    assert schema.field("token_ids").type == pa.list_(pa.int32())
    assert schema.field("logprobs").type == pa.list_(pa.float32())
    assert schema.field("loss_mask").type == pa.list_(pa.uint8())
    assert schema.field("messages").type == pa.list_(
        pa.struct([("role", pa.string()), ("content", pa.string()), ("loss", pa.bool_())])
    )
    ids_col = table.column("token_ids").combine_chunks()
    lp_col = table.column("logprobs").combine_chunks()
    mask_col = table.column("loss_mask").combine_chunks()
    rows = table.to_pylist()
    for k, (row, t) in enumerate(zip(rows, trajs, strict=True)):
        assert row["seq"] == k
        assert row["episode_id"] == t.episode_id and row["env_id"] == t.env_id
        assert row["task_id"] == t.task_id and row["reward"] == t.reward
        assert row["success"] == t.success and row["policy_step"] == t.policy_step
        assert row["finish_reason"] == str(t.finish_reason)
        assert row["num_turns"] == 1
        assert row["messages"] == [
            {"role": m.role, "content": m.content, "loss": m.loss} for m in t.messages
        ]
        if t.tokens is None:
            assert row["token_ids"] is None and row["loss_mask"] is None
            assert row["logprobs"] is None and row["num_tokens"] == 0
            continue
        ids = ids_col[k].values.to_numpy(zero_copy_only=False)
        mask = mask_col[k].values.to_numpy(zero_copy_only=False)
        assert ids.dtype == np.int32 and mask.dtype == np.uint8
        np.testing.assert_array_equal(ids, np.frombuffer(t.tokens.ids, "<i4"))
        np.testing.assert_array_equal(mask, np.frombuffer(t.tokens.loss_mask, np.uint8))
        assert row["num_tokens"] == len(ids) and row["tokenizer"] == "tok-a"
        if t.tokens.logprobs is None:
            assert row["logprobs"] is None
        else:
            lp = lp_col[k].values.to_numpy(zero_copy_only=False)
            assert lp.dtype == np.float32
            np.testing.assert_array_equal(lp, np.frombuffer(t.tokens.logprobs, "<f4"))
    # the in-memory table is the same data
    assert to_arrow_table(store).equals(table.cast(to_arrow_table(store).schema))


def test_parquet_filters_and_large_token_arrays(tmp_path: Path) -> None:
    n = 200_000
    rng = np.random.default_rng(0)
    ids = rng.integers(-(2**31), 2**31 - 1, n, dtype=np.int32)
    lps = rng.standard_normal(n).astype(np.float32)
    mask = (rng.random(n) < 0.5).astype(np.uint8)
    big = make_trajectory(1, env="wordle")
    big.tokens = TokenData(ids=ids.tobytes(), logprobs=lps.tobytes(), loss_mask=mask.tobytes())
    store = write_store(tmp_path / "s", [make_trajectory(0), big, make_trajectory(2)])
    out = tmp_path / "w.parquet"
    assert export_parquet(store, out, env="wordle").trajectories == 1
    table = pq.read_table(out)
    assert table.column("task_id").to_pylist() == [1]
    np.testing.assert_array_equal(table.column("token_ids")[0].values.to_numpy(), ids)
    np.testing.assert_array_equal(table.column("logprobs")[0].values.to_numpy(), lps)
    np.testing.assert_array_equal(table.column("loss_mask")[0].values.to_numpy(), mask)


def test_empty_export_has_the_schema(mixed_store, tmp_path: Path) -> None:
    store, _ = mixed_store
    out = tmp_path / "none.parquet"
    assert export_parquet(store, out, env="nonexistent").trajectories == 0
    table = pq.read_table(out)
    assert table.num_rows == 0 and "token_ids" in table.column_names
    assert export_chat(store, tmp_path / "none.jsonl", env="x").trajectories == 0
    assert (tmp_path / "none.jsonl").read_text() == ""


# -- HF datasets ------------------------------------------------------------------------


def test_hf_loader_offline(mixed_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, trajs = mixed_store

    def no_network(self, *args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    keep = [t for t in trajs if t.success and t.env_id == "maze"]
    for kwargs in ({}, {"cache_dir": tmp_path / "cache"}):
        ds = load_hf_dataset(store, success=True, env="maze", **kwargs)
        assert ds.num_rows == len(keep)
        assert {"messages", "token_ids", "logprobs", "loss_mask", "reward", "env_id"} <= set(
            ds.column_names
        )
        assert ds["task_id"] == [t.task_id for t in keep]
        assert ds["success"] == [True] * len(keep)
        row = ds[0]
        assert row["messages"][3] == {
            "role": "assistant",
            "content": keep[0].messages[3].content,
            "loss": True,
        }
        assert keep[0].tokens is not None
        assert row["token_ids"] == np.frombuffer(keep[0].tokens.ids, "<i4").tolist()
        assert row["loss_mask"] == list(keep[0].tokens.loss_mask)
        assert str(ds.features["token_ids"].feature.dtype) == "int32"
        assert str(ds.features["loss_mask"].feature.dtype) == "uint8"
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 1


# -- options and errors -----------------------------------------------------------------


def test_committed_only_stops_at_the_durable_offset(tmp_path: Path) -> None:
    trajs = [make_trajectory(i) for i in range(3)]
    store = write_store(tmp_path / "s", trajs)
    stream = store / "trajectories"
    # a complete record on disk past the published COMMIT position (written, not yet durable)
    seg = stream / segment_name(list_segments(stream)[-1])
    with open(seg, "ab") as fh:
        fh.write(encode_frame(3, RecordType.TRAJECTORY, encode_trajectory(make_trajectory(3))))
    assert export_chat(store, tmp_path / "all.jsonl").trajectories == 4
    assert export_chat(store, tmp_path / "c.jsonl", committed_only=True).trajectories == 3
    assert export_parquet(store, tmp_path / "c.parquet", committed_only=True).trajectories == 3


def _flip_middle_record(stream: Path) -> tuple[int, int]:
    """Flip a payload byte of the 2nd record of the first segment; its (start, end)."""
    seg = stream / segment_name(list_segments(stream)[0])
    data = bytearray(seg.read_bytes())
    start = SEGMENT_HEADER.size
    _crc, length, _seq, _t = FRAME.unpack_from(data, start)
    start += FRAME.size + length
    _crc, length, _seq, _t = FRAME.unpack_from(data, start)
    end = start + FRAME.size + length
    data[start + FRAME.size + length // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    return start, end


def test_damage_aborts_export_without_leaving_a_file_unless_salvage(tmp_path: Path) -> None:
    trajs = [make_trajectory(i) for i in range(12)]
    store = write_store(tmp_path / "s", trajs, segment_bytes=4096)
    start, end = _flip_middle_record(store / "trajectories")
    out = tmp_path / "x.jsonl"
    with pytest.raises(CorruptionError, match=f"at byte {start}: bad crc"):
        export_agenttraj(store, out)
    assert not out.exists() and not (tmp_path / "x.jsonl.tmp").exists()
    result = export_agenttraj(store, out, salvage=True)
    assert result.trajectories == 11 and result.skipped_bytes == end - start
    assert [r["item_id"] for r in read_jsonl(out)] == [f"maze_{i}" for i in range(12) if i != 1]


def test_missing_optional_packages_give_install_hints(
    mixed_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = mixed_store
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(StoreError, match=r"pip install gymux\[arrow\]"):
        export_parquet(store, tmp_path / "x.parquet")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(StoreError, match=r"pip install gymux\[datasets\]"):
        load_hf_dataset(store)
    assert not (tmp_path / "x.parquet").exists()


def test_unknown_stream_and_missing_store(mixed_store, tmp_path: Path) -> None:
    store, _ = mixed_store
    with pytest.raises(StoreError, match="no stream 'nope'"):
        export_chat(store, tmp_path / "x.jsonl", stream="nope")
    with pytest.raises(StoreError, match="no gymux store"):
        export_chat(tmp_path / "missing", tmp_path / "x.jsonl")
    assert not (tmp_path / "missing").exists()
