"""``gymux eval --ray`` and ``gymux evolve --ray`` on a real 3-node Ray cluster (a head and
two worker nodes, 1 CPU each) inside a network + pid namespace with only ``lo`` up.

Run as a script (``python test_ray_eval_evolve.py OUT TINY_MODEL``, by the module fixture,
inside ``unshare``), this file is the scenario: it brings the cluster up with
``cluster_scenario.Cluster``, runs the commands and leaves what they produced under OUT.
The tests then compare it with embedded runs made here: an eval on Ray equals the embedded
eval triple by triple, an interrupted eval on Ray resumes without rerunning finished
triples, an evolve on Ray (the tiny ``hf`` model playing on the workers, learning on the
driver) has the stages, journal and report of an embedded one. Usage errors need no
cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ADDRESS = "127.0.0.1:6379"

SUITE = """name = "ray-small"
split = "test"
tasks = 4
samples = 2

[[envs]]
id = "maze"
max_turns = 15

[[envs]]
id = "textcraft"
max_turns = 20
"""

#: Episodes of SUITE (2 envs x 4 tasks x 2 samples), and how many the interrupted eval runs.
SUITE_EPISODES = 16
FIRST_PART = 5

#: A model-server eval: greedy sampling, the answer a function of the prompt.
SERVER_SUITE = """name = "ray-sglang"
split = "test"
tasks = 4

[sampling]
temperature = 0.0

[[envs]]
id = "maze"
max_turns = 6
"""
MOVES = ("move up", "move down", "move left", "move right")


def sglang_double(tiny: Path) -> Any:
    """An SGLang double whose answer is a deterministic function of the prompt's tokens (a
    move chosen by their sum), tokenized with the tiny model's tokenizer."""
    tests = str(Path(__file__).resolve().parents[2])
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from gymux.policies.tokens import ChatTokenizer

    from doubles.sglang_double import SGLangDouble

    tok = ChatTokenizer.from_dir(tiny)
    eos = tok.eos_id
    assert eos is not None

    def model(ids: list[int]) -> list[int]:
        return [*tok.encode(f"Thought: go.\nAction: {MOVES[sum(ids) % 4]}"), eos]

    return SGLangDouble(model, decode=tok.decode, eos_id=eos)


def server_eval_args(url: str, out: Path) -> list[str]:
    """``gymux eval`` with the sglang policy; run from the tiny model's parent folder, so
    that ``--tokenizer tiny`` is a relative path (Ray workers get it made absolute)."""
    return [
        "eval",
        "--suite",
        str(out.parent / "server-suite.toml"),
        "--policy",
        "sglang",
        "--server",
        url,
        "--tokenizer",
        "tiny",
        "--concurrency",
        "6",
        "-o",
        str(out),
    ]


# --- the scenario (inside the namespaces) ---------------------------------------------------


def _gymux(out: Path, name: str, *args: str, cwd: Path | None = None) -> None:
    """``gymux ARGS`` against the cluster; its exit code and output go to OUT/NAME.json,
    with the number of Ray actors it created (every worker is an actor)."""
    before = _actors()
    proc = subprocess.run(
        [sys.executable, "-m", "gymux", *args],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        cwd=cwd,
    )
    doc = {
        "rc": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "actors": _actors() - before,
    }
    (out / f"{name}.json").write_text(json.dumps(doc))


def _actors() -> int:
    """Ray actors the cluster has known (dead ones included), from its GCS."""
    from ray._private import state

    return len(state.actors())


def _scenario(out: Path, model: Path) -> None:
    import time

    import anyio
    from anyio.from_thread import start_blocking_portal

    from gymux.config import RuntimeConfig
    from gymux.eval.run import EvalRun
    from gymux.eval.suite import load_suite
    from gymux.scale import RayExecutor

    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/, for doubles
    from cluster_scenario import NODE_ENV, Cluster

    from doubles.tiny_hf_model import tiny_evolve_config

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.environ.update(NODE_ENV)
    suite_path = out / "suite.toml"
    suite_path.write_text(SUITE)
    (out / "evolve.toml").write_text(tiny_evolve_config(model))
    (out / "server-suite.toml").write_text(SERVER_SUITE)
    cluster = Cluster(out)
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        cluster.up()
        timings["cluster_up_s"] = time.monotonic() - started
        # eval --ray over the whole suite.
        t = time.monotonic()
        common = ["--suite", str(suite_path), "--policy", "oracle", "--concurrency", "6"]
        _gymux(out, "eval", "eval", "--ray", ADDRESS, *common, "-o", str(out / "eval"))
        timings["eval_s"] = time.monotonic() - t
        # An eval on Ray stopped after FIRST_PART episodes (the test hook standing in for
        # an interruption), then resumed by the CLI.
        t = time.monotonic()
        first = EvalRun(
            load_suite(str(suite_path)),
            "oracle",
            out / "resume",
            config=RuntimeConfig(max_concurrent_episodes=6),
            executor=RayExecutor(address=ADDRESS),
        )
        anyio.run(first.run, FIRST_PART)
        (out / "resume-first.json").write_text(json.dumps({"ran": first.ran}))
        _gymux(out, "resume", "eval", "--ray", ADDRESS, *common, "-o", str(out / "resume"))
        timings["resume_s"] = time.monotonic() - t
        # A model-server policy: each worker builds its sglang client from the options.
        t = time.monotonic()
        with start_blocking_portal() as portal:
            double = portal.call(sglang_double, model)
            portal.call(double.start)
            try:
                args = server_eval_args(double.url, out / "server")
                _gymux(out, "server", *args[:1], "--ray", ADDRESS, *args[1:], cwd=model.parent)
            finally:
                portal.call(double.stop)
        timings["server_s"] = time.monotonic() - t
        # evolve --ray: expert, explore and eval on the workers, learning here.
        t = time.monotonic()
        args = ["--config", str(out / "evolve.toml"), "--out", str(out / "evolve")]
        _gymux(out, "evolve", "evolve", "--ray", ADDRESS, *args)
        timings["evolve_s"] = time.monotonic() - t
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.down()
        (out / "timings.json").write_text(json.dumps(timings))


if __name__ == "__main__":
    _scenario(Path(sys.argv[1]), Path(sys.argv[2]))
    sys.exit(0)


# --- the tests --------------------------------------------------------------------------------

import anyio  # noqa: E402
import msgspec  # noqa: E402

from gymux.cli.main import main  # noqa: E402
from gymux.config import RuntimeConfig  # noqa: E402
from gymux.errors import ConfigError  # noqa: E402
from gymux.eval.run import EvalRun, read_manifest, read_store, run_eval  # noqa: E402
from gymux.eval.suite import load_suite  # noqa: E402
from gymux.evolve.pipeline import JOURNAL, Journal  # noqa: E402
from gymux.trajectory import Trajectory  # noqa: E402

from doubles.netns import run_in_namespaces  # noqa: E402
from doubles.procs import REPO_ROOT, clean_env  # noqa: E402
from doubles.tiny_hf_model import tiny_evolve_config  # noqa: E402

# The cluster's start-up and the three commands take about 1-2 minutes on 2 loaded cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from doubles.tiny_hf_model import make_tiny_hf_model

    return make_tiny_hf_model(tmp_path_factory.mktemp("ray-evolve") / "tiny")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Path:
    out = tmp_path_factory.mktemp("ray-eval")
    run_in_namespaces(
        [sys.executable, __file__, str(out), str(tiny)],
        out,
        what="scenario",
        modules={
            "ray": "ray is not installed (extra 'ray')",
            "torch": "the evolve scenario needs torch and transformers (extra 'hf')",
            "transformers": "the evolve scenario needs torch and transformers (extra 'hf')",
        },
        cwd=REPO_ROOT,
    )
    return out


def _command(out: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    assert doc["rc"] == 0, doc["stderr"][-4000:]
    return doc


def _outcome(t: Trajectory) -> tuple[Any, ...]:
    """What an eval measures of a triple, and how the episode went."""
    return (
        t.policy,
        msgspec.to_builtins(t.messages),
        [(turn.action, turn.reward, turn.done) for turn in t.turns],
        t.reward,
        t.success,
        t.finish_reason,
        t.invalid_actions,
    )


def _by_triple(trajectories: list[Trajectory]) -> dict[tuple[str, int, int], Trajectory]:
    triples = {(t.env_id, t.task_id, t.sample): t for t in trajectories}
    assert len(triples) == len(trajectories), "a triple was stored twice"
    return triples


def test_eval_on_ray_equals_the_embedded_eval(scenario: Path, tmp_path: Path) -> None:
    doc = _command(scenario, "eval")
    assert f"episodes run: {SUITE_EPISODES}, already done: 0" in doc["stdout"]
    assert doc["actors"] >= 2  # the episodes ran on Ray workers
    suite = load_suite(str(scenario / "suite.toml"))
    embedded = run_eval(
        suite, "oracle", tmp_path / "embedded", config=RuntimeConfig(max_concurrent_episodes=6)
    )
    on_ray = _by_triple(read_store(scenario / "eval"))
    here = _by_triple(read_store(tmp_path / "embedded"))
    assert len(on_ray) == SUITE_EPISODES
    assert {k: _outcome(t) for k, t in on_ray.items()} == {k: _outcome(t) for k, t in here.items()}
    # The same manifest and the same metrics in the report.
    assert read_manifest(scenario / "eval") == read_manifest(tmp_path / "embedded")
    report = json.loads((scenario / "eval" / "report.json").read_text())
    assert report["overall"]["episodes"] == embedded.metrics.overall.episodes
    assert report["overall"]["success_rate"] == embedded.metrics.overall.success_rate
    assert report["overall"]["success_rate"] == 1.0


@pytest.mark.anyio
async def test_eval_on_ray_with_a_model_server_equals_the_embedded_eval(
    scenario: Path, tiny: Path, tmp_path: Path
) -> None:
    doc = _command(scenario, "server")
    assert "episodes run: 4, already done: 0" in doc["stdout"]
    assert doc["actors"] >= 2
    double = sglang_double(tiny)
    await double.start()
    try:
        (tmp_path / "server-suite.toml").write_text(SERVER_SUITE)
        args = server_eval_args(double.url, tmp_path / "server")
        proc = await anyio.run_process(
            [sys.executable, "-m", "gymux", *args], cwd=tiny.parent, env=clean_env(), check=False
        )
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    finally:
        await double.stop()
    on_ray = _by_triple(read_store(scenario / "server"))
    here = _by_triple(read_store(tmp_path / "server"))
    assert len(on_ray) == 4
    assert {k: _outcome(t) for k, t in on_ray.items()} == {k: _outcome(t) for k, t in here.items()}
    # The answers were the server's (the moves vary with the prompt), token-exact.
    actions = {turn.action for t in on_ray.values() for turn in t.turns}
    assert len(actions) > 1 and actions <= set(MOVES)
    assert all(t.tokens is not None for t in on_ray.values())
    # The same identity: the relative tokenizer path, the greedy sampling, the server's model.
    manifest = read_manifest(scenario / "server")
    assert manifest == read_manifest(tmp_path / "server")
    assert manifest is not None
    assert manifest["identity"]["tokenizer_path"] == "tiny"
    assert manifest["identity"]["temperature"] == 0.0


def test_eval_on_ray_resumes_without_rerunning_finished_triples(scenario: Path) -> None:
    first = json.loads((scenario / "resume-first.json").read_text())
    assert first["ran"] == FIRST_PART
    doc = _command(scenario, "resume")
    left = SUITE_EPISODES - FIRST_PART
    assert f"episodes run: {left}, already done: {FIRST_PART}" in doc["stdout"]
    stored = read_store(scenario / "resume")
    triples = _by_triple(stored)  # each triple stored once: none ran twice
    assert len(triples) == SUITE_EPISODES
    # The first part's episodes are the ones kept (their run id is the first run's).
    runs = [t.run_id for t in stored]
    assert len(set(runs)) == 3  # the interrupted run (maze only) and the resume's 2 runs
    assert sum(1 for r in runs if r == runs[0]) == FIRST_PART
    assert all(t.success for t in stored)


def test_evolve_on_ray_matches_the_embedded_structure(
    scenario: Path, tiny: Path, tmp_path: Path
) -> None:
    doc = _command(scenario, "evolve")
    # Workers: expert 3 (3 tasks), eval-bc 1, explore-1 2, eval-1 1.
    assert doc["actors"] >= 4
    config = tmp_path / "evolve.toml"
    config.write_text(tiny_evolve_config(tiny))
    assert main(["evolve", "--config", str(config), "--out", str(tmp_path / "embedded")]) == 0
    on_ray = scenario / "evolve"
    here = tmp_path / "embedded"

    def journal(out: Path) -> Journal:
        return msgspec.json.decode((out / JOURNAL).read_bytes(), type=Journal)

    ray_journal, embedded_journal = journal(on_ray), journal(here)
    assert [s.name for s in ray_journal.stages] == [s.name for s in embedded_journal.stages]
    assert [s.name for s in ray_journal.stages] == [
        "expert",
        "learn-bc",
        "eval-bc",
        "explore-1",
        "filter-1",
        "learn-1",
        "eval-1",
    ]
    assert ray_journal.config_digest == embedded_journal.config_digest
    for mine, theirs in zip(ray_journal.stages, embedded_journal.stages, strict=True):
        assert sorted(mine.info) == sorted(theirs.info), mine.name
        if "episodes" in theirs.info:  # the episode stages ran every episode
            assert mine.info["episodes"] == theirs.info["episodes"] > 0, mine.name
    # The expert episodes (the oracle) are the embedded run's; every stage's triples ran once.
    expert = _by_triple(read_store(on_ray / "expert"))
    assert {k: _outcome(t) for k, t in expert.items()} == {
        k: _outcome(t) for k, t in _by_triple(read_store(here / "expert")).items()
    }
    for stage in ("eval/bc", "explore/iter-1", "eval/1"):
        trajectories = read_store(on_ray / stage)
        assert len(_by_triple(trajectories)) == len(read_store(here / stage)) > 0
        assert {t.policy for t in trajectories} == {"hf"}
    assert (on_ray / "checkpoints" / "iter-1" / "model.safetensors").is_file()
    ray_report = json.loads((on_ray / "report.json").read_text())
    embedded_report = json.loads((here / "report.json").read_text())
    assert sorted(ray_report) == sorted(embedded_report)
    assert [r["model"] for r in ray_report["evals"]] == ["bc", "iter 1"]


# --- what cannot run on Ray: one line, exit 2, before any cluster is reached ------------------


def test_ray_refuses_bridged_envs_and_policy_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "bridged.toml"
    suite.write_text(
        'name = "bridged"\ntasks = 1\n[[envs]]\nid = "agentgym/webshop"\n'
        'url = "http://127.0.0.1:9"\n'
    )
    out = tmp_path / "out"
    code = main(["eval", "--ray", "--suite", str(suite), "--policy", "oracle", "-o", str(out)])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and "--ray cannot run env agentgym/webshop" in stderr
    assert not out.exists()

    config = tmp_path / "evolve.toml"
    config.write_text('base_model = "m"\n[[envs]]\nid = "agentgym/webshop"\n')
    code = main(["evolve", "--ray", "--config", str(config), "--out", str(tmp_path / "ev")])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "--ray cannot run env agentgym/webshop" in stderr

    from gymux.env_plugins.registry import default_registry
    from gymux.policies.registry import make_policy
    from gymux.scale import RayExecutor

    policy = make_policy("oracle", default_registry().get("maze"))
    with pytest.raises(ConfigError, match="policy given as an object"):
        EvalRun(load_suite("smoke"), policy, tmp_path / "obj", executor=RayExecutor())  # type: ignore[arg-type]
