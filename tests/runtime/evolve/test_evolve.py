"""`gymux evolve`: config, AgentEvol's filter, the token view of trajectories, and the whole
loop at toy scale with a tiny random model (stages, thresholds, report, resume after SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from gymux.errors import ConfigError
from gymux.eval.run import read_store
from gymux.evolve.config import EnvEntry, parse_evolve_config
from gymux.evolve.data import examples_from, keep, kept_trajectories
from gymux.evolve.pipeline import JOURNAL, Journal
from gymux.messages import Message
from gymux.policies.tokens import ChatTokenizer
from gymux.trajectory import FinishReason, TokenData, pack_float32, pack_int32, pack_uint8

from doubles.procs import REPO_ROOT, clean_env
from doubles.trajectories import make_trajectory

pytest.importorskip("torch")
pytest.importorskip("transformers")

from doubles.tiny_hf_model import make_tiny_hf_model, tiny_evolve_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_model(tmp_path_factory.mktemp("evolve") / "tiny")


# -- config and filter ---------------------------------------------------------------------


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="nope"):
        parse_evolve_config('base_model = "m"\nnope = 1\n[[envs]]\nid = "maze"\n')
    with pytest.raises(ConfigError, match=r"\$\.train\.learning_rate"):
        parse_evolve_config(
            'base_model = "m"\n[[envs]]\nid = "maze"\n[train]\nlearning_rate = -1\n'
        )
    with pytest.raises(ConfigError, match="listed twice"):
        parse_evolve_config('base_model = "m"\n[[envs]]\nid = "maze"\n[[envs]]\nid = "maze"\n')
    with pytest.raises(ConfigError, match="envs"):
        parse_evolve_config('base_model = "m"\n')


def test_agentgym_thresholds_by_default() -> None:
    config = parse_evolve_config(
        'base_model = "m"\n[[envs]]\nid = "maze"\n[[envs]]\nid = "babyai"\n'
        '[[envs]]\nid = "wordle"\nthreshold = 0.5\n'
    )
    assert [e.keep_threshold() for e in config.envs] == [0.99, 0.0, 0.5]


def test_filter_applies_thresholds_on_the_scaled_reward() -> None:
    maze, babyai = EnvEntry(id="maze"), EnvEntry(id="babyai")
    ranges = {"sciworld": (0.0, 100.0)}
    assert keep(make_trajectory(env="maze", reward=1.0), maze, ranges)
    assert not keep(make_trajectory(env="maze", reward=0.99), maze, ranges)
    assert keep(make_trajectory(env="babyai", reward=0.2), babyai, ranges)
    assert not keep(make_trajectory(env="babyai", reward=0.0), babyai, ranges)
    sci = EnvEntry(id="sciworld")
    assert keep(make_trajectory(env="sciworld", reward=100.0), sci, ranges)
    assert not keep(make_trajectory(env="sciworld", reward=99.0), sci, ranges)
    broken = make_trajectory(env="maze", reward=1.0, finish_reason=FinishReason.ENV_ERROR)
    assert not keep(broken, maze, ranges)
    # The latest episode of a (env, task, sample) decides; other envs are not kept.
    trajs = [
        make_trajectory(env="maze", task=1, reward=1.0),
        make_trajectory(env="maze", task=2, reward=0.0),
        make_trajectory(env="wordle", task=1, reward=1.0),
    ]
    assert [t.task_id for t in kept_trajectories(trajs, [maze], ranges)] == [1]


# -- the token view ------------------------------------------------------------------------


def _conversation() -> list[Message]:
    return [
        Message(role="user", content="Walk the maze. Answer with Thought and Action."),
        Message(role="assistant", content="OK"),
        Message(role="user", content="The goal is at position (1, 2)."),
        Message(role="assistant", content="Thought: go.\nAction: move up", loss=True),
        Message(role="user", content="Your current position is at position (0, 2)."),
        Message(role="assistant", content="Thought: again.\nAction: move right", loss=True),
    ]


def test_text_trajectories_replay_through_the_ledger(tiny: Path) -> None:
    tok = ChatTokenizer.from_dir(tiny)
    traj = make_trajectory(env="maze", messages=_conversation())
    (example,) = examples_from([traj], tok, max_length=10_000)
    # The sequence is the chat template over the whole conversation (up to the last EOS).
    whole = tok.encode_prompt(tok.render(_conversation(), add_generation_prompt=False))
    assert example.ids == whole[: len(example.ids)]
    assert example.ids[-1] == tok.eos_id
    # The loss mask covers exactly the two agent messages, each closed by EOS.
    learned: list[list[int]] = [[]]
    for token, bit in zip(example.ids, example.mask, strict=True):
        if bit:
            learned[-1].append(token)
        elif learned[-1]:
            learned.append([])
    assert [tok.decode(ids[:-1]) for ids in learned if ids] == [
        "Thought: go.\nAction: move up",
        "Thought: again.\nAction: move right",
    ]
    assert all(ids[-1] == tok.eos_id for ids in learned if ids)
    # Cut to max_length, start kept; nothing to learn: left out.
    (short,) = examples_from([traj], tok, max_length=len(example.ids) - 3)
    assert short.ids == example.ids[:-3]
    untrained = make_trajectory(env="maze", messages=_conversation()[:3])
    assert examples_from([untrained], tok, max_length=10_000) == []


def test_token_data_is_trained_as_stored(tiny: Path) -> None:
    tok = ChatTokenizer.from_dir(tiny)
    ids, mask = [5, 6, 7, 8, 9], [0, 0, 1, 1, 0]
    traj = make_trajectory(
        env="maze",
        messages=_conversation(),
        tokens=TokenData(
            ids=pack_int32(ids),
            loss_mask=pack_uint8(mask),
            logprobs=pack_float32([0.0] * 5),
            tokenizer="x",
        ),
    )
    (example,) = examples_from([traj], tok, max_length=100)
    assert (example.ids, example.mask) == (ids, mask)


# -- the loop, end to end ------------------------------------------------------------------


def _config(path: Path, model: Path, *, iterations: int = 1, seed: int = 0) -> Path:
    path.write_text(tiny_evolve_config(model, iterations=iterations, seed=seed))
    return path


def _evolve(config: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gymux", "evolve", "--config", str(config), "--out", str(out)],
        cwd=REPO_ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _journal(out: Path) -> Journal:
    return msgspec.json.decode((out / JOURNAL).read_bytes(), type=Journal)


@pytest.mark.timeout(900)
def test_the_loop_runs_and_resumes_after_sigkill(tiny: Path, tmp_path: Path) -> None:
    """SIGKILL once BC's checkpoint is recorded; the re-run skips what finished (the expert
    episodes and the BC checkpoint are not redone) and completes every stage."""
    config = _config(tmp_path / "evolve.toml", tiny)
    out = tmp_path / "run"
    proc = _evolve(config, out)
    try:
        deadline = time.monotonic() + 600
        while not ((out / JOURNAL).exists() and _journal(out).done("learn-bc") is not None):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "learn-bc never finished"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = _journal(out)
    expert_done = before.done("expert")
    bc_done = before.done("learn-bc")
    assert expert_done is not None and bc_done is not None
    weights = out / "checkpoints" / "bc" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    expert_episodes = len(read_store(out / "expert"))

    proc = _evolve(config, out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    after = _journal(out)
    names = [s.name for s in after.stages]
    assert names == ["expert", "learn-bc", "eval-bc", "explore-1", "filter-1", "learn-1", "eval-1"]
    assert after.done("expert") == expert_done and after.done("learn-bc") == bc_done
    assert weights.stat().st_mtime_ns == stamp
    assert len(read_store(out / "expert")) == expert_episodes == 3
    assert "stage expert" not in stderr and "stage learn-bc" not in stderr
    # Every (env, task, sample) of the eval and explore stages ran exactly once.
    for stage in ("eval/bc", "explore/iter-1", "eval/1"):
        trajs = read_store(out / stage)
        triples = [(t.env_id, t.task_id, t.sample) for t in trajs]
        assert len(triples) == len(set(triples)) > 0
    # The filter kept exactly the explored episodes above maze's threshold.
    explored = read_store(out / "explore" / "iter-1")
    kept = json.loads((out / "kept" / "iter-1.json").read_text())
    assert sorted(kept) == sorted(t.episode_id for t in explored if t.reward > 0.99)
    # The learn stages trained (finite losses, a checkpoint each) and the report says so.
    for stage in ("learn-bc", "learn-1"):
        record = after.done(stage)
        assert record is not None and record.info["steps"] == 2
        assert all(0 < loss < 100 for loss in record.info["losses"])
    assert (out / "checkpoints" / "iter-1" / "model.safetensors").is_file()
    assert not list((out / "checkpoints").glob("*.tmp"))
    report = json.loads((out / "report.json").read_text())
    assert [row["model"] for row in report["evals"]] == ["bc", "iter 1"]
    assert report["iterations"][0]["explored"] == len(explored)
    assert "| bc |" in (out / "report.md").read_text()
    # Each evaluated model's turns, and how many parsed into an action, per env.
    for row, stage in zip(report["evals"], ("eval/bc", "eval/1"), strict=True):
        trajs = read_store(out / stage)
        assert row["valid_actions"]["maze"] == {
            "turns": sum(len(t.turns) for t in trajs),
            "valid": sum(1 for t in trajs for u in t.turns if u.parse_error is None),
        }
    assert "turns whose output parsed into an action" in (out / "report.md").read_text()
    from gymux.eval.charts import charts_available

    if charts_available():
        charts = ("evolve-success.png", "evolve-valid-actions.png", "evolve-loss.png")
        assert all((out / "charts" / name).stat().st_size > 0 for name in charts)
    assert "wrote" in stdout
    # `gymux report OUT` compares the evaluated models, in stage order.
    from gymux.cli.main import main

    assert main(["report", str(out), "-o", str(tmp_path / "compare")]) == 0
    compared = (tmp_path / "compare" / "report.md").read_text()
    assert compared.index(str(out / "eval" / "bc")) < compared.index(str(out / "eval" / "1"))


def test_another_config_in_the_same_folder_is_refused(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    config = _config(tmp_path / "a.toml", tiny, iterations=0)
    proc = _evolve(config, out)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and stderr.count("\n") == 1, stderr
    assert "holds no evolve run" in stderr

    (out / "something").unlink()
    (out / JOURNAL).write_bytes(msgspec.json.encode(Journal(config_digest="other")))
    proc = _evolve(config, out)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "another config" in stderr and "Traceback" not in stderr


# -- on model servers: each checkpoint loaded into the running server ----------------------


def test_server_policy_needs_servers() -> None:
    with pytest.raises(ConfigError, match=r"policy\.servers"):
        parse_evolve_config('base_model = "m"\n[[envs]]\nid = "maze"\n[policy]\nkind = "sglang"\n')


@pytest.mark.anyio
async def test_sglang_servers_get_each_checkpoint_before_it_plays(
    tiny: Path, tmp_path: Path
) -> None:
    """With ``policy.kind = "sglang"``, explore and eval go through the SGLang client, and
    before each of them the stage's checkpoint is loaded into the running server
    (``/pause_generation``, ``/update_weights_from_disk``, ``/continue_generation``): the
    turns carry the weight version the server reports."""
    from gymux.evolve import Evolve

    from doubles.sglang_double import SGLangDouble
    from doubles.sglang_weights import WeightsDouble

    tok = ChatTokenizer.from_dir(tiny)
    assert tok.eos_id is not None
    answer = tok.encode("Thought: go.\nAction: move up")
    double = SGLangDouble(lambda ids: [*answer, tok.eos_id], decode=tok.decode, eos_id=tok.eos_id)
    await double.start()
    weights = WeightsDouble("sglang", linked=double)
    await weights.start()
    try:
        config = parse_evolve_config(
            f"""base_model = {json.dumps(str(tiny))}
iterations = 1
eval_base = true
concurrency = 4

[[envs]]
id = "maze"
max_turns = 2

[[envs]]
id = "wordle"
max_turns = 8

[expert]
tasks = 2

[explore]
tasks = 1

[eval]
tasks = 1

[train]
max_steps = 1
threads = 1

[policy]
kind = "sglang"
servers = [{json.dumps(double.url)}]
control_urls = [{json.dumps(weights.url)}]
max_new_tokens = 16
"""
        )
        out = tmp_path / "run"
        journal = await Evolve(config, out).run()
    finally:
        await weights.stop()
        await double.stop()
    assert [s.name for s in journal.stages] == [
        "expert",
        "learn-bc",
        "eval-base",
        "eval-bc",
        "explore-1",
        "filter-1",
        "learn-1",
        "eval-1",
    ]
    loads = [body for path, body in weights.calls if path == "/update_weights_from_disk"]
    assert [(b["model_path"], b["weight_version"]) for b in loads] == [
        (str(tiny), "base"),
        (str(out / "checkpoints" / "bc"), "bc"),
        (str(out / "checkpoints" / "bc"), "bc"),
        (str(out / "checkpoints" / "iter-1"), "iter-1"),
    ]
    paths = [path for path, _ in weights.calls]
    assert paths.count("/pause_generation") == paths.count("/continue_generation") == 4
    assert not weights.paused
    for stage, version in (("eval/base", "base"), ("eval/bc", "bc"), ("eval/1", "iter-1")):
        trajs = read_store(out / stage)
        assert trajs and all(t.policy == "sglang" for t in trajs)
        assert {turn.weight_version for t in trajs for turn in t.turns} == {version}
