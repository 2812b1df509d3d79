"""The OpenAI-compatible policy: the real aiohttp client against a loopback test double."""

from __future__ import annotations

import email.utils
import sys
import time

import anyio
import pytest

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.builtin.maze.env import MazeOracle
from gymux.env_plugins.registry import default_registry
from gymux.policies import Message, PolicyError, PolicyRequest
from gymux.policies.openai import (
    OpenAICompatPolicy,
    chat_completions_url,
    parse_retry_after,
)
from gymux.policies.oracle import OraclePolicy
from gymux.policies.registry import UnknownPolicyError, make_policy
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason

from doubles.openai_double import OpenAIDouble

pytestmark = pytest.mark.anyio


def req(text: str = "Where are you?", *, episode: str = "e0") -> PolicyRequest:
    return PolicyRequest(
        episode_id=episode,
        env_id="maze",
        task_id=0,
        turn=0,
        messages=[
            Message(role="system", content="You are in a maze."),
            Message(role="user", content=text),
        ],
    )


def policy(srv: OpenAIDouble, **kw) -> OpenAICompatPolicy:
    base = dict(base_url=srv.base_url, model="test-model", backoff_s=0.01, backoff_max_s=0.05)
    base.update(kw)
    return OpenAICompatPolicy(**base)


def test_base_url_forms():
    for base in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"):
        assert chat_completions_url(base) == "http://h:8000/v1/chat/completions"
    url = "https://api.example.com/v1/chat/completions"
    assert chat_completions_url(url) == url
    with pytest.raises(ValueError, match="http"):
        chat_completions_url("h:8000")


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert 8.0 <= parse_retry_after(date, now=now) <= 10.0
    assert parse_retry_after(email.utils.formatdate(now - 100, usegmt=True)) == 0.0


async def test_request_shape_and_reply(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    async with OpenAIDouble(reply=lambda msgs: f"echo {msgs[-1]['content']}") as srv:
        p = policy(
            srv,
            base_url=srv.base_url + "/v1",
            api_key_env="MY_KEY",
            temperature=0.7,
            top_p=0.9,
            max_tokens=64,
            stop=["\n\n"],
        )
        async with p:
            resp = await p.act(req("hello"))
        assert "sk-secret" not in repr(p)
    assert resp.text == "echo hello"
    assert resp.finish_reason == "stop"
    assert resp.token_ids is None and resp.logprobs is None
    assert resp.prompt_tokens == 6 and resp.completion_tokens == 2
    (rec,) = srv.requests
    assert rec.path == "/v1/chat/completions"
    assert rec.headers["Authorization"] == "Bearer sk-secret-123"
    assert rec.body == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "You are in a maze."},
            {"role": "user", "content": "hello"},
        ],
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["\n\n"],
    }


async def test_no_key_no_authorization_header(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with OpenAIDouble() as srv, policy(srv) as p:
        await p.act(req())
    assert "Authorization" not in srv.requests[0].headers


async def test_logprobs_and_length_finish():
    srv = OpenAIDouble(reply=lambda m: "a b c", finish_reason="length")
    async with srv, policy(srv, logprobs=True) as p:
        resp = await p.act(req())
    assert srv.requests[0].body["logprobs"] is True
    assert resp.finish_reason == "length"
    assert resp.logprobs == pytest.approx([-0.1, -0.2, -0.3])


async def test_429_retry_after_seconds_is_honoured():
    async with OpenAIDouble() as srv, policy(srv) as p:
        srv.fail_next("429", retry_after="0.4")
        t = time.monotonic()
        resp = await p.act(req())
        waited = time.monotonic() - t
    assert resp.text.startswith("Thought")
    assert len(srv.requests) == 2
    gap = srv.requests[1].at - srv.requests[0].at
    assert gap >= 0.38 and waited >= 0.38
    assert p.stats["rate_limited"] == 1


async def test_429_retry_after_http_date_is_honoured():
    async with OpenAIDouble() as srv, policy(srv) as p:
        # HTTP dates have 1 s resolution: ask for 2 s from now, expect at least ~1 s.
        srv.fail_next("429", retry_after=email.utils.formatdate(time.time() + 2, usegmt=True))
        await p.act(req())
    gap = srv.requests[1].at - srv.requests[0].at
    assert 0.9 <= gap <= 2.5


async def test_429_retries_are_bounded():
    async with OpenAIDouble() as srv, policy(srv, max_rate_limit_retries=2) as p:
        srv.fail_next("429", times=5, retry_after="0")
        with pytest.raises(PolicyError, match="rate limited"):
            await p.act(req())
    assert len(srv.requests) == 3


async def test_429_retry_after_too_long_fails_fast():
    async with OpenAIDouble() as srv, policy(srv, max_retry_after_s=1) as p:
        srv.fail_next("429", retry_after="600")
        t = time.monotonic()
        with pytest.raises(PolicyError, match="Retry-After"):
            await p.act(req())
    assert time.monotonic() - t < 60  # far below the 600 s it was told to wait


async def test_5xx_is_retried_then_succeeds():
    async with OpenAIDouble() as srv, policy(srv, max_retries=3) as p:
        srv.fail_next("500", times=2)
        resp = await p.act(req())
    assert resp.text.startswith("Thought")
    assert len(srv.requests) == 3
    assert p.stats["retried"] == 2


async def test_retries_exhausted_is_policy_error():
    async with OpenAIDouble() as srv, policy(srv, max_retries=2) as p:
        srv.fail_next("500", times=10)
        with pytest.raises(PolicyError, match=r"failed after 3 attempts.*HTTP 500"):
            await p.act(req())
    assert len(srv.requests) == 3


async def test_connection_refused_is_retried_then_policy_error():
    async with OpenAIDouble() as srv:
        url = srv.base_url
    # The server is gone: connections are refused.
    async with OpenAICompatPolicy(base_url=url, model="m", max_retries=1, backoff_s=0.01) as p:
        with pytest.raises(PolicyError, match="failed after 2 attempts"):
            await p.act(req())


@pytest.mark.parametrize("kind", ["malformed", "no_choices"])
async def test_malformed_responses_are_policy_errors(kind):
    async with OpenAIDouble() as srv, policy(srv) as p:
        srv.fail_next(kind)
        with pytest.raises(PolicyError, match="malformed response"):
            await p.act(req())
    assert len(srv.requests) == 1  # not retried


async def test_hang_is_bounded_by_request_timeout():
    async with OpenAIDouble() as srv, policy(srv, request_timeout_s=0.3, max_retries=1) as p:
        srv.fail_next("hang", times=2)
        t = time.monotonic()
        with pytest.raises(PolicyError, match=r"no response within 0.3s"):
            await p.act(req())
        elapsed = time.monotonic() - t
    assert 0.6 <= elapsed < 60  # two 0.3 s timeouts, not the hour-long hang
    assert len(srv.requests) == 2


async def test_context_length_error_is_context_limit():
    async with OpenAIDouble() as srv, policy(srv) as p:
        srv.fail_next("context")
        resp = await p.act(req())
    assert resp.finish_reason == "context_limit"
    assert len(srv.requests) == 1


async def test_other_4xx_is_policy_error_with_message():
    async with OpenAIDouble() as srv, policy(srv) as p:
        # A body without messages: the double answers 400 "messages is required".
        p.build_body = lambda request: {"model": "m"}  # type: ignore[method-assign]
        with pytest.raises(PolicyError, match="HTTP 400: messages is required"):
            await p.act(req())


async def test_concurrency_limit_is_respected():
    srv = OpenAIDouble(latency_s=0.05)
    async with srv, policy(srv, max_concurrency=3) as p, anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(p.act, req(episode=f"e{i}"))
    assert len(srv.requests) == 20
    assert srv.max_seen_concurrency == 3


async def test_act_outside_context_is_policy_error():
    p = OpenAICompatPolicy(base_url="http://127.0.0.1:1", model="m")
    with pytest.raises(PolicyError, match="async with"):
        await p.act(req())


async def test_make_policy_openai_options():
    plugin = default_registry().get("maze")
    p = make_policy(
        "openai",
        plugin,
        options={"base_url": "http://127.0.0.1:9/v1", "model": "m", "max_concurrency": 4},
    )
    assert isinstance(p, OpenAICompatPolicy)
    assert p.url == "http://127.0.0.1:9/v1/chat/completions" and p.max_concurrency == 4
    with pytest.raises(ValueError, match="base_url"):
        make_policy("openai", plugin, options={"model": "m"})
    with pytest.raises(ValueError, match="unknown option"):
        make_policy("openai", plugin, options={"base_url": "http://x", "model": "m", "bogus": 1})
    with pytest.raises(UnknownPolicyError):
        make_policy("nope", plugin)


async def test_end_to_end_maze_run_through_the_runtime():
    """Runtime + maze env + OpenAI policy + double answering like a ReAct model."""
    oracle = OraclePolicy(MazeOracle())
    calls = 0

    async def reply(messages):
        nonlocal calls
        calls += 1
        # Every 7th call answers garbage: the env turns it into a corrective observation.
        if calls % 7 == 0:
            return "I am not sure what to do."
        request = PolicyRequest(
            episode_id="x",
            env_id="maze",
            task_id=0,  # every test task is on the same double-T layout
            turn=0,
            # After a corrective observation, read the position from an earlier one.
            messages=[
                Message(role=m["role"], content=m["content"])
                for m in messages
                if m["role"] != "user" or "current position" in m["content"]
            ],
        )
        answer = await oracle.act(request)
        thought, _, action = answer.text.partition("Action:")
        return f"Thought: {thought.replace('Thought:', '').strip()}\nAction: {action.strip()}"

    plugin = default_registry().get("maze")
    assert {plugin_task_layout(t) for t in plugin.spec.splits["test"].ids} == {"double_t"}
    async with OpenAIDouble(reply=reply, latency_s=0.001) as srv:
        p = policy(srv, max_concurrency=8)
        config = RuntimeConfig(policy_timeout_s=10, step_timeout_s=10)
        async with Runtime(config) as rt:
            result = await rt.run(Workload(env="maze", tasks="test", samples=2), policy=p)
    trajs = result.trajectories
    assert len(trajs) == 52
    assert sum(result.summary.finish_reasons.values()) == 52
    assert all(t.tokens is None for t in trajs)  # text-only trajectories
    assert all(t.policy == "openai" for t in trajs)
    done = [t for t in trajs if t.finish_reason is FinishReason.DONE]
    assert len(done) >= 40 and all(t.success for t in done)
    assert result.summary.invalid_actions >= 1
    assert len(srv.requests) == calls == sum(len(t.turns) for t in trajs)
    assert srv.max_seen_concurrency <= 8


def plugin_task_layout(task_id: int) -> str:
    from gymux.env_plugins.builtin.maze.env import maze_task

    return maze_task(task_id).layout.name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "openai"], "--policy openai needs --base-url URL and --model NAME"),
        (["--policy", "openai", "--base-url", "http://x"], "needs --model NAME"),
        (["--policy", "sglang"], "--policy sglang needs --server URL"),
        (["--policy", "sglang", "--server", "http://x"], "needs --tokenizer PATH"),
    ],
)
def test_cli_missing_policy_options_one_line_exit_2(run_gymux, args, message):
    done = run_gymux(["run", "--env", "maze", *args, "--out", "o"])
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


async def test_cli_run_with_openai_policy(tmp_path, child_env):
    def reply(messages):
        return "Thought: try.\nAction: move up"

    async with OpenAIDouble(reply=reply) as srv:
        env = child_env(GYMUX_TEST_KEY="sk-cli")
        done = await anyio.run_process(
            [sys.executable, "-m", "gymux", "run", "--env", "maze", "--tasks", "0-3",
             "--max-turns", "3", "--policy", "openai", "--base-url", srv.base_url + "/v1",
             "--model", "m1", "--api-key-env", "GYMUX_TEST_KEY", "--max-concurrency", "2",
             "--max-tokens", "32", "--temperature", "0", "--format", "jsonl",
             "--out", str(tmp_path / "o"), "--progress", "off"],
            env=env, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "openai" in out and "finish reasons:" in out
    assert srv.requests and all(
        r.headers["Authorization"] == "Bearer sk-cli"
        and r.body["model"] == "m1"
        and r.body["max_tokens"] == 32
        and r.body["temperature"] == 0
        for r in srv.requests
    )
    assert srv.max_seen_concurrency <= 2
    lines = (tmp_path / "o" / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_make_policy_sglang_passes_options_through(monkeypatch):
    import types

    plugin = default_registry().get("maze")
    fake = types.ModuleType("gymux.policies.sglang.client")

    class SGLangPolicy:
        name, version = "sglang", "0"

        def __init__(self, *, options):  # the registry hands over validated SGLangOptions
            self.urls, self.tokenizer = options.urls, options.tokenizer_path
            self.max_new_tokens = options.max_new_tokens

    fake.SGLangPolicy = SGLangPolicy
    monkeypatch.setitem(sys.modules, "gymux.policies.sglang.client", fake)
    p = make_policy(
        "sglang",
        plugin,
        options={"urls": ["http://a", "http://b"], "tokenizer_path": "/m", "max_new_tokens": 9},
    )
    assert (p.urls, p.tokenizer, p.max_new_tokens) == (["http://a", "http://b"], "/m", 9)
    with pytest.raises(ValueError, match="policy 'sglang'"):
        make_policy("sglang", plugin, options={"urls": "http://a", "bogus": 1})
    with pytest.raises(ValueError, match="--server"):
        make_policy("sglang", plugin, options={})
    del fake.SGLangPolicy
    with pytest.raises(UnknownPolicyError, match="has no SGLangPolicy"):
        make_policy("sglang", plugin, options={"urls": ["http://a"]})
    monkeypatch.setitem(sys.modules, "gymux.policies.sglang.client", None)  # import fails
    with pytest.raises(UnknownPolicyError, match=r"cannot import gymux\.policies\.sglang"):
        make_policy("sglang", plugin, options={"urls": ["http://a"]})


async def test_runtime_builds_a_named_model_policy_from_workload_options():
    """`Workload(policy="openai", policy_options=...)` submitted without a policy object."""
    async with OpenAIDouble(reply=lambda messages: "Thought: up\nAction: move up") as srv:
        config = RuntimeConfig(policy_timeout_s=10, step_timeout_s=10)
        async with Runtime(config) as rt:
            workload = Workload(
                env="maze",
                tasks=[0, 1],
                policy="openai",
                policy_options={"base_url": srv.base_url, "model": "from-options"},
            )
            result = await rt.run(workload)
            with pytest.raises(ValueError, match="model"):
                await rt.submit(
                    Workload(env="maze", policy="openai", policy_options={"base_url": "x"})
                )
    assert result.policy == "openai" and len(result.trajectories) == 2
    assert srv.requests and all(r.body["model"] == "from-options" for r in srv.requests)


def test_error_bodies_are_decoded_into_their_message():
    from gymux.policies.openai import _error_message

    detail = b'{"error": {"message": "bad", "code": 400, "type": "invalid"}}'
    assert _error_message(detail) == "bad | 400 | invalid"
    assert _error_message(b'{"error": "plain text"}') == "plain text"
    assert _error_message(b'{"message": "top", "type": "t"}') == "top | t"
    assert _error_message(b'{"detail": "x"}') == '{"detail": "x"}'  # nothing known: the body
    assert _error_message(b"<html>oops</html>") == "<html>oops</html>"
    assert _error_message(b'{"error": {"code": [1]}}') == '{"error": {"code": [1]}}'


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"choices": [{"finish_reason": "stop"}]}', r"\$\.choices\[0\]"),
        (b'{"choices": [{"message": {"content": 3}}]}', r"\$\.choices\[0\]\.message\.content"),
        (b'{"choices": []}', r"\$\.choices"),
        (b'{"choices": [{"message": {}}], "usage": {"prompt_tokens": "x"}}', r"\$\.usage"),
        (
            b'{"choices": [{"message": {}, "logprobs": {"content": [{}]}}]}',
            r"logprobs unreadable.*\$\.content\[0\]",
        ),
    ],
)
def test_malformed_answers_name_what_is_wrong(body, why):
    p = OpenAICompatPolicy(base_url="http://127.0.0.1:1", model="m", logprobs=True)
    with pytest.raises(PolicyError, match=rf"malformed response \(.*{why}"):
        p._parse(body)
    assert p.stats["failed"] == 1


def test_null_content_and_missing_usage_are_fine():
    p = OpenAICompatPolicy(base_url="http://127.0.0.1:1", model="m")
    resp = p._parse(b'{"choices": [{"message": {"content": null}, "logprobs": {"x": 1}}]}')
    assert resp.text == "" and resp.finish_reason == "stop" and resp.logprobs is None
    assert resp.prompt_tokens is None and resp.completion_tokens is None


def test_backoff_is_the_shared_equal_jitter():
    p = OpenAICompatPolicy(base_url="http://127.0.0.1:1", model="m", backoff_s=1, backoff_max_s=3)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 3.0), (10, 3.0)]:
        delays = [p._backoff(attempt) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays), (attempt, min(delays), max(delays))
