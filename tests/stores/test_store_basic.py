"""Store directory handling, the runtime's store sink, and trajectory filters."""

from __future__ import annotations

import json

import anyio
import pytest

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.registry import Registry
from gymux.runtime import Runtime
from gymux.stores import Store, StoreError, StoreSink
from gymux.trajectory import FinishReason

from doubles import envs as E
from doubles.trajectories import make_trajectory


def run_probe(out, tasks, **runtime_kw):
    reg = Registry(entry_points_group=None)
    reg.register(E.plugin(E.AsyncProbe, max_instances=4))

    async def main():
        async with Runtime(RuntimeConfig(), registry=reg, out=out, **runtime_kw) as rt:
            return await rt.run(Workload(env="probe", tasks=tasks, samples=2), policy=E.SaysGo())

    return anyio.run(main)


def test_runtime_writes_every_trajectory_to_the_store(tmp_path):
    result = run_probe(tmp_path, [0, 1, E.STEP_RAISES])
    store = Store(tmp_path / "store", create=False)
    assert store.streams() == ["trajectories"]
    on_disk = list(store.trajectories())
    assert sorted(t.episode_id for t in on_disk) == sorted(
        t.episode_id for t in result.trajectories
    )
    reader = store.reader()
    assert reader.committed()[0] == 6  # the sink flushed and the writer closed cleanly
    assert [r.seq for r in reader.records()] == list(range(6))


def test_filters_on_metadata_and_where_combine(tmp_path):
    run_probe(tmp_path, [0, 1, E.STEP_RAISES])
    store = Store(tmp_path / "store", create=False)
    ok = list(store.trajectories(success=True))
    assert len(ok) == 4 and all(t.success for t in ok)
    failed = list(store.trajectories(finish_reasons=["env_error"]))
    assert len(failed) == 2 and all(t.finish_reason is FinishReason.ENV_ERROR for t in failed)
    both = list(store.trajectories(where=lambda m: m.task_id == 0, success=True))
    assert len(both) == 2 and {t.task_id for t in both} == {0}
    none = list(store.trajectories(where=lambda m: True, env="nope"))
    assert none == []


def test_store_directory_errors(tmp_path):
    with pytest.raises(StoreError, match="no gymux store"):
        Store(tmp_path / "missing", create=False)
    store = Store(tmp_path / "s")
    with pytest.raises(ValueError, match="invalid stream name"):
        store.writer("../escape")
    (tmp_path / "s" / "STORE").write_text(json.dumps({"format": "gymux-store", "version": 99}))
    with pytest.raises(StoreError, match="newer gymux"):
        Store(tmp_path / "s")
    (tmp_path / "s" / "STORE").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        Store(tmp_path / "s")


def test_store_sink_open_failure_is_a_sink_error(tmp_path):
    from gymux.sinks import SinkError

    blocker = tmp_path / "file"
    blocker.write_text("x")

    async def main():
        sink = StoreSink(blocker / "store")
        await sink.open()

    with pytest.raises(SinkError, match="cannot open store"):
        anyio.run(main)


def test_second_runtime_on_the_same_store_gets_a_clear_error(tmp_path):
    reg = Registry(entry_points_group=None)
    reg.register(E.plugin(E.AsyncProbe))

    async def main():
        async with (
            Runtime(RuntimeConfig(), registry=reg, out=tmp_path),
            Runtime(RuntimeConfig(), registry=reg, out=tmp_path),
        ):
            pass

    from gymux.sinks import SinkError

    with pytest.raises(SinkError, match="already has a writer"):
        anyio.run(main)


def test_store_sink_as_an_async_context_manager(tmp_path):
    from gymux.stores.codec import decode_trajectory

    trajectory = make_trajectory(policy_version="v1")

    async def main():
        async with StoreSink(tmp_path / "store", durability="always") as sink:
            await sink.write(trajectory)
            await sink.flush()
            assert sink.written == 1
        await sink.aclose()  # closing twice is harmless

    anyio.run(main)
    store = Store(tmp_path / "store", create=False)
    [record] = store.reader().records()
    assert decode_trajectory(record.payload) == trajectory
    assert store.reader().committed()[0] == 1
