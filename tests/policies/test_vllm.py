"""The token-exact vLLM policy: options and parsing here, then a REAL vLLM server tier.

The server tier (``@pytest.mark.vllm``) serves a tiny random Llama, made at test time with
its locally trained tokenizer, from vLLM's CPU build (the venv ``.ci/vllm-env`` makes); one
server for the whole module. It drives ``gymux run --policy vllm`` and ``--policy openai``
against it with 16 concurrent maze episodes and checks that every stored token id, logprob
and loss-mask bit is what the server returned (through a recording proxy), then context
limits, cancellation (vLLM counts the aborted requests) and a server killed mid-run. It
skips when the venv is absent, and fails instead under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from gymux.env_plugins.protocol import EnvPlugin
from gymux.env_plugins.registry import default_registry
from gymux.errors import PolicyError, PolicyOptionsError
from gymux.eval.run import read_store
from gymux.messages import Message, PolicyRequest
from gymux.policies.options import VLLMOptions
from gymux.policies.registry import make_policy
from gymux.policies.sglang.transport import HTTPStatusError
from gymux.policies.tokens import ChatTokenizer
from gymux.policies.vllm import VLLMPolicy, completion_body, is_context_error, parse_token_ids
from gymux.trajectory import FinishReason, Trajectory

from doubles.procs import clean_env
from doubles.tiny_model import build_tiny_model
from doubles.vllm_server import RecordingProxy, VLLMServer, require_vllm_venv

MAX_MODEL_LEN = 16384

# Generations that must still be running when a test interrupts them: EOS ignored and most of
# the context to fill, so they last 15,000 decode steps (tens of seconds) however fast the
# machine is, and however slowly a loaded server answers the metrics polls that watch them.
LONG_TURN_TOKENS = 15000

# -- no server needed ------------------------------------------------------------------------


def test_parse_token_ids() -> None:
    assert parse_token_ids(["token_id:0", "token_id:489"]) == [0, 489]
    with pytest.raises(ValueError, match="not 'token_id:N'"):
        parse_token_ids(["token_id:1", "hello"])


def test_completion_body_keeps_the_ledger_fields() -> None:
    body = completion_body("m", [1, 2], {"max_tokens": 4, "temperature": 0.0}, {"seed": 3})
    assert body == {
        "seed": 3,
        "max_tokens": 4,
        "temperature": 0.0,
        "model": "m",
        "prompt": [1, 2],
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }


def test_context_errors_are_recognised() -> None:
    vllm_400 = (
        b'{"error":{"message":"This model\'s maximum context length is 512 tokens. However, '
        b'your prompt contains 520 input tokens, which exceeds this limit.","code":400}}'
    )

    def refused(status: int, body: bytes) -> HTTPStatusError:
        return HTTPStatusError(f"vLLM http://h: HTTP {status}: ...", status=status, body=body)

    assert is_context_error(refused(400, vllm_400))
    # The same words with another status, another 400, or a plain error: no context limit.
    assert not is_context_error(refused(500, vllm_400))
    other = b'{"error":{"message":"max_tokens=600 cannot be greater than max_model_len=512"}}'
    assert not is_context_error(refused(400, other))
    assert not is_context_error(PolicyError(vllm_400.decode()))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from doubles.sglang_double import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"urls": []}, "$.urls"),
        ({"urls": ["http://h"], "max_new_tokens": 0}, "$.max_new_tokens"),
        ({"urls": ["http://h"], "temperature": -1}, "$.temperature"),
        ({"urls": ["http://h"], "top_p": 0}, "$.top_p"),
        ({"urls": ["http://h"], "retries": -1}, "$.retries"),
        ({"urls": ["http://h"], "extra_body": {"prompt": [1]}}, "$.extra_body"),
        ({"urls": ["http://h"], "bogus": 1}, "bogus"),
    ],
)
def test_invalid_options_name_the_field(
    tokenizer_dir: Path, options: dict[str, object], field: str
) -> None:
    with pytest.raises(PolicyOptionsError, match=re.escape(field)):
        VLLMPolicy(tokenizer=tokenizer_dir, **options)
    # The registry (config files' policy_options) says the same, naming the policy.
    registry_says = "needs at least one server URL" if field == "$.urls" else re.escape(field)
    with pytest.raises(PolicyOptionsError, match=registry_says) as raised:
        make_policy("vllm", _maze_plugin(), options={**options, "tokenizer": str(tokenizer_dir)})
    assert "policy 'vllm'" in str(raised.value)


def test_options_struct_is_validated_by_msgspec() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.max_new_tokens"):
        msgspec.convert({"urls": ["http://h"], "max_new_tokens": 0}, VLLMOptions)


def test_tokenizer_is_required(tokenizer_dir: Path) -> None:
    with pytest.raises(PolicyOptionsError, match="needs a tokenizer"):
        VLLMPolicy("http://h")
    with pytest.raises(PolicyOptionsError, match=r"no tokenizer\.json"):
        make_policy("vllm", _maze_plugin(), options={"urls": "http://h", "tokenizer": "/nope"})


def _maze_plugin() -> EnvPlugin:
    return default_registry().get("maze")


def test_cli_usage_errors_are_one_line(run_gymux, tokenizer_dir: Path) -> None:  # type: ignore[no-untyped-def]
    no_server = run_gymux(["run", "--env", "maze", "--policy", "vllm", "--tokenizer", "x"])
    assert no_server.returncode == 2
    assert no_server.stderr.strip().splitlines() == [
        "gymux: error: --policy vllm needs --server URL (repeat for several servers)"
    ]
    no_tok = run_gymux(["run", "--env", "maze", "--policy", "vllm", "--server", "http://h"])
    assert no_tok.returncode == 2
    assert "--policy vllm needs --tokenizer PATH" in no_tok.stderr
    assert "Traceback" not in no_tok.stderr


def test_cli_unreachable_server_is_one_line(
    run_gymux,  # type: ignore[no-untyped-def]
    tokenizer_dir: Path,
    tmp_path: Path,
) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    res = run_gymux(
        [
            *("run", "--env", "maze", "--policy", "vllm", "--server"),
            dead,
            *("--tokenizer", str(tokenizer_dir)),
            "--tasks",
            "0",
            "--out",
            str(tmp_path / "o"),
            *("--progress", "off"),
        ]
    )
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("gymux: error")]
    assert len(errors) == 1 and dead in errors[0], res.stderr
    assert "Traceback" not in res.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the real server tier ----------------------------------------------------------------------


class Served:
    """The module's vLLM server (restarted by :meth:`ensure` if a test killed it)."""

    def __init__(self, server: VLLMServer, model: Path) -> None:
        self.server = server
        self.model = model

    def ensure(self) -> VLLMServer:
        if not self.server.alive():
            self.server.stop()
            self.server.start()
        return self.server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    venv = require_vllm_venv()
    root = tmp_path_factory.mktemp("vllm")
    model = build_tiny_model(
        root / "tiny", python=str(venv / "bin" / "python"), max_positions=MAX_MODEL_LEN
    )
    server = VLLMServer(venv, model, root / "server.log", max_model_len=MAX_MODEL_LEN)
    server.start()
    sys.stderr.write(f"vLLM server ready in {server.start_s:.1f} s\n")
    try:
        yield Served(server, model)
    finally:
        server.stop()


@pytest.fixture
def vllm(served: Served) -> VLLMServer:
    return served.ensure()


def _run_gymux(
    args: list[str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gymux", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _unpack(traj: Trajectory) -> tuple[list[int], list[float], list[int]]:
    assert traj.tokens is not None, traj.finish_reason
    assert sys.byteorder == "little"
    ids, lps, mask = array("i"), array("f"), array("B")
    ids.frombytes(traj.tokens.ids)
    assert traj.tokens.logprobs is not None
    lps.frombytes(traj.tokens.logprobs)
    mask.frombytes(traj.tokens.loss_mask)
    return list(ids), list(lps), list(mask)


def _f32(x: float) -> float:
    return array("f", [x])[0]


def _metric(url: str, name: str, **labels: str) -> float:
    """One sample of vLLM's Prometheus ``/metrics``."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name} {labels}")


def _completed(url: str) -> float:
    """Requests that ran to their end (vLLM does not count client disconnects here)."""
    return sum(
        _metric(url, "vllm:request_success_total", finished_reason=reason)
        for reason in ("stop", "length")
    )


def _running(url: str) -> float:
    return _metric(url, "vllm:num_requests_running")


def _wait_for(  # type: ignore[no-untyped-def]
    what: str, check, timeout_s: float = 300, proc: subprocess.Popen[str] | None = None
) -> None:
    """Poll ``check()`` until true (readiness polling, not a fixed sleep); fail at once if
    ``proc`` (the run being watched) ends first."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the run ended ({proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


MAZE_RUN = ["run", "--env", "maze", "--tasks", "0-15", "--concurrency", "16", "--progress", "off"]


def _write_config(
    path: Path,
    url: str,
    model: Path,
    *,
    tasks: int,
    max_new_tokens: int,
    max_turns: int = 15,
    **options: object,
) -> Path:
    """A `gymux run --config` file: ``tasks`` maze tasks at once through ``--policy vllm``
    with EOS ignored (``extra_body``), so every turn generates ``max_new_tokens`` tokens."""
    fields = {
        "urls": [url],
        "tokenizer_path": str(model),
        "max_new_tokens": max_new_tokens,
        **options,
    }
    table = ", ".join(f"{key} = {json.dumps(value)}" for key, value in fields.items())
    path.write_text(
        "[runtime]\n"
        f"max_concurrent_episodes = {tasks}\n\n"
        "[[workloads]]\n"
        'env = "maze"\n'
        f"tasks = {json.dumps(list(range(tasks)))}\n"
        'policy = "vllm"\n'
        f"max_turns = {max_turns}\n"
        f"policy_options = {{ {table}, extra_body = {{ ignore_eos = true }} }}\n"
    )
    return path


def _run_interrupted(
    vllm: VLLMServer,
    served: Served,
    tmp_path: Path,
    *,
    episodes: int,
    interrupt: Callable[[subprocess.Popen[str]], object],
) -> tuple[int, str]:
    """`gymux run` of ``episodes`` maze episodes at once against ``vllm``, each turn a long
    generation; once they all generate, ``interrupt(proc)``; the run's exit status and stderr."""
    config = _write_config(
        tmp_path / "run.toml",
        vllm.url,
        served.model,
        tasks=episodes,
        max_new_tokens=LONG_TURN_TOKENS,
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            *("-m", "gymux", "run", "--config", str(config)),
            *("--out", str(tmp_path / "o"), "--progress", "off"),
        ],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for("generations running", lambda: _running(vllm.url) >= episodes, proc=proc)
        interrupt(proc)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_vllm_policy_is_token_exact_against_a_real_server(
    vllm: VLLMServer, served: Served, tmp_path: Path
) -> None:
    """16 concurrent maze episodes through `gymux run --policy vllm`: every stored id,
    logprob and loss-mask bit is what vLLM returned; prompts are exactly the ledger."""
    out = tmp_path / "out"
    with RecordingProxy(vllm.url) as proxy:
        res = _run_gymux(
            [
                *MAZE_RUN,
                "--policy",
                "vllm",
                "--server",
                proxy.url,
                *("--tokenizer", str(served.model)),
                *("--max-tokens", "24", "--temperature", "0", "--max-turns", "3", "--out"),
                str(out),
            ],
            cwd=tmp_path,
        )
    assert res.returncode == 0, res.stderr[-3000:]
    trajs = read_store(out)
    assert len(trajs) == 16
    assert {t.finish_reason for t in trajs} <= {FinishReason.MAX_TURNS, FinishReason.DONE}
    exchanges = [e for e in proxy.exchanges if e.path == "/v1/completions"]
    assert all(e.status == 200 for e in exchanges)
    assert len(exchanges) == sum(t.num_turns for t in trajs) >= 32
    assert proxy.max_inflight > 1  # the episodes' turns reached the server concurrently

    tok = ChatTokenizer.from_dir(served.model)
    records = {t.episode_id: _unpack(t) for t in trajs}
    covered: dict[str, set[int]] = {k: set() for k in records}
    for ex in exchanges:
        body = ex.body
        assert body["return_tokens_as_token_ids"] is True and body["logprobs"] == 0
        assert body["max_tokens"] == 24 and body["temperature"] == 0.0
        prompt: list[int] = body["prompt"]
        choice = json.loads(ex.answer)["choices"][0]
        out_ids = parse_token_ids(choice["logprobs"]["tokens"])
        out_lps = choice["logprobs"]["token_logprobs"]
        owners = [k for k, (ids, _, _) in records.items() if ids[: len(prompt)] == prompt]
        assert len(owners) == 1, "each prompt is a prefix of exactly one episode's tokens"
        ids, lps, mask = records[owners[0]]
        end = len(prompt) + len(out_ids)
        assert ids[len(prompt) : end] == out_ids
        assert lps[len(prompt) : end] == [_f32(x) for x in out_lps]
        assert mask[len(prompt) : end] == [1] * len(out_ids)
        covered[owners[0]].update(range(len(prompt), end))
    for key, (ids, lps, mask) in records.items():
        generated = {i for i, m in enumerate(mask) if m}
        assert covered[key] == generated  # every trained token came from the server
        assert all(lps[i] == 0.0 for i in range(len(ids)) if not mask[i])
    # Turn 0's prompt is the chat template applied once, by gymux's own tokenizer.
    for t in trajs:
        ids, _, _ = records[t.episode_id]
        first = tok.encode(tok.render(t.messages[:3], add_generation_prompt=True))
        assert ids[: len(first)] == first
        assert t.turns[0].prompt_tokens == len(first)


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_openai_policy_on_the_same_server_sees_the_same_prompts(
    vllm: VLLMServer, served: Served, tmp_path: Path
) -> None:
    """`--policy openai` against the same server: the episodes run, and the server's own
    chat templating counts the same turn-0 prompt tokens as gymux's token ledger."""
    runs = {}
    for policy in ("openai", "vllm"):
        out = tmp_path / policy
        extra = (
            ["--base-url", vllm.url, "--model", "tiny"]
            if policy == "openai"
            else ["--server", vllm.url, "--tokenizer", str(served.model)]
        )
        res = _run_gymux(
            [
                *MAZE_RUN,
                "--policy",
                policy,
                *extra,
                *("--max-tokens", "16", "--temperature", "0", "--max-turns", "2", "--out"),
                str(out),
            ],
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        runs[policy] = {t.task_id: t for t in read_store(out)}
    assert len(runs["openai"]) == len(runs["vllm"]) == 16
    for task, t in runs["openai"].items():
        assert t.finish_reason in (FinishReason.MAX_TURNS, FinishReason.DONE), t.error
        assert t.tokens is None  # text only
        assert t.turns[0].prompt_tokens == runs["vllm"][task].turns[0].prompt_tokens


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_context_limit(vllm: VLLMServer, served: Served, tmp_path: Path) -> None:
    """Episodes that outgrow the model's context end `context_limit`: checked before
    sending (the limit read from /v1/models), and mapped from vLLM's HTTP 400 when the
    policy believes in a larger context than the server's."""
    out = tmp_path / "out"
    turn_tokens = 1000  # every turn (EOS ignored): ~16 turns fill the context, each short
    config = _write_config(
        tmp_path / "run.toml",
        vllm.url,
        served.model,
        tasks=4,
        max_new_tokens=turn_tokens,
        max_turns=50,
        temperature=0.0,
    )
    res = _run_gymux(
        ["run", "--config", str(config), "--progress", "off", "--out", str(out)],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trajs = read_store(out)
    reasons = [t.finish_reason for t in trajs]
    assert reasons == [FinishReason.CONTEXT_LIMIT] * 4, [t.error for t in trajs]
    for t in trajs:
        assert len(_unpack(t)[0]) + turn_tokens > MAX_MODEL_LEN

    async def main() -> None:
        policy = VLLMPolicy(
            vllm.url, tokenizer=served.model, max_new_tokens=8, context_length=100_000
        )
        async with policy:
            long = " ".join(["position"] * (MAX_MODEL_LEN + 50))
            msgs = [Message(role="user", content=long)]
            answer = await policy.act(
                PolicyRequest(env_id="maze", task_id=0, episode_id="e", turn=0, messages=msgs)
            )
            assert answer.finish_reason == "context_limit"
            assert policy.http_requests == 1  # the server was asked, and refused

    anyio.run(main)


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_cancelled_turns_are_aborted_by_the_server(vllm: VLLMServer, served: Served) -> None:
    """Cancelling episodes mid-generation closes their connections and vLLM aborts those
    requests: they leave its running set without completing (15,000 tokens, EOS ignored), and
    the server stays healthy."""
    n = 4

    async def main() -> None:
        policy = VLLMPolicy(
            vllm.url,
            tokenizer=served.model,
            max_new_tokens=LONG_TURN_TOKENS,
            extra_body={"ignore_eos": True},
        )
        before = _completed(vllm.url)
        async with policy:
            msgs = [Message(role="user", content="Walk the maze.")]
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    request = PolicyRequest(
                        env_id="maze", task_id=0, episode_id=f"e{i}", turn=0, messages=msgs
                    )
                    tg.start_soon(policy.act, request)
                # At least one generation under way is enough: every request is sent by
                # then or waiting in vLLM's queue, and cancelling must abort them all (a
                # loaded server may not schedule all n at once; waiting for that timed out).
                await anyio.to_thread.run_sync(
                    _wait_for, "generations running", lambda: _running(vllm.url) >= 1
                )
                tg.cancel_scope.cancel()
            assert policy.requests_cut == n
            await anyio.to_thread.run_sync(
                _wait_for, "no running requests", lambda: _running(vllm.url) == 0
            )
            assert _completed(vllm.url) == before  # aborted, not run to their end
            # Healthy afterwards: a new turn is answered.
            fresh = VLLMPolicy(vllm.url, tokenizer=served.model, max_new_tokens=4)
            async with fresh:
                req = PolicyRequest(
                    env_id="maze", task_id=0, episode_id="after", turn=0, messages=msgs
                )
                answer = await fresh.act(req)
            assert answer.token_ids is not None and len(answer.token_ids) >= 1
        assert vllm.healthy()

    anyio.run(main)


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_interrupted_run_aborts_generations(
    vllm: VLLMServer, served: Served, tmp_path: Path
) -> None:
    """SIGINT to `gymux run` while its 3 episodes generate: exit 130, the episodes are saved
    as cancelled, the server's running set empties and it stays healthy."""
    returncode, err = _run_interrupted(
        vllm, served, tmp_path, episodes=3, interrupt=lambda proc: os.kill(proc.pid, signal.SIGINT)
    )
    assert returncode == 130, err[-3000:]
    assert "Traceback" not in err
    trajs = read_store(tmp_path / "o")
    assert [t.finish_reason for t in trajs] == [FinishReason.CANCELLED] * 3
    _wait_for("no running requests", lambda: _running(vllm.url) == 0)
    assert vllm.healthy()


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_a_dead_server_beside_a_live_one(vllm: VLLMServer, served: Served, tmp_path: Path) -> None:
    """Two servers, one refusing connections: every episode is routed to the live one."""
    dead = f"http://127.0.0.1:{_closed_port()}"

    async def main() -> None:
        policy = VLLMPolicy([dead, vllm.url], tokenizer=served.model, max_new_tokens=8)
        async with policy:
            assert [s.healthy for s in policy.servers] == [False, True]
            msgs = [Message(role="user", content="Walk the maze.")]
            answers = []

            async def one(i: int) -> None:
                req = PolicyRequest(
                    env_id="maze", task_id=0, episode_id=f"e{i}", turn=0, messages=msgs
                )
                answers.append(await policy.act(req))

            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(one, i)
        assert len(answers) == 8 and all(a.token_ids for a in answers)
        assert policy.servers[1].episodes == 8 and policy.servers[0].episodes == 0

    anyio.run(main)


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_server_killed_mid_run(vllm: VLLMServer, served: Served, tmp_path: Path) -> None:
    """SIGKILL of the server (by pid) mid-generation: the episodes end `policy_error` with a
    clear message, and the run exits cleanly (one error line, no traceback)."""
    try:
        returncode, err = _run_interrupted(
            vllm, served, tmp_path, episodes=4, interrupt=lambda proc: vllm.kill()
        )
    finally:
        vllm.stop()  # its engine processes
    assert returncode == 1, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("gymux: error")]
    assert errors == [
        "gymux: error: no episode finished normally (policy_error=4); see the trajectories' errors"
    ]
    trajs = read_store(tmp_path / "o")
    assert [t.finish_reason for t in trajs] == [FinishReason.POLICY_ERROR] * 4
    for t in trajs:
        assert t.error is not None and "vLLM" in t.error and vllm.url in t.error, t.error
