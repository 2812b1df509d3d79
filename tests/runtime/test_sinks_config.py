"""JSONL sink round trips and failures; TOML config loading and its errors."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from gymux.config import ConfigError, RuntimeConfig, Workload, load_config, parse_config
from gymux.env_plugins.registry import Registry
from gymux.runtime import Runtime
from gymux.sinks import JsonlSink, SinkError, read_jsonl
from gymux.trajectory import SCHEMA_VERSION, FinishReason

from doubles import envs as E
from doubles.trajectories import make_trajectory


def registry() -> Registry:
    reg = Registry(entry_points_group=None)
    reg.register(E.plugin(E.AsyncProbe, max_instances=4))
    return reg


def test_jsonl_round_trips_every_field(tmp_path):
    async def main():
        async with Runtime(
            RuntimeConfig(), registry=registry(), out=tmp_path, out_format="jsonl"
        ) as rt:
            return await rt.run(
                Workload(env="probe", tasks=[0, 1, E.STEP_RAISES], samples=2), policy=E.SaysGo()
            )

    result = anyio.run(main)
    on_disk = list(read_jsonl(tmp_path / "trajectories.jsonl"))
    assert len(on_disk) == 6
    by_id = {t.episode_id: t for t in on_disk}
    for t in result.trajectories:
        assert msgspec.structs.asdict(by_id[t.episode_id]) == msgspec.structs.asdict(t)
    ok = by_id[next(k for k, v in by_id.items() if v.task_id == 0)]
    assert ok.schema_version == SCHEMA_VERSION
    assert [m.role for m in ok.messages[:3]] == ["user", "assistant", "user"]
    assert ok.messages[3].loss is True and ok.messages[0].loss is False
    assert ok.turns[0].action == "go" and ok.turns[-1].done and ok.turns[-1].reward == 1.0
    assert ok.turns[0].policy_s >= 0 and ok.turns[0].env_s > 0
    bad = [t for t in on_disk if t.task_id == E.STEP_RAISES]
    assert all(t.finish_reason is FinishReason.ENV_ERROR for t in bad)


def test_read_jsonl_torn_tail_and_corruption(tmp_path):
    path = tmp_path / "t.jsonl"
    traj = make_trajectory(env="probe", episode_id="e")
    line = msgspec.json.encode(traj)
    path.write_bytes(line + b"\n" + line + b"\n" + line[: len(line) // 2])
    with pytest.raises(ValueError, match=r"t.jsonl:3: torn last line"):
        list(read_jsonl(path))
    assert len(list(read_jsonl(path, strict=False))) == 2
    path.write_bytes(line + b"\n" + b'{"garbage": tru\n' + line + b"\n")
    with pytest.raises(ValueError, match=r"t.jsonl:2: bad line"):
        list(read_jsonl(path, strict=False))


def test_sink_that_cannot_open_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    async def main():
        async with Runtime(RuntimeConfig(), registry=registry(), out=blocker / "sub"):
            pass

    with pytest.raises(SinkError, match="cannot open"):
        anyio.run(main)


def test_failing_sink_fails_the_run_loudly_and_closes_everything(tmp_path):
    class Full(JsonlSink):
        async def write(self, trajectory):
            raise SinkError("disk full")

    async def main():
        async with Runtime(
            RuntimeConfig(), registry=registry(), sinks=[Full(tmp_path / "x.jsonl")]
        ) as rt:
            handle = await rt.submit(Workload(env="probe", tasks=[0, 1]), policy=E.SaysGo())
            with pytest.raises(SinkError, match="disk full"):
                await handle.wait()
            return rt.scheduler.pools["probe"]

    pool = anyio.run(main)
    assert pool.live == 0 and E.Stats.live == 0


def test_sink_flushes_periodically_while_running(tmp_path):
    """A training job tailing the JSONL sees trajectories before the run ends."""

    async def main():
        gate = anyio.Event()

        class Waits(E.SaysGo):
            async def act(self, request):
                if request.task_id == 1:
                    await gate.wait()
                return await super().act(request)

        async with Runtime(
            RuntimeConfig(), registry=registry(), out=tmp_path, out_format="jsonl"
        ) as rt:
            handle = await rt.submit(Workload(env="probe", tasks=[0, 1]), policy=Waits())
            path = tmp_path / "trajectories.jsonl"
            with anyio.fail_after(60):  # the 1 s flusher; a bound, not a speed assertion
                while not path.exists() or path.stat().st_size == 0:
                    await anyio.sleep(0.05)
            early = list(read_jsonl(path))
            gate.set()
            await handle.wait()
        return early

    early = anyio.run(main)
    assert [t.task_id for t in early] == [0]


def test_config_from_toml(tmp_path):
    path = tmp_path / "gymux.toml"
    path.write_text(
        """
        out = "runs/x"
        [runtime]
        max_concurrent_episodes = 9
        env_instances = { maze = 3 }
        step_timeout_s = 2.5
        [[workloads]]
        env = "maze"
        tasks = [0, 1, 2]
        samples = 2
        [[workloads]]
        env = "wordle"
        policy = "random"
        limit = 4
        """
    )
    cfg = load_config(path)
    assert cfg.runtime.max_concurrent_episodes == 9
    assert cfg.runtime.env_instances == {"maze": 3}
    assert cfg.workloads[0].tasks == [0, 1, 2] and cfg.workloads[1].tasks == "test"
    assert cfg.out == "runs/x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[runtime]\nmax_concurent_episodes = 3\n", "unknown field `max_concurent_episodes`"),
        ("[runtime]\nmax_concurrent_episodes = 0\n", "runtime.max_concurrent_episodes"),
        ("[runtime]\nstep_timeout_s = -1\n", "runtime.step_timeout_s"),
        ("[runtime]\nlog_level = 'loud'\n", "runtime.log_level"),
        ("[[workloads]]\nsamples = 2\n", "missing required field `env`"),
        ("[[workloads]]\nenv = 'maze'\nsamples = 'two'\n", "workloads[0].samples"),
        ("[runtime\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(text, message):
    with pytest.raises(ConfigError, match=r"<config>") as info:
        parse_config(text)
    assert message in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")


MODEL_TOML = """
[[workloads]]
env = "maze"
policy = "openai"
policy_options = { base_url = "http://127.0.0.1:9/v1", model = "m", max_tokens = 64 }
"""


def test_policy_options_build_the_model_policy():
    from gymux.env_plugins.registry import default_registry
    from gymux.policies.openai import OpenAICompatPolicy
    from gymux.policies.registry import make_policy

    (w,) = parse_config(MODEL_TOML).workloads
    assert w.policy_options == {"base_url": "http://127.0.0.1:9/v1", "model": "m", "max_tokens": 64}
    policy = make_policy(w.policy, default_registry().get(w.env), options=w.policy_options)
    assert isinstance(policy, OpenAICompatPolicy)  # constructed only: no network
    assert policy.model == "m" and "127.0.0.1:9" in policy.url
    assert parse_config('[[workloads]]\nenv = "maze"\n').workloads[0].policy_options == {}


def test_policy_options_only_for_model_policies():
    with pytest.raises(ConfigError, match="policy_options are for policy 'openai' or 'sglang'"):
        parse_config('[[workloads]]\nenv = "maze"\npolicy_options = { model = "m" }\n')
    with pytest.raises(ConfigError, match="policy_options"):
        parse_config(
            '[[workloads]]\nenv = "maze"\npolicy = "openai"\n'
            "policy_options = { x = { y = { z = 1 } } }\n"
        )


def test_policy_options_take_one_nested_table():
    """vLLM's ``extra_body`` is a table of scalars inside ``policy_options``; it reaches the
    policy's options unchanged."""
    from gymux.policies.options import VLLMOptions

    (w,) = parse_config(
        '[[workloads]]\nenv = "maze"\npolicy = "vllm"\npolicy_options = { urls = '
        '["http://127.0.0.1:9"], tokenizer_path = "t", extra_body = { ignore_eos = true, '
        "min_tokens = 4 } }\n"
    ).workloads
    assert w.policy_options["extra_body"] == {"ignore_eos": True, "min_tokens": 4}
    opts = msgspec.convert(w.policy_options, VLLMOptions)
    assert opts.extra_body == {"ignore_eos": True, "min_tokens": 4}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('{ base_url = "http://127.0.0.1:9/v1", model = "m", nope = 1 }', "unknown option(s) nope"),
        ('{ base_url = "http://127.0.0.1:9/v1" }', "needs --model NAME"),
    ],
)
def test_bad_policy_options_are_one_line_cli_errors(tmp_path, capsys, options, message):
    from gymux.cli.main import EXIT_USAGE, main

    path = tmp_path / "gymux.toml"
    path.write_text(f'[[workloads]]\nenv = "maze"\npolicy = "openai"\npolicy_options = {options}\n')
    code = main(["run", "--config", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and err.startswith("gymux: error:") and message in err, err
    assert not (tmp_path / "out").exists()
