"""SGLangPolicy with the real aiohttp client against the SGLang test double on loopback."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from gymux.errors import PolicyError
from gymux.messages import Message, PolicyRequest
from gymux.policies.sglang.client import SGLangPolicy
from gymux.policies.tokens import ChatTokenizer
from gymux.stores.codec import pack_int32

from doubles.sglang_double import CostModel, SGLangDouble, default_logprob

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def react_model(tok: ChatTokenizer, long_tokens: int = 0):
    """Answers "Thought: ...\\nAction: move up" + EOS; prompts saying LONG get a long answer."""
    answer = tok.encode("Thought: I should go up.\nAction: move up")
    filler = tok.encode(" up")
    eos = tok.eos_id
    assert eos is not None

    def model(ids: list[int]) -> list[int]:
        last_user = tok.decode(ids[-40:])
        if long_tokens and "LONG" in last_user:
            return answer + filler * long_tokens + [eos]
        return [*answer, eos]

    return model


async def make_double(tok: ChatTokenizer, **kw) -> SGLangDouble:
    long_tokens = kw.pop("long_tokens", 0)
    d = SGLangDouble(react_model(tok, long_tokens), decode=tok.decode, eos_id=tok.eos_id, **kw)
    await d.start()
    return d


@pytest.fixture
async def double(tok: ChatTokenizer) -> AsyncIterator[SGLangDouble]:
    d = await make_double(tok)
    yield d
    await d.stop()


def req(ep: str, turn: int, messages: list[Message]) -> PolicyRequest:
    return PolicyRequest(
        episode_id=ep, env_id="maze", task_id=0, turn=turn, messages=list(messages)
    )


def start_messages(obs: str = "The goal is at position (1, 2).") -> list[Message]:
    return [
        Message(role="user", content="Solve the maze."),
        Message(role="assistant", content="OK"),
        Message(role="user", content=obs),
    ]


async def test_twenty_turn_alignment(tok: ChatTokenizer, double: SGLangDouble) -> None:
    async with SGLangPolicy(double.url, tokenizer=tok) as policy:
        messages = start_messages()
        for turn in range(20):
            resp = await policy.act(req("ep", turn, messages))
            assert resp.finish_reason == "stop" and "Action: move up" in resp.text
            messages += [
                Message(role="assistant", content=resp.text, loss=True),
                Message(role="user", content=f"You moved up ({turn})."),
            ]
        data = policy.finish_episode("ep")
    assert data is not None and policy.finish_episode("ep") is None
    last_rid = double.stats.rids[-1]
    sent = double.stats.inputs[last_rid]
    assert resp.token_ids is not None and resp.logprobs is not None
    assert data.ids == pack_int32(sent + resp.token_ids)
    n = data.length
    mask = list(data.loss_mask)
    assert len(mask) == n and sum(mask) == 20 * len(resp.token_ids)
    import array

    ids = array.array("i", data.ids).tolist()
    lps = array.array("f", data.logprobs or b"").tolist()
    # The mask is 1 exactly on generated tokens, and their logprobs are the server's.
    gen_positions = [i for i, m in enumerate(mask) if m]
    assert all(lps[i] == 0.0 for i in range(n) if not mask[i])
    for i in gen_positions:
        # default_logprob is keyed by (absolute position, token) in the double
        assert lps[i] == pytest.approx(default_logprob(i, ids[i]), abs=1e-6)
    # Each request's input was the previous one plus its output plus the appended turn.
    first = double.stats.inputs[double.stats.rids[0]]
    assert sent[: len(first)] == first
    assert tok.decode(sent, skip_special_tokens=False).count("<|im_start|>assistant") == 21
    assert double.stats.requests == 20


async def test_context_limit_before_sending(tok: ChatTokenizer, double: SGLangDouble) -> None:
    async with SGLangPolicy(double.url, tokenizer=tok, context_length=40, max_new_tokens=32) as p:
        resp = await p.act(req("ep", 0, start_messages()))
    assert resp.finish_reason == "context_limit"
    assert double.stats.requests == 0


async def test_unreachable_at_start(tok: ChatTokenizer, double: SGLangDouble) -> None:
    url = double.url
    await double.stop()
    with pytest.raises(PolicyError, match="no SGLang server reachable") as info:
        async with SGLangPolicy(url, tokenizer=tok, startup_timeout_s=0.2):
            pass
    assert url in str(info.value) and "ConnectionRefusedError" in str(info.value)


@pytest.mark.parametrize("strategy", ["batch", "batch_stream"])
async def test_batching_under_load(tok: ChatTokenizer, strategy: str) -> None:
    d = await make_double(tok, cost=CostModel(per_token_s=0.001, capacity=512))
    try:
        policy = SGLangPolicy(d.url, tokenizer=tok, strategy=strategy, window_s=0.01)
        async with policy as p, anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(p.act, req(f"e{i}", 0, start_messages(f"obs {i}")))
        assert d.stats.sequences == 200
        assert d.stats.requests <= 20 and d.stats.batch_requests == d.stats.requests
        assert d.stats.max_batch_items >= 20
    finally:
        await d.stop()


@pytest.mark.parametrize("strategy", ["single", "batch_stream"])
async def test_short_does_not_wait_for_long(tok: ChatTokenizer, strategy: str) -> None:
    d = await make_double(tok, cost=CostModel(per_token_s=0.004, capacity=64), long_tokens=300)
    done: dict[str, float] = {}
    try:
        async with SGLangPolicy(d.url, tokenizer=tok, strategy=strategy, max_new_tokens=400) as p:
            t0 = time.perf_counter()

            async def one(name: str, obs: str) -> None:
                await p.act(req(name, 0, start_messages(obs)))
                done[name] = time.perf_counter() - t0

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "long", "LONG please")
                for i in range(8):
                    tg.start_soon(one, f"s{i}", f"short {i}")
        assert done["long"] > 1.0
        assert max(v for k, v in done.items() if k != "long") < done["long"] / 3
    finally:
        await d.stop()


@pytest.mark.parametrize("strategy", ["batch", "batch_stream"])
async def test_a_batch_tokenizes_its_observations_ahead_and_stays_token_exact(
    tmp_path: Path, strategy: str
) -> None:
    """The batch strategies tokenize a batch's new observation pieces in one call before
    preparing its prompts (``EpisodeLedgers.prefetch``): every episode's token record is
    the one ``single`` makes turn by turn, ids, mask and logprobs."""
    from doubles.sglang_double import build_tiny_tokenizer

    folder = build_tiny_tokenizer(tmp_path / "tok")
    records = {}
    prefetched = 0
    for mode in ("single", strategy):
        tok = ChatTokenizer.from_dir(folder)  # its own piece cache
        d = await make_double(tok, cost=CostModel(per_token_s=0.001, capacity=64))
        try:
            async with SGLangPolicy(d.url, tokenizer=tok, strategy=mode, window_s=0.05) as p:

                async def episode(i: int, p: SGLangPolicy = p) -> None:
                    messages = start_messages(f"obs {i}")
                    for turn in range(3):
                        resp = await p.act(req(f"e{i}", turn, messages))
                        messages.append(Message(role="assistant", content=resp.text, loss=True))
                        messages.append(Message(role="user", content=f"moved {i}: {turn}"))

                async with anyio.create_task_group() as tg:
                    for i in range(8):
                        tg.start_soon(episode, i)
                records[mode] = {f"e{i}": p.finish_episode(f"e{i}") for i in range(8)}
            if mode != "single":
                assert d.stats.batch_requests > 0
                prefetched = tok.pieces.prefetched
        finally:
            await d.stop()
    assert prefetched >= 8 * 2  # at least the later turns' observations
    assert records[strategy] == records["single"]
    assert all(r is not None and r.loss_mask.count(1) > 0 for r in records["single"].values())


async def test_affinity_failover_readmission(tok: ChatTokenizer) -> None:
    a, b = await make_double(tok), await make_double(tok)
    try:
        async with SGLangPolicy(
            [a.url, b.url], tokenizer=tok, health_interval_s=0.05, backoff_s=0.01
        ) as p:
            convs = {f"e{i}": start_messages(f"obs {i}") for i in range(8)}

            async def turn(ep: str, t: int) -> None:
                resp = await p.act(req(ep, t, convs[ep]))
                convs[ep] += [
                    Message(role="assistant", content=resp.text),
                    Message(role="user", content=f"turn {t}"),
                ]

            for t in range(3):
                async with anyio.create_task_group() as tg:
                    for ep in convs:
                        tg.start_soon(turn, ep, t)
            # Affinity: each episode's prompts all went to one server; load is balanced.
            on_a = {rid for rid in a.stats.rids}
            assert len(a.stats.rids) == len(b.stats.rids) == 12
            # Failover: stop a; every episode continues on b.
            before_b = len(b.stats.rids)
            await a.stop()
            async with anyio.create_task_group() as tg:
                for ep in convs:
                    tg.start_soon(turn, ep, 3)
            assert len(b.stats.rids) == before_b + 8
            assert not p.servers[0].healthy
            # Re-admission: restart a on its port; the health loop brings it back.
            await a.start()
            with anyio.fail_after(5):
                while not p.servers[0].healthy:
                    await anyio.sleep(0.02)
            for i in range(4):
                await p.act(req(f"new{i}", 0, start_messages(f"new {i}")))
            assert len(a.stats.rids) >= len(on_a) + 1
            for ep in convs:
                assert p.finish_episode(ep) is not None
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.parametrize("strategy", ["single", "batch"])
async def test_cancel_sends_abort(tok: ChatTokenizer, strategy: str) -> None:
    d = await make_double(tok, cost=CostModel(per_token_s=0.5, capacity=4))
    try:
        async with SGLangPolicy(d.url, tokenizer=tok, strategy=strategy) as p:
            with anyio.move_on_after(0.3):
                await p.act(req("ep", 0, start_messages()))
            with anyio.fail_after(5):
                while not d.stats.aborted_rids:
                    await anyio.sleep(0.01)
            assert d.stats.aborted_rids == [d.stats.rids[-1]]
            assert p.aborts_sent == 1
    finally:
        await d.stop()


CASES = [
    ("single", "http500", "HTTP 500"),
    ("single", "malformed", "malformed JSON"),
    ("single", "wrong_count", "got 2 answers"),
    ("single", "die_after_headers", "mid-answer"),
    ("single", "die_mid_stream", "mid-answer"),
    ("single", "hang", "no answer within"),
    # ``batch`` reads a stream too (one chunk per answer: see the policy's module doc).
    ("batch", "malformed", "malformed stream chunk"),
    ("batch", "die_mid_stream", "mid-answer"),
    ("batch_stream", "die_mid_stream", "mid-answer"),
    ("batch_stream", "die_after_headers", "mid-answer"),
    ("batch_stream", "malformed", "malformed stream chunk"),
]


@pytest.mark.parametrize(("strategy", "failure", "message"), CASES)
async def test_errors_fail_only_affected(
    tok: ChatTokenizer, double: SGLangDouble, strategy: str, failure: str, message: str
) -> None:
    # Only the hang waits out the request timeout; the other cases get a long one, so that a
    # busy machine never turns a healthy request into a timeout.
    timeout_s = 0.5 if failure == "hang" else 30.0
    async with SGLangPolicy(
        double.url, tokenizer=tok, strategy=strategy, request_timeout_s=timeout_s, window_s=0.02
    ) as p:
        double.fail_next(failure)
        results: dict[str, object] = {}

        async def one(ep: str) -> None:
            try:
                results[ep] = await p.act(req(ep, 0, start_messages(ep)))
            except PolicyError as exc:
                results[ep] = exc

        with anyio.fail_after(120):  # a bound, not a speed assertion
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "a")
                tg.start_soon(one, "b")
            errors = [r for r in results.values() if isinstance(r, PolicyError)]
            assert errors, results
            assert all(message in str(e) for e in errors), errors
            # The next call works again.
            resp = await p.act(req("c", 0, start_messages()))
            assert resp.finish_reason == "stop"


async def test_retries_safe_errors(tok: ChatTokenizer, double: SGLangDouble) -> None:
    async with SGLangPolicy(double.url, tokenizer=tok, backoff_s=0.01, retries=3) as p:
        double.fail_next("http503", 2)
        resp = await p.act(req("a", 0, start_messages()))
        assert resp.finish_reason == "stop" and p.retried == 2
        double.fail_next("http503", 10)
        with pytest.raises(PolicyError, match="giving up after 4 attempts"):
            await p.act(req("b", 0, start_messages()))
        # Connection refused: retried (bounded), then a clear error.
        await double.stop()
        t0 = time.perf_counter()
        with pytest.raises(PolicyError, match="refused"):
            await p.act(req("c", 0, start_messages()))
        assert time.perf_counter() - t0 < 60  # bounded retries, no endless loop


async def test_end_to_end_runtime_maze(
    tok: ChatTokenizer, double: SGLangDouble, tmp_path: Path
) -> None:
    from gymux import Runtime, RuntimeConfig, Workload

    policy = SGLangPolicy(double.url, tokenizer=tok, max_new_tokens=64)
    async with Runtime(RuntimeConfig(max_concurrent_episodes=64)) as rt:
        result = await rt.run(Workload(env="maze", tasks="test", samples=2), policy=policy)
    s = result.summary
    assert s.episodes == 52
    assert sum(s.finish_reasons.values()) == 52
    assert set(s.finish_reasons) <= {"done", "max_turns"}
    for traj in result.trajectories:
        assert traj.turns and all(t.action == "move up" for t in traj.turns)
        assert all(t.completion_tokens and t.prompt_tokens for t in traj.turns)
        # The runtime takes each episode's tokens with finish_episode at its end.
        data = traj.tokens or policy.finish_episode(traj.episode_id)
        assert data is not None and sum(data.loss_mask) == sum(
            t.completion_tokens or 0 for t in traj.turns
        )
    assert not policy._ledgers or all(
        policy.finish_episode(t.episode_id) for t in result.trajectories
    )


@pytest.mark.parametrize("strategy", ["single", "batch"])
async def test_request_cap_throttles(tok: ChatTokenizer, strategy: str) -> None:
    cap = 3
    d = await make_double(tok, cost=CostModel(per_token_s=0.002, capacity=512))
    try:
        async with SGLangPolicy(
            d.url,
            tokenizer=tok,
            strategy=strategy,
            max_requests_per_server=cap,
            max_batch=cap,  # a batch larger than the cap would pass on its own
            window_s=0.005,
        ) as p:
            results = []

            async def one(i: int) -> None:
                results.append(await p.act(req(f"e{i}", 0, start_messages(f"obs {i}"))))

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(30):
                        tg.start_soon(one, i)
            assert p.servers[0].budget.requests == 0
        assert len(results) == 30 and all(r.finish_reason == "stop" for r in results)
        assert d.stats.sequences == 30
        assert 1 < d.stats.max_concurrent <= cap
    finally:
        await d.stop()


async def test_token_cap_throttles(tok: ChatTokenizer) -> None:
    max_new = 200
    prompts = [start_messages(f"obs {i}") for i in range(30)]
    shortest = (
        min(len(tok.encode(tok.render(m, add_generation_prompt=True))) for m in prompts) + max_new
    )
    cap_tokens = 3 * shortest + shortest // 2  # room for 3 requests in flight, never 4
    d = await make_double(tok, cost=CostModel(per_token_s=0.002, capacity=512))
    try:
        async with SGLangPolicy(
            d.url, tokenizer=tok, max_new_tokens=max_new, max_tokens_per_server=cap_tokens
        ) as p:
            results = []

            async def one(i: int) -> None:
                results.append(await p.act(req(f"e{i}", 0, prompts[i])))

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(30):
                        tg.start_soon(one, i)
            assert p.servers[0].budget.tokens == 0
        assert len(results) == 30 and d.stats.sequences == 30
        assert 1 < d.stats.max_concurrent <= 3
    finally:
        await d.stop()


async def test_stale_keepalive_connection_is_retried_once(
    tok: ChatTokenizer, double: SGLangDouble
) -> None:
    async with SGLangPolicy(double.url, tokenizer=tok, retries=0) as p:
        messages = start_messages()
        resp = await p.act(req("ep", 0, messages))
        messages += [
            Message(role="assistant", content=resp.text),
            Message(role="user", content="x"),
        ]
        # The pooled connection is reused for the next turn; the server drops it unread.
        double.fail_next("stale_keepalive")
        resp = await p.act(req("ep", 1, messages))
        assert resp.finish_reason == "stop"
        assert double.stats.stale_closed == 1 and p.stale_retries == 1 and p.retried == 0
        assert p.servers[0].healthy
        # Retried once only, and on a fresh connection: a drop there is a real failure.
        double.fail_next("stale_keepalive", 2)
        with pytest.raises(PolicyError, match="connection failed mid-answer"):
            await p.act(req("other", 0, start_messages()))
        assert p.stale_retries == 2 and double.stats.stale_closed == 3
        data = p.finish_episode("ep")
    assert data is not None and double.stats.requests == 2


async def test_idle_keepalive_timeout_on_the_server(tok: ChatTokenizer) -> None:
    d = await make_double(tok, keepalive_timeout=0.05)
    try:
        async with SGLangPolicy(d.url, tokenizer=tok, retries=0) as p:
            for turn in range(3):
                await anyio.sleep(0.15)  # the server closes the idle connection meanwhile
                resp = await p.act(req(f"e{turn}", 0, start_messages()))
                assert resp.finish_reason == "stop"
    finally:
        await d.stop()


@pytest.mark.parametrize("strategy", ["single", "batch_stream"])
async def test_stop_strings(tok: ChatTokenizer, double: SGLangDouble, strategy: str) -> None:
    async with SGLangPolicy(double.url, tokenizer=tok, strategy=strategy, stop=["\nAction"]) as p:
        messages = start_messages()
        resp = await p.act(req("ep", 0, messages))
        assert double.stats.last_sampling_params["stop"] == ["\nAction"]
        assert resp.finish_reason == "stop"
        assert resp.text == "Thought: I should go up."
        assert resp.token_ids is not None and resp.logprobs is not None
        assert len(resp.logprobs) == len(resp.token_ids)
        full = tok.encode("Thought: I should go up.\nAction: move up")
        assert resp.token_ids == full[: len(resp.token_ids)] and len(resp.token_ids) < len(full)
        assert "\nAction" in tok.decode(resp.token_ids)  # ids end with the matching token
        data = p.finish_episode("ep")
    sent = double.stats.inputs[double.stats.rids[-1]]
    assert data is not None and data.ids == pack_int32(sent + resp.token_ids)
    assert sum(data.loss_mask) == len(resp.token_ids)
