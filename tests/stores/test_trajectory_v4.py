"""Trajectory schema 4: the new fields, reading schema 3 records, and groups in sinks."""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import msgspec
import pytest

from gymux.messages import Message
from gymux.sinks import JsonlSink, read_jsonl, write_group
from gymux.stores import RecordType, Store
from gymux.stores.codec import decode_meta, decode_trajectory, encode_trajectory
from gymux.stores.sink import StoreSink
from gymux.trajectory import SCHEMA_VERSION, FinishReason, TokenData, Trajectory, Turn

from doubles.trajectories import make_trajectory

# -- the schema 3 layout, as the code before schema 4 wrote it ------------------------------


class TurnV3(msgspec.Struct, kw_only=True):
    index: int
    observation: str
    raw_output: str
    action: str | None
    reward: float = 0.0
    done: bool = False
    parse_error: str | None = None
    policy_s: float = 0.0
    env_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    policy_finish: str = "stop"
    weight_version: str | None = None


class TrajectoryV3(msgspec.Struct, kw_only=True):
    schema_version: int = 3
    run_id: str
    episode_id: str
    env_id: str
    env_version: str
    task_id: int
    split: str
    sample: int
    policy: str
    policy_version: str
    messages: list[Message] = msgspec.field(default_factory=list)
    turns: list[TurnV3] = msgspec.field(default_factory=list)
    reward: float = 0.0
    success: bool = False
    finish_reason: FinishReason = FinishReason.DONE
    error: str | None = None
    attempts: int = 1
    invalid_actions: int = 0
    started_at: float = 0.0
    wall_s: float = 0.0
    policy_step: int | None = None
    tokens: TokenData | None = None


class MetaV3(msgspec.Struct, kw_only=True, array_like=True):
    schema_version: int
    run_id: str
    episode_id: str
    env_id: str
    task_id: int
    split: str
    sample: int
    policy: str
    policy_version: str
    policy_step: int | None
    reward: float
    success: bool
    finish_reason: str
    num_turns: int
    num_tokens: int


def v3_trajectory() -> TrajectoryV3:
    return TrajectoryV3(
        run_id="r",
        episode_id="old",
        env_id="e",
        env_version="1",
        task_id=3,
        split="test",
        sample=0,
        policy="p",
        policy_version="1",
        turns=[TurnV3(index=0, observation="o", raw_output="a", action="a", reward=1.0)],
        reward=1.0,
        success=True,
        policy_step=7,
    )


def v3_store_payload(old: TrajectoryV3) -> bytes:
    meta = MetaV3(
        schema_version=3,
        run_id=old.run_id,
        episode_id=old.episode_id,
        env_id=old.env_id,
        task_id=old.task_id,
        split=old.split,
        sample=old.sample,
        policy=old.policy,
        policy_version=old.policy_version,
        policy_step=old.policy_step,
        reward=old.reward,
        success=old.success,
        finish_reason="done",
        num_turns=1,
        num_tokens=0,
    )
    meta_bytes = msgspec.msgpack.encode(meta)
    return struct.pack("<I", len(meta_bytes)) + meta_bytes + msgspec.msgpack.encode(old)


def test_schema_is_4_with_the_new_fields_defaulted() -> None:
    assert SCHEMA_VERSION == 4
    t = make_trajectory(turns=[Turn(index=0, observation="o", raw_output="a", action="a")])
    assert t.schema_version == 4
    assert (t.terminal, t.truncated, t.group_id, t.group_size) == (False, False, None, 1)
    turn = t.turns[0]
    assert (turn.span, turn.queue_s, turn.abort, turn.weight_versions) == (None, 0.0, None, None)


def test_timings_sum_the_turns() -> None:
    turns = [
        Turn(index=i, observation="", raw_output="", action=None, queue_s=q, policy_s=p, env_s=e)
        for i, (q, p, e) in enumerate([(0.5, 1.0, 0.25), (0.0, 2.0, 0.5), (1.5, 0.5, 0.0)])
    ]
    assert make_trajectory(turns=turns).timings == {"queue_s": 2.0, "policy_s": 3.5, "env_s": 0.75}
    assert make_trajectory().timings == {"queue_s": 0.0, "policy_s": 0.0, "env_s": 0.0}


def test_schema_3_records_decode_with_defaults() -> None:
    old = v3_trajectory()
    for encoded, decode in (
        (msgspec.json.encode(old), msgspec.json.Decoder(Trajectory).decode),
        (msgspec.msgpack.encode(old), msgspec.msgpack.Decoder(Trajectory).decode),
    ):
        t = decode(encoded)
        assert t.schema_version == 3
        assert (t.episode_id, t.policy_step, t.reward) == ("old", 7, 1.0)
        assert (t.terminal, t.truncated, t.group_id, t.group_size) == (False, False, None, 1)
        assert t.turns[0].reward == 1.0
        assert (t.turns[0].span, t.turns[0].queue_s, t.turns[0].abort) == (None, 0.0, None)


def test_schema_3_store_records_are_read_next_to_schema_4_ones(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    new = make_trajectory(
        episode_id="new",
        group_id="g",
        group_size=1,
        terminal=True,
        turns=[
            Turn(
                index=0,
                observation="o",
                raw_output="a",
                action="a",
                span=(2, 5),
                queue_s=0.5,
                abort="weight_update",
                weight_versions=[(2, "3"), (4, "4")],
            )
        ],
    )
    with store.writer() as w:
        w.append(v3_store_payload(v3_trajectory()), RecordType.TRAJECTORY)
        w.append(encode_trajectory(new), RecordType.TRAJECTORY)
    old_read, new_read = list(store.trajectories())
    assert old_read.schema_version == 3 and old_read.group_id is None
    assert new_read == new
    meta = decode_meta(v3_store_payload(v3_trajectory()))
    assert (meta.group_id, meta.group_size, meta.weight_version) == (None, 1, None)
    assert decode_meta(encode_trajectory(new)).group_id == "g"
    assert decode_trajectory(encode_trajectory(new)).turns[0].weight_versions == [
        (2, "3"),
        (4, "4"),
    ]


def group(gid: str, n: int) -> list[Trajectory]:
    return [
        make_trajectory(episode_id=f"{gid}-{i}", task=1, sample=i, group_id=gid, group_size=n)
        for i in range(n)
    ]


def test_jsonl_sink_writes_a_group_in_one_write_and_reads_it_back(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    writes: list[bytes] = []

    async def main() -> None:
        sink = JsonlSink(path)
        await sink.open()
        assert sink._file is not None
        real_write = sink._file.write

        def spy(data: bytes) -> int:
            writes.append(data)
            return real_write(data)

        sink._file.write = spy  # type: ignore[method-assign]
        await sink.write(make_trajectory(episode_id="solo"))
        await sink.flush()
        await write_group(sink, group("g", 3))
        await sink.aclose()

    anyio.run(main)
    assert writes[-1].count(b"\n") == 3  # the group's three lines in one write
    assert [t.episode_id for t in read_jsonl(path)] == ["solo", "g-0", "g-1", "g-2"]


def test_read_jsonl_drops_a_torn_group(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    enc = msgspec.json.Encoder()
    lines = [enc.encode(t) + b"\n" for t in [make_trajectory(episode_id="solo"), *group("g", 3)]]
    data = b"".join(lines)
    # Torn after the first two lines of the group (on a line boundary), and mid-line.
    for cut in (len(b"".join(lines[:3])), len(b"".join(lines[:3])) + 10):
        path.write_bytes(data[:cut])
        assert [t.episode_id for t in read_jsonl(path, strict=False)] == ["solo"]
        with pytest.raises(ValueError, match="torn"):
            list(read_jsonl(path))
    path.write_bytes(data)
    assert len(list(read_jsonl(path))) == 4


def test_write_group_falls_back_to_write_for_old_sinks() -> None:
    got: list[str] = []

    class OldSink:
        async def write(self, trajectory: Trajectory) -> None:
            got.append(trajectory.episode_id)

    anyio.run(write_group, OldSink(), group("g", 2))  # type: ignore[arg-type]
    assert got == ["g-0", "g-1"]


def test_store_sink_write_group_is_one_group_record(tmp_path: Path) -> None:
    async def main() -> None:
        async with StoreSink(tmp_path / "s") as sink:
            await sink.write(make_trajectory(episode_id="solo"))
            await sink.write_group(group("g", 4))
            assert sink.written == 5

    anyio.run(main)
    store = Store(tmp_path / "s")
    types = [r.type for r in store.reader().records()]
    assert types == [RecordType.TRAJECTORY, RecordType.GROUP]
    assert [t.episode_id for t in store.trajectories()] == ["solo", "g-0", "g-1", "g-2", "g-3"]


def test_turns_are_not_tracked_by_the_collector_and_round_trip_as_before() -> None:
    """``Turn`` is ``gc=False`` (thousands in flight, none can be in a cycle): not tracked,
    whatever its optional fields hold, and encoded and decoded as any struct."""
    import gc

    turn = Turn(
        index=2,
        observation="obs",
        raw_output="out",
        action="go",
        span=(3, 9),
        weight_versions=[(0, "v1"), (4, "v2")],
        abort="weight_update",
    )
    assert not gc.is_tracked(turn)
    back = msgspec.json.decode(msgspec.json.encode(turn), type=Turn)
    assert back == turn and not gc.is_tracked(back)
    assert back.weight_versions == [(0, "v1"), (4, "v2")] and back.span == (3, 9)
