"""Tests for the TextWorld cooking-game plugin (gymux.env_plugins.builtin.textworld.env).

Games are generated for real by ``tw-make`` into temporary cache directories, so this file
keeps to a handful of small games: task 0 (test, level 0) is shared by most tests through a
module-wide cache; task 1000 (train, level 0) and task 3 (test, level 3) are generated once
for conformance and the oracle; a second cache, filled by two concurrent generator
processes, checks locking and determinism; one corrupt entry is regenerated.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path

import anyio
import msgspec
import pytest

pytest.importorskip("textworld")

from gymux.env_plugins.builtin.textworld import games as _tw_games
from gymux.env_plugins.builtin.textworld.env import (
    MAX_TURNS,
    TextWorldEnv,
    TextWorldOracle,
    clean_feedback,
    params_for_task,
    parse_textworld_action,
    pregenerate,
    walkthrough_for,
)
from gymux.env_plugins.builtin.textworld.games import (
    CookingParams,
    cache_root,
    ensure_game,
    generation_count,
    load_entry,
)
from gymux.env_plugins.builtin.textworld.plugin import TEXTWORLD_SPEC, plugin
from gymux.env_plugins.conformance import check_plugin
from gymux.env_plugins.protocol import (
    ActionParseError,
    EnvError,
    Execution,
    SyncEnv,
    Task,
)
from gymux.policies import Message, PolicyError, PolicyRequest
from gymux.policies.oracle import OraclePolicy

pytestmark = pytest.mark.anyio

SMALL = 0  # test task, level 0: one room, the cheapest game to generate
NOT_A_VERB = "That's not a verb I recognise."


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$GYMUX_CACHE_DIR`` for most tests; its games are generated at most once."""
    return tmp_path_factory.mktemp("gymux-cache")


@pytest.fixture(autouse=True)
def _use_shared_cache(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GYMUX_CACHE_DIR", str(shared_cache))


@pytest.fixture
def env() -> Iterator[TextWorldEnv]:
    instance = TextWorldEnv()
    yield instance
    instance.close()


def entry_dir(task_id: int, root: Path | None = None) -> Path:
    return (root or cache_root()) / params_for_task(task_id).key()


def request(task_id: int, messages: list[Message]) -> PolicyRequest:
    return PolicyRequest(
        episode_id=f"ep-{task_id}", env_id="textworld", task_id=task_id, turn=0, messages=messages
    )


# --------------------------------------------------------------------------- spec and ids


def test_spec_and_plugin() -> None:
    spec = TEXTWORLD_SPEC
    assert (spec.id, spec.version) == ("textworld", "1")
    assert spec.split("test").ids == list(range(50))
    assert spec.split("train").ids == list(range(1000, 5000))
    assert spec.max_turns == MAX_TURNS == 30
    assert spec.reward_range == (0.0, 1.0) and spec.success.threshold == 1.0
    assert "Thought:" in spec.instruction and "Action:\nexamine cookbook" in spec.instruction
    assert plugin.execution is Execution.PROCESS
    assert plugin.parse_action is parse_textworld_action
    assert plugin.oracle is TextWorldOracle
    (ep,) = [ep for ep in entry_points(group="gymux.envs") if ep.name == "textworld"]
    assert ep.load() is plugin


def test_task_formula() -> None:
    assert params_for_task(0) == CookingParams(split="test", recipe=1, take=1, go=1, seed=0)
    assert params_for_task(49) == CookingParams(
        split="test", recipe=1, take=1, go=6, open=True, seed=49
    )
    assert params_for_task(1002) == CookingParams(
        split="train", recipe=2, take=2, go=6, open=True, cut=True, seed=1002
    )
    assert params_for_task(4999) == CookingParams(
        split="train", recipe=2, take=2, go=6, open=True, cook=True, cut=True, seed=4999
    )
    assert params_for_task(3).tw_make_args() == [
        "tw-cooking", "--recipe", "2", "--take", "2", "--go", "6", "--split", "test",
        "--seed", "3", "--open", "--cook", "--cut",
    ]  # fmt: skip
    key = params_for_task(3).key()
    assert key == f"tw1.7.0-{sys.hash_info.algorithm}-f1-cooking-test-r2t2g6-okc-s3"
    assert len({params_for_task(i).key() for i in [*range(50), *range(1000, 1100)]}) == 150
    for bad in (-1, 50, 999, 5000):
        with pytest.raises(EnvError, match=r"test ids are 0\.\.49, train ids 1000\.\.4999"):
            params_for_task(bad)


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GYMUX_CACHE_DIR", str(tmp_path / "g"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "g" / "textworld"
    monkeypatch.delenv("GYMUX_CACHE_DIR")
    assert cache_root() == tmp_path / "x" / "gymux" / "textworld"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cache_root() == tmp_path / "h" / ".cache" / "gymux" / "textworld"


# --------------------------------------------------------------------------- text and parsing


def test_clean_feedback() -> None:
    raw = (
        "\n\n\n                    ________  ________\n"
        "                   |        \\|        \\\n"
        "                    \\$$$$$$$$| $$$$$$$$\n\n"
        "You are hungry! Check the cookbook.\n\n-= Kitchen =-\nYou see a fridge.\n\n\n\n"
        ">                                          -= Kitchen =-0/1"
    )
    assert clean_feedback(raw) == (
        "You are hungry! Check the cookbook.\n\n-= Kitchen =-\nYou see a fridge."
    )
    end = (
        "\nYou eat the meal.\n\n\n               *** The End ***\n\nYou scored 3 out of a "
        "possible 3, in 6 turns.\n\n\nWould you like to RESTART, RESTORE a saved game, QUIT or "
        "UNDO the last command?\n>                           -= Kitchen =-3/5"
    )
    assert clean_feedback(end) == (
        "You eat the meal.\n\n*** The End ***\n\nYou scored 3 out of a possible 3, in 6 turns."
    )


def test_parser() -> None:
    assert parse_textworld_action("Thought:\nread it\n\nAction:\nexamine cookbook") == (
        "examine cookbook"
    )
    assert parse_textworld_action("Action: Take  Red Apple from Fridge") == (
        "take red apple from fridge"
    )
    for bad in ("examine cookbook", "Thought: hmm\nAction:", ""):
        with pytest.raises(ActionParseError):
            parse_textworld_action(bad)


# --------------------------------------------------------------------------- missing pieces


def test_missing_textworld(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "textworld", None)  # import textworld -> ImportError
    with pytest.raises(EnvError, match=r"pip install 'gymux\[textworld\]'"):
        TextWorldEnv()


def test_wrong_textworld_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import textworld  # type: ignore[import-untyped]

    monkeypatch.setattr(textworld, "__version__", "1.6.2")
    with pytest.raises(EnvError, match=r"needs TextWorld 1\.7\.0 \(found 1\.6\.2\)"):
        TextWorldEnv()


def test_missing_tw_make(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnvError, match=r"tw-make.*pip install 'gymux\[textworld\]'"):
        ensure_game(params_for_task(SMALL), tmp_path / "cache")
    # the failed generation left no temporary directory and no entry behind
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".locks"]


# --------------------------------------------------------------------------- the env


def test_reset_shows_admissible_actions(env: TextWorldEnv) -> None:
    obs = env.reset(Task(id=SMALL, split="test"))
    assert obs.text.startswith("You are hungry!")
    assert "$$" not in obs.text and "-= Kitchen =-" in obs.text
    assert obs.admissible_actions and "examine cookbook" in obs.admissible_actions
    assert obs.admissible_actions == sorted(obs.admissible_actions)
    assert obs.text.endswith("AVAILABLE ACTIONS: " + ", ".join(obs.admissible_actions))
    result = env.step("examine cookbook")
    assert "Recipe #1" in result.observation.text and "Ingredients:" in result.observation.text
    assert (result.reward, result.done) == (0.0, False)
    assert result.info["admissible"] is True
    assert result.observation.admissible_actions


def test_invalid_commands(env: TextWorldEnv) -> None:
    env.reset(Task(id=SMALL))
    result = env.step("fly to the moon")
    assert result.observation.text.startswith(NOT_A_VERB)
    assert (result.reward, result.done, result.info["admissible"]) == (0.0, False, False)
    result = env.step("take unicorn")
    assert result.observation.text.startswith("You can't see any such thing.")
    assert not result.done
    result = env.step("go west")  # a one-room game: no exits
    assert result.observation.text.startswith("You can't go that way.")
    assert not result.done and result.info["won"] is False


def test_walkthrough_wins_and_reuse(env: TextWorldEnv) -> None:
    walkthrough = walkthrough_for(SMALL)
    assert walkthrough[-1] == "eat meal"
    for _ in range(2):  # the instance is reused; reset starts afresh, mid-game too
        first = env.reset(Task(id=SMALL))
        env.step(walkthrough[0])
        assert env.reset(Task(id=SMALL)).text == first.text
        for i, command in enumerate(walkthrough):
            result = env.step(command)
            assert result.info["admissible"] is True, command
            assert result.done is (i == len(walkthrough) - 1), command
        assert result.reward == 1.0 and result.info["won"] is True
        assert result.info["score"] == result.info["max_score"]
        assert result.observation.admissible_actions is None
        assert "*** The End ***" in result.observation.text
        with pytest.raises(EnvError, match="ended"):
            env.step("look")


def test_losing_ends_with_zero_reward(env: TextWorldEnv) -> None:
    walkthrough = walkthrough_for(3)  # level 3: ingredients must be cooked
    cook = next(i for i, c in enumerate(walkthrough) if c.startswith("cook "))
    env.reset(Task(id=3))
    for command in walkthrough[: cook + 1]:
        assert not env.step(command).done
    result = env.step(walkthrough[cook])  # cooking it twice burns it
    assert (result.reward, result.done) == (0.0, True)
    assert (result.info["won"], result.info["lost"]) == (False, True)
    assert "You lost" in result.observation.text


def test_env_errors(env: TextWorldEnv) -> None:
    with pytest.raises(EnvError, match="before reset"):
        env.step("look")
    with pytest.raises(EnvError, match="no task 77"):
        env.reset(Task(id=77))
    env.close()
    with pytest.raises(EnvError, match="closed"):
        env.reset(Task(id=SMALL))


# --------------------------------------------------------------------------- the cache


def test_second_reset_hits_the_cache(env: TextWorldEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env.reset(Task(id=SMALL))  # generated here or by an earlier test
    directory = entry_dir(SMALL)
    stamps = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    assert set(stamps) == {"game.z8", "game.json", "meta.json"}
    count = generation_count()

    def no_generation(*args: object) -> None:
        raise AssertionError("tw-make must not run on a cache hit")

    monkeypatch.setattr(_tw_games, "_run_tw_make", no_generation)
    fresh = TextWorldEnv()  # a new instance, so nothing is held in memory
    try:
        fresh.reset(Task(id=SMALL))
        env.reset(Task(id=SMALL))
    finally:
        fresh.close()
    assert pregenerate([SMALL, SMALL]) == 2  # warming an already warm cache does nothing
    assert generation_count() == count
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == stamps
    assert not [p for p in cache_root().iterdir() if p.name.startswith((".tmp", ".trash"))]


_GENERATOR = """\
import sys
from pathlib import Path
from gymux.env_plugins.builtin.textworld.games import ensure_game, generation_count
from gymux.env_plugins.builtin.textworld.env import params_for_task
entry = ensure_game(params_for_task(int(sys.argv[2])), Path(sys.argv[1]))
print(generation_count(), entry.path)
"""


@pytest.fixture(scope="module")
def second_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A second cache filled by two generator processes started together (same key)."""
    root = tmp_path_factory.mktemp("second-cache") / "textworld"
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHASHSEED"}}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _GENERATOR, str(root), str(SMALL)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        outputs.append(out.strip().splitlines()[-1])
    return root, outputs


def test_concurrent_generators_of_one_key(second_cache: tuple[Path, list[str]]) -> None:
    root, outputs = second_cache
    counts = sorted(int(line.split()[0]) for line in outputs)
    paths = {line.split(maxsplit=1)[1] for line in outputs}
    assert counts == [0, 1]  # one generated it, the other waited for it and reused it
    assert paths == {str(entry_dir(SMALL, root))}
    assert load_entry(entry_dir(SMALL, root), params_for_task(SMALL)) is not None
    assert sorted(p.name for p in root.iterdir()) == [".locks", params_for_task(SMALL).key()]


def test_same_seed_same_game_across_caches(
    second_cache: tuple[Path, list[str]], env: TextWorldEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_root, _ = second_cache
    here = ensure_game(params_for_task(SMALL))
    there = ensure_game(params_for_task(SMALL), other_root)
    assert here.path != there.path
    assert here.meta == there.meta  # walkthrough, objective and the sha256 of both files
    for name in ("game.z8", "game.json"):
        assert (Path(here.path) / name).read_bytes() == (Path(there.path) / name).read_bytes()
    first = env.reset(Task(id=SMALL)).text
    monkeypatch.setenv("GYMUX_CACHE_DIR", str(other_root.parent))
    other = TextWorldEnv()
    try:
        assert other.reset(Task(id=SMALL)).text == first
    finally:
        other.close()


def test_invalid_entries_are_detected(tmp_path: Path) -> None:
    params = params_for_task(SMALL)
    source = Path(ensure_game(params).path)

    def copy() -> Path:
        target = tmp_path / params.key()
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return target

    assert load_entry(copy(), params) is not None
    assert load_entry(copy(), params_for_task(4)) is None  # another key
    damage: list[Callable[[Path], object]] = [
        lambda d: (d / "meta.json").unlink(),
        lambda d: (d / "meta.json").write_text("{not json"),
        lambda d: (d / "meta.json").write_text('{"format": 1}'),
        lambda d: (d / "game.z8").unlink(),
        lambda d: (d / "game.json").write_text("{}"),
        lambda d: (d / "game.z8").write_bytes((d / "game.z8").read_bytes()[:1000]),
    ]
    for spoil in damage:
        directory = copy()
        spoil(directory)
        assert load_entry(directory, params) is None
    meta = msgspec.json.decode((source / "meta.json").read_bytes())
    meta["walkthrough"] = []
    directory = copy()
    (directory / "meta.json").write_bytes(msgspec.json.encode(meta))
    assert load_entry(directory, params) is None


def test_corrupt_entry_is_regenerated(tmp_path: Path) -> None:
    params = params_for_task(SMALL)
    good = ensure_game(params)
    root = tmp_path / "textworld"
    directory = root / params.key()
    shutil.copytree(good.path, directory)
    count = generation_count()
    assert ensure_game(params, root).meta == good.meta  # a copied entry is a cache hit
    assert generation_count() == count
    (directory / "game.z8").write_bytes(b"truncated")  # a partial write
    regenerated = ensure_game(params, root)
    assert generation_count() == count + 1
    assert regenerated.meta == good.meta
    assert (directory / "game.z8").read_bytes() == (Path(good.path) / "game.z8").read_bytes()
    assert sorted(p.name for p in root.iterdir()) == [".locks", params.key()]


def test_lock_free_race_keeps_one_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the lock two generators of one key both finish; the atomic rename keeps one.

    tw-make is replaced by a copy of a real game that waits until both generators are
    running, so the race happens every time (real generation is covered above).
    """
    params = params_for_task(SMALL)
    source = Path(ensure_game(params).path)
    both_running = threading.Barrier(2, timeout=60)

    @contextlib.contextmanager
    def no_lock(root: Path, key: str) -> Iterator[None]:
        yield

    def copy_game(params: CookingParams, workdir: Path) -> None:
        both_running.wait()
        for name in ("game.z8", "game.json"):
            shutil.copyfile(source / name, workdir / name)

    monkeypatch.setattr(_tw_games, "_key_lock", no_lock)
    monkeypatch.setattr(_tw_games, "_run_tw_make", copy_game)
    root = tmp_path / "textworld"
    count = generation_count()
    results: list[str] = []
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            results.append(ensure_game(params, root).path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=generate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert results == [str(root / params.key())] * 2
    assert generation_count() == count + 2  # both generated; one rename lost the race
    assert [p.name for p in root.iterdir()] == [params.key()]
    entry = load_entry(root / params.key(), params)
    assert entry is not None and entry.meta == ensure_game(params).meta


# --------------------------------------------------------------------------- the oracle


async def test_oracle_is_stateless_and_reads_the_cache() -> None:
    oracle = OraclePolicy(TextWorldOracle())
    walkthrough = await anyio.to_thread.run_sync(walkthrough_for, SMALL)
    base = [
        Message(role="user", content=TEXTWORLD_SPEC.instruction),
        Message(role="assistant", content="OK"),
        Message(role="user", content="You are hungry!"),
    ]
    messages = list(base)
    for step, command in enumerate(walkthrough):
        response = await oracle.act(request(SMALL, list(messages)))
        assert parse_textworld_action(response.text) == command, step
        # the same conversation gives the same answer (no hidden per-episode state)
        assert (await oracle.act(request(SMALL, list(messages)))).text == response.text
        messages += [
            Message(role="assistant", content=response.text),
            Message(role="user", content="..."),
        ]
    with pytest.raises(PolicyError, match="only"):
        await oracle.act(request(SMALL, messages))


async def test_conformance_and_oracle() -> None:
    """check_plugin in worker processes: tasks 0 (test) and 1000 (train); oracle on 0 and 3."""
    report = await check_plugin(
        plugin,
        tasks_per_split=1,
        oracle_tasks=[Task(id=SMALL, split="test"), Task(id=3, split="test")],
        timeout_s=240,
    )
    assert report.ok, report.problems
    assert (report.oracle_successes, report.oracle_episodes) == (2, 2)
    assert isinstance(plugin.factory(), SyncEnv)
