"""`gymux store reverify`: the stored actions replayed in fresh envs, rewards compared."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import msgspec

from gymux.cli.main import main
from gymux.config import Workload
from gymux.eval.run import read_store
from gymux.runtime import Runtime
from gymux.stores.sink import StoreSink


def _oracle_run(out: Path, env: str, tasks: list[int]) -> list:
    async def go() -> None:
        async with Runtime(out=out) as rt:
            await rt.run(Workload(env=env, tasks=tasks, policy="oracle"))

    anyio.run(go)
    return read_store(out)


def test_an_untouched_store_agrees(tmp_path: Path, capsys) -> None:
    trajs = _oracle_run(tmp_path / "run", "maze", [0, 1, 2, 25])
    assert len(trajs) == 4 and all(t.success for t in trajs)
    assert main(["store", "reverify", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "replayed 4 episode(s): 4 agree, 0 disagree"


def test_changed_rewards_and_unknown_envs_are_reported(tmp_path: Path, capsys) -> None:
    trajs = sorted(_oracle_run(tmp_path / "run", "wordle", [0, 1, 2]), key=lambda t: t.task_id)
    # A store whose records say something else than the env does now: task 1's last
    # turn claims no reward; task 2's final reward is off; and an env nobody installed.
    forged = []
    for t in trajs:
        t = msgspec.structs.replace(t)
        if t.task_id == 1:
            t.turns[-1].reward = 0.0
        if t.task_id == 2:
            t.reward = 0.5
        forged.append(t)
    ghost = msgspec.structs.replace(trajs[0], env_id="ghost", episode_id="g")

    async def write() -> None:
        async with StoreSink(tmp_path / "forged") as sink:
            for t in [*forged, ghost]:
                await sink.write(t)

    anyio.run(write)
    assert main(["store", "reverify", str(tmp_path / "forged")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "replayed 3 episode(s): 1 agree, 2 disagree"
    assert "  not replayed: 1 (env 'ghost' not installed)" in lines
    last = len(trajs[1].turns) - 1
    assert f"  {trajs[1].episode_id}: turn {last}: reward 0 -> 1, done True -> True" in lines
    assert f"  {trajs[2].episode_id}: final reward 0.5 -> 1" in lines
    assert main(["store", "reverify", str(tmp_path / "forged"), "--json", "--env", "wordle"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["checked"] == 3 and report["skipped"] == {}
    assert [(d["task_id"], d["turn"]) for d in report["disagreements"]] == [(1, last), (2, None)]
