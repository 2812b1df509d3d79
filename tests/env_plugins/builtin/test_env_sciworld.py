"""The sciworld env against real ScienceWorld JVMs (scienceworld 1.2.3, Java 17)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("scienceworld")

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.builtin.sciworld.env import (
    AGENTGYM_EXCLUDED,
    TASK_TYPES,
    SciWorldEnv,
    SciWorldOracle,
    load_gold,
    parse_sciworld_action,
    task_id_of,
    task_of,
)
from gymux.env_plugins.builtin.sciworld.jvm import java_processes
from gymux.env_plugins.builtin.sciworld.plugin import SCIWORLD_SPEC, plugin
from gymux.env_plugins.conformance import check_plugin
from gymux.env_plugins.protocol import (
    ActionParseError,
    EnvError,
    Task,
    TransientEnvError,
)
from gymux.env_plugins.registry import Registry
from gymux.messages import Message, PolicyRequest
from gymux.policies.oracle import OraclePolicy
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason

from doubles import envs as E

JAR = "scienceworld.jar"
TEST_IDS = SCIWORLD_SPEC.split("test").ids
TRAIN_IDS = SCIWORLD_SPEC.split("train").ids


def my_jvms() -> list[int]:
    """Live ScienceWorld JVMs started by this test process."""
    return java_processes(JAR, parent=os.getpid())


def gone(pid: int) -> bool:
    return pid not in java_processes(JAR)


@pytest.fixture(scope="module")
def env() -> Iterator[SciWorldEnv]:
    """One warm instance (one JVM) shared by the tests of this module that can share it."""
    instance = SciWorldEnv()
    yield instance
    pid = instance.pid
    instance.close()
    if pid is not None:
        assert gone(pid)


# --------------------------------------------------------------------------- ids and splits


def test_task_id_enumeration() -> None:
    names = [t.name for t in TASK_TYPES]
    assert names == sorted(names) and len(names) == 30
    # AgentGym's order (ScienceWorld's task ids 1-1 .. 8-2, all variations), then the
    # seven types AgentGym excludes (test_agentgym_ids.py checks every AgentGym item)
    assert task_of(0) == ("boil", 0)
    assert task_of(29) == ("boil", 29)
    assert task_of(30) == ("melt", 0)
    assert task_of(120) == ("use-thermometer", 0)
    assert task_of(4638) == ("identify-life-stages-2", 9)
    assert task_of(4639) == ("grow-plant", 0)
    assert task_of(7206) == ("mendelian-genetics-unknown-plant", 479)
    for task_id in range(0, 7207, 7):
        assert task_id_of(*task_of(task_id)) == task_id
    for bad in (-1, 7207):
        with pytest.raises(EnvError, match=r"0\.\.7206"):
            task_of(bad)
    with pytest.raises(KeyError):
        task_id_of("boil", 30)


def test_splits() -> None:
    assert len(TEST_IDS) == 201 and len(TRAIN_IDS) == 2312
    assert not set(TEST_IDS) & set(TRAIN_IDS)
    types = {t.name: t for t in TASK_TYPES}
    per_type: dict[str, list[int]] = {}
    for task_id in TEST_IDS:
        name, variation = task_of(task_id)
        assert variation in types[name].test_variations
        per_type.setdefault(name, []).append(variation)
    assert set(per_type) == set(types) - AGENTGYM_EXCLUDED and len(per_type) == 23
    assert per_type["boil"] == list(range(21, 30))  # all 9 test variations
    assert per_type["find-animal"] == list(range(225, 235))  # the first 10 of 75
    for task_id in TRAIN_IDS:
        name, variation = task_of(task_id)
        assert name not in AGENTGYM_EXCLUDED and variation < types[name].train


def test_shipped_gold_covers_the_test_split() -> None:
    gold = load_gold()
    assert sorted(gold) == sorted(TEST_IDS)
    lengths = sorted(len(actions) for actions in gold.values())
    assert lengths[0] >= 1
    assert SCIWORLD_SPEC.max_turns >= lengths[-1]


def test_spec_reward_and_success() -> None:
    assert SCIWORLD_SPEC.reward_range == (0.0, 100.0)
    assert SCIWORLD_SPEC.success.is_success(100.0)
    assert not SCIWORLD_SPEC.success.is_success(99.0)
    assert "Thought:" in SCIWORLD_SPEC.instruction and "Action:" in SCIWORLD_SPEC.instruction
    assert plugin.execution.value == "thread" and plugin.max_instances == 4


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thought:\nfirst the door\n\nAction:\nopen door to kitchen", "open door to kitchen"),
        ("Action: open   door to kitchen.", "open door to kitchen"),
        ("Action: `look around`", "look around"),
        ("Thought: x\nAction: wait\nThought: no\nAction: focus on water", "focus on water"),
        ("Action: 0", "0"),
    ],
)
def test_parse_accepts(text: str, expected: str) -> None:
    assert parse_sciworld_action(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("look around", "Action"),
        ("Action: ...", "empty"),
        ("Action: " + "x " * 150, "characters long"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ActionParseError, match=message):
        parse_sciworld_action(text)


# --------------------------------------------------------------------------- the env


def test_errors_before_any_jvm() -> None:
    instance = SciWorldEnv()
    assert instance.pid is None  # the JVM starts on the first reset
    with pytest.raises(EnvError, match="before reset"):
        instance.step("look around")
    with pytest.raises(EnvError, match="unknown sciworld task id"):
        instance.reset(Task(id=10**6))
    instance.close()
    with pytest.raises(EnvError, match="closed"):
        instance.reset(Task(id=0))
    assert instance.pid is None


def test_reset_step_invalid_action_and_reuse(env: SciWorldEnv) -> None:
    task_id = task_id_of("boil", 21)
    obs = env.reset(Task(id=task_id))
    assert obs.text.startswith("Your task is to boil")
    assert "This room is called" in obs.text
    assert obs.admissible_actions is None
    result = env.step("xyzzy the frobnicator")
    assert result.observation.text == "No known action matches that input."
    assert (result.reward, result.done) == (0.0, False)
    assert result.info["valid"] is False and result.info["score"] == 0
    assert result.info["task_name"] == "boil" and result.info["variation"] == 21
    result = env.step("look around")
    assert result.info["valid"] is True and not result.done
    pid = env.pid
    # reset on the same instance: same JVM, same start
    assert env.reset(Task(id=task_id)).text == obs.text
    other = env.reset(Task(id=task_id_of("find-animal", 225)))
    assert other.text.startswith("Your task is to find") and env.pid == pid


def test_first_observation_does_not_depend_on_history(env: SciWorldEnv) -> None:
    # With default JVM settings these list their objects in another order once other
    # tasks have been loaded in the same JVM (see JAVA_OPTIONS).
    ids = [task_id_of("chemistry-mix-paint-tertiary-color", 27), task_id_of("melt", 24)]
    first = {i: env.reset(Task(id=i)).text for i in ids}
    for other in TEST_IDS[::25]:
        env.reset(Task(id=other))
        env.step("look around")
    assert {i: env.reset(Task(id=i)).text for i in reversed(ids)} == first


def test_failed_task_scores_zero_and_ends(env: SciWorldEnv) -> None:
    env.reset(Task(id=task_id_of("boil", 21)))
    result = env.step("focus on air")  # the wrong substance: ScienceWorld fails the task
    assert result.info["score"] == -100
    assert (result.reward, result.done) == (0.0, True)
    assert not SCIWORLD_SPEC.success.is_success(result.reward)
    with pytest.raises(EnvError, match="after the episode ended"):
        env.step("look around")


def test_gold_sequence_scores_100(env: SciWorldEnv) -> None:
    task_id = task_id_of("use-thermometer", 405)
    env.reset(Task(id=task_id))
    rewards = []
    for action in load_gold()[task_id]:
        result = env.step(action)
        rewards.append(result.reward)
        if result.done:
            break
    assert result.done and result.reward == 100.0 and result.info["score"] == 100
    assert 0.0 < rewards[len(rewards) // 2] < 100.0  # partial credit on the way
    assert SCIWORLD_SPEC.success.is_success(result.reward)


def test_jvm_death_is_a_transient_error_and_close_reaps() -> None:
    instance = SciWorldEnv()
    try:
        instance.reset(Task(id=TEST_IDS[0]))
        pid = instance.pid
        assert pid is not None and pid in my_jvms()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(TransientEnvError, match=rf"JVM \(pid {pid}\) died"):
            instance.step("look around")
        with pytest.raises(EnvError, match="unusable"):
            instance.reset(Task(id=TEST_IDS[0]))
    finally:
        instance.close()
    assert pid not in my_jvms()


def test_close_kills_the_jvm_while_a_call_is_stuck() -> None:
    instance = SciWorldEnv()
    instance.reset(Task(id=TEST_IDS[0]))
    pid = instance.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the JVM stops answering: the next call hangs
    errors: list[BaseException] = []

    def call() -> None:
        try:
            instance.step("look around")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive(), "the step should hang on the stopped JVM"
    started = time.monotonic()
    instance.close()
    assert time.monotonic() - started < 60  # bounded, not the endless hang
    thread.join(60)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], EnvError), errors
    assert "closed" in str(errors[0])
    assert gone(pid)


def test_missing_dependencies(monkeypatch: pytest.MonkeyPatch) -> None:
    import scienceworld

    monkeypatch.setattr(scienceworld, "__version__", "1.2.2")
    with pytest.raises(EnvError, match=r"scienceworld==1\.2\.3.*gymux\[sciworld\]"):
        SciWorldEnv()
    monkeypatch.undo()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(EnvError, match="no Java runtime"):
        SciWorldEnv()
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "scienceworld", None)
    with pytest.raises(EnvError, match=r"pip install 'gymux\[sciworld\]'"):
        SciWorldEnv()


# --------------------------------------------------------------------------- the oracle


def request(task_id: int, assistant_turns: int) -> PolicyRequest:
    messages = [
        Message(role="user", content=SCIWORLD_SPEC.instruction),
        Message(role="assistant", content="OK"),
        Message(role="user", content="obs"),
    ]
    for _ in range(assistant_turns):
        messages += [Message(role="assistant", content="..."), Message(role="user", content="o")]
    return PolicyRequest(
        episode_id="e", env_id="sciworld", task_id=task_id, turn=0, messages=messages
    )


@pytest.mark.anyio
async def test_oracle_reads_the_position_from_the_conversation() -> None:
    task_id = TEST_IDS[0]
    gold = load_gold()[task_id]
    solver = SciWorldOracle()
    async with OraclePolicy(solver) as oracle:
        for k in (0, 1, len(gold) - 1):
            response = await oracle.act(request(task_id, k))
            assert parse_sciworld_action(response.text) == gold[k]
        response = await oracle.act(request(task_id, len(gold)))
        assert parse_sciworld_action(response.text) == "look around"
        assert solver.jvm_pid is None  # shipped gold: no JVM needed


@pytest.mark.anyio
async def test_oracle_computes_unshipped_gold_in_a_private_jvm(env: SciWorldEnv) -> None:
    task_id = task_id_of("find-plant", 3)  # a train task: not in the shipped file
    assert task_id in TRAIN_IDS and task_id not in load_gold()
    oracle = SciWorldOracle()
    async with OraclePolicy(oracle):  # closing the policy kills the oracle's JVM
        gold = await oracle.gold(task_id)
        pid = oracle.jvm_pid
        assert pid is not None and pid in my_jvms() and pid != env.pid
        assert await oracle.gold(task_id) == gold  # cached
    assert gone(pid)
    env.reset(Task(id=task_id))
    for action in gold:
        result = env.step(action)
        if result.done:
            break
    assert result.done and result.reward == 100.0


# --------------------------------------------------------------------------- conformance


#: A deterministic oracle sample: the first test task of six task types.
ORACLE_SAMPLE = [
    task_id_of(name, variation)
    for name, variation in [
        ("chemistry-mix", 24),
        ("find-living-thing", 225),
        ("identify-life-stages-2", 6),
        ("lifespan-shortest-lived", 93),
        ("power-component", 15),
        ("test-conductivity", 675),
    ]
]


@pytest.mark.anyio
async def test_conformance_and_oracle_sample() -> None:
    before = my_jvms()
    tasks = [Task(id=i, split="test") for i in ORACLE_SAMPLE]
    report = await check_plugin(plugin, tasks_per_split=2, oracle_tasks=tasks, timeout_s=120)
    assert report.ok, report.problems
    assert report.oracle_successes == report.oracle_episodes == len(ORACLE_SAMPLE)
    assert my_jvms() == before


# --------------------------------------------------------------------------- through the runtime


def runtime_config(**kw: object) -> RuntimeConfig:
    return E.runtime_config((30.0, 30.0, 120.0, 10.0), **kw)


class JvmWatcher:
    """Samples this process's ScienceWorld JVMs in a thread; remembers the most alive."""

    def __init__(self, ignore: list[int]) -> None:
        self.ignore = set(ignore)  # JVMs alive before (the module's shared instance)
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, len(set(my_jvms()) - self.ignore))
            self._stop.wait(0.02)

    def __enter__(self) -> JvmWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.anyio
async def test_runtime_pool_bounds_and_reaps_jvms() -> None:
    before = my_jvms()
    registry = Registry(entry_points_group=None)
    registry.register(plugin)
    tasks = [task_id_of(name, v) for name, v in [("find-animal", 225), ("find-plant", 226)]]
    tasks += ORACLE_SAMPLE[:4]
    cfg = runtime_config(max_concurrent_episodes=2, env_instances={"sciworld": 2})
    with JvmWatcher(ignore=before) as watcher:
        async with Runtime(cfg, registry=registry) as rt:
            result = await rt.run(
                Workload(env="sciworld", tasks=tasks), policy=OraclePolicy(SciWorldOracle())
            )
            pool = rt.scheduler.pools["sciworld"]
    assert len(result.trajectories) == 6
    assert all(t.success and t.reward == 100.0 for t in result.trajectories), [
        (t.task_id, t.finish_reason, t.error) for t in result.trajectories
    ]
    assert 1 <= pool.created <= 2 and pool.closed_count == pool.created
    assert 1 <= watcher.most <= 2
    assert my_jvms() == before, "JVMs leaked"


class KillingOracle(SciWorldOracle):
    """The oracle, but it kills the env's JVM before its third answer of the first try."""

    def __init__(self, spare: list[int]) -> None:
        super().__init__()
        self.spare = spare  # JVMs that are not the env's
        self.killed: list[int] = []

    async def solve(self, request: PolicyRequest) -> str:
        if request.turn == 2 and not self.killed:
            (pid,) = [p for p in my_jvms() if p not in self.spare]
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)
        return await super().solve(request)


@pytest.mark.anyio
async def test_jvm_death_mid_episode_is_retried_on_a_fresh_jvm() -> None:
    before = my_jvms()
    registry = Registry(entry_points_group=None)
    registry.register(plugin)
    oracle = KillingOracle(spare=before)
    cfg = runtime_config(env_instances={"sciworld": 1}, env_retries=1)
    async with Runtime(cfg, registry=registry) as rt:
        workload = Workload(env="sciworld", tasks=[ORACLE_SAMPLE[1]])
        result = await rt.run(workload, policy=OraclePolicy(oracle))
        pool = rt.scheduler.pools["sciworld"]
    (traj,) = result.trajectories
    assert len(oracle.killed) == 1
    assert traj.finish_reason is FinishReason.DONE and traj.success, traj.error
    assert traj.attempts == 2
    assert pool.created == 2 and pool.closed_count == 2
    assert my_jvms() == before, "JVMs leaked"
