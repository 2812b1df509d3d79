"""SGLangPolicy against the stand-in as SGLang 0.5.23 really behaves (real loopback sockets):
context limits, prefix aborts, incremental and failing streams, loading servers, per-item
retries, weight versions, and the stand-in itself checked against SGLang's own schema."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import aiohttp
import anyio
import pytest
from aiohttp import web

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from gymux.errors import PolicyError
from gymux.messages import Message, PolicyRequest, PolicyResponse
from gymux.policies.sglang.client import SGLangPolicy
from gymux.policies.tokens import ChatTokenizer

from doubles import sglang_schema
from doubles.sglang_double import CostModel, SGLangDouble

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def api() -> ModuleType:
    return sglang_schema.require()


def model_for(tok: ChatTokenizer):
    answer = tok.encode("Thought: I should go up.\nAction: move up")
    eos = tok.eos_id
    assert eos is not None
    return lambda ids: [*answer, eos]


async def started(tok: ChatTokenizer, **kw) -> SGLangDouble:
    d = SGLangDouble(model_for(tok), decode=tok.decode, eos_id=tok.eos_id, **kw)
    await d.start()
    return d


@pytest.fixture
async def double(tok: ChatTokenizer, api: ModuleType) -> AsyncIterator[SGLangDouble]:
    d = await started(tok, schema=api)
    yield d
    await d.stop()
    assert d.contract_violations == []


def req(ep: str, text: str = "The goal is at position (1, 2).", turn: int = 0) -> PolicyRequest:
    messages = [
        Message(role="user", content="Solve the maze."),
        Message(role="assistant", content="OK"),
        Message(role="user", content=text),
    ]
    return PolicyRequest(episode_id=ep, env_id="maze", task_id=0, turn=turn, messages=messages)


async def gather(policy: SGLangPolicy, requests: list[PolicyRequest]) -> dict[str, object]:
    out: dict[str, object] = {}

    async def one(r: PolicyRequest) -> None:
        try:
            out[r.episode_id] = await policy.act(r)
        except PolicyError as exc:
            out[r.episode_id] = exc

    async with anyio.create_task_group() as tg:
        for r in requests:
            tg.start_soon(one, r)
    return out


# -- 7. the stand-in speaks SGLang's schema ------------------------------------------------


async def test_stand_in_refuses_what_sglang_refuses(double: SGLangDouble, api: ModuleType) -> None:
    async with aiohttp.ClientSession() as s:

        async def post(body: dict) -> tuple[int, object]:
            async with s.post(double.url + "/generate", json=body) as r:
                return r.status, await r.json()

        status, body = await post({"input_ids": [1, 2], "sampling_params": {"bogus": 1}})
        assert status == 400 and isinstance(body, dict)
        assert body["error"].startswith("unknown field `bogus`, expected one of `max_new_tokens`")
        # The same text SGLang's own gate produces for that body.
        with pytest.raises(api.JsonContractError) as gate:
            api.GenerateRequest.from_json_value({"sampling_params": {"bogus": 1}})
        assert body["error"] == str(gate.value)
        assert await post({"input_ids": [], "sampling_params": {}}) == (
            400,
            {"error": {"message": "input_ids cannot be empty."}},
        )
        status, body = await post({"input_ids": [[1], [2]], "rid": ["a", "a"]})
        assert status == 400 and "Duplicate request IDs detected" in body["error"]["message"]
        status, body = await post({"input_ids": [1] * 5000, "sampling_params": {}})
        assert status == 400 and "longer than the model's context length (4096" in str(body)
        for path, type_name in [
            ("/model_info", "GetModelInfoResponse"),
            ("/get_model_info", "GetModelInfoResponse"),
            ("/server_info", "GetServerInfoResponse"),
        ]:
            async with s.get(double.url + path) as r:
                info = await r.json()
            getattr(api, type_name).from_json_value(info)
            assert "max_context_length" not in info or path == "/server_info"
        async with s.get(double.url + "/v1/models") as r:
            models = await r.json()
        card = api.ModelCard.from_json_value(models["data"][0])
        assert card.max_model_len == 4096
    assert double.stats.requests == 0 and double.stats.rejected == 4


@pytest.mark.parametrize("strategy", ["single", "batch", "batch_stream"])
async def test_every_answer_fits_sglang_schema(
    tok: ChatTokenizer, api: ModuleType, strategy: str
) -> None:
    d = await started(tok, schema=api, cost=CostModel(per_token_s=0.001))
    try:
        async with SGLangPolicy(d.url, tokenizer=tok, strategy=strategy, window_s=0.01) as p:
            results = await gather(p, [req(f"e{i}", f"obs {i}") for i in range(6)])
        assert all(isinstance(r, PolicyResponse) for r in results.values()), results
        assert d.stats.sequences == 6
    finally:
        await d.stop()
    assert d.contract_violations == []


# -- 1. context length ------------------------------------------------------------------------


async def test_context_length_read_from_v1_models(tok: ChatTokenizer, api: ModuleType) -> None:
    d = await started(tok, schema=api, context_length=60)
    try:
        async with SGLangPolicy(d.url, tokenizer=tok, max_new_tokens=32) as p:
            assert p.context_length == 60
            resp = await p.act(req("ep"))
        assert resp.finish_reason == "context_limit"
        assert d.stats.requests == 0 and d.stats.rejected == 0  # answered before sending
    finally:
        await d.stop()


@pytest.mark.parametrize("strategy", ["single", "batch", "batch_stream"])
async def test_server_context_refusal_is_context_limit_for_that_item_only(
    tok: ChatTokenizer, api: ModuleType, strategy: str
) -> None:
    # The policy is told a wrong (too large) context, so the server refuses the long prompt;
    # SGLang refuses a whole batch for it (HTTP 400, or an error chunk in a stream).
    d = await started(tok, schema=api, context_length=120)
    try:
        async with SGLangPolicy(
            d.url, tokenizer=tok, strategy=strategy, context_length=100_000, max_new_tokens=32,
            window_s=0.05,
        ) as p:  # fmt: skip
            long = "LONG " + "The goal is at position (1, 2). " * 8
            results = await gather(p, [req("a"), req("long", long), req("b", "obs b")])
        assert isinstance(results["long"], PolicyResponse), results
        assert results["long"].finish_reason == "context_limit"
        for ep in ("a", "b"):
            assert isinstance(results[ep], PolicyResponse) and results[ep].finish_reason == "stop"
        assert d.stats.rejected >= 1 and "context length" in d.stats.last_error
    finally:
        await d.stop()
    assert d.contract_violations == []


# -- 2. rids are prefix-free; aborts reach the workers ----------------------------------------


async def test_abort_ends_only_the_cancelled_episode(tok: ChatTokenizer, api: ModuleType) -> None:
    # With several tokenizer workers SGLang forwards any abort rid to the scheduler, which
    # ends every request whose rid starts with it.
    d = await started(
        tok, schema=api, cost=CostModel(per_token_s=0.02, capacity=64), tokenizer_workers=2
    )
    try:
        async with SGLangPolicy(d.url, tokenizer=tok) as p:
            results: dict[str, object] = {}
            scopes: dict[str, anyio.CancelScope] = {}

            async def one(ep: str) -> None:
                with anyio.CancelScope() as scope:
                    scopes[ep] = scope
                    try:
                        results[ep] = await p.act(req(ep, f"obs {ep}"))
                    except PolicyError as exc:
                        results[ep] = exc

            async with anyio.create_task_group() as tg:
                for i in range(14):
                    tg.start_soon(one, f"e{i}")
                with anyio.fail_after(10):
                    while len(d.stats.rids) < 14:
                        await anyio.sleep(0.005)
                rids = list(d.stats.rids)
                # Cancel the episode of the second rid sent (``...-1`` with sequential rids).
                victim = next(
                    ep for ep in scopes if f"obs {ep}" in tok.decode(d.stats.inputs[rids[1]])
                )
                scopes[victim].cancel()
        assert not [(a, b) for a in rids for b in rids if a != b and b.startswith(a)]
        assert d.stats.aborted_rids == [rids[1]]
        assert set(d.stats.abort_matched) <= {rids[1]}
        assert victim not in results
        assert len(results) == 13
        assert all(isinstance(r, PolicyResponse) for r in results.values()), results
        prefix = p.episode_rid_prefix("someone")
        assert not any(r.startswith(prefix) for r in rids)
    finally:
        await d.stop()


async def start_router(
    worker: str, script: list[str] | None = None
) -> tuple[web.AppRunner, str, list[str]]:
    """A stand-in for SGLang's router: forwards everything but ``/abort_request``.

    ``script``: what the next ``/generate`` requests get instead of the worker's answer,
    one entry each, consumed in order: ``"abort503"``, an HTTP 200 answer aborted with
    ``status_code`` 503; ``"http503"``, HTTP 503; ``"forward"``, the worker's answer."""
    dropped: list[str] = []
    session = aiohttp.ClientSession()
    script = script if script is not None else []

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.path == "/abort_request":
            dropped.append((await request.json())["rid"])
            return web.Response()
        body = await request.read()
        step = script.pop(0) if request.path == "/generate" and script else "forward"
        if step == "http503":
            return web.json_response(
                {"object": "error", "message": "busy", "code": 503}, status=503
            )
        if step == "abort503":
            finish = {"type": "abort", "message": "queue full", "status_code": 503}
            meta = {"id": json.loads(body)["rid"], "finish_reason": finish, "prompt_tokens": 0}
            return web.json_response({"text": "", "output_ids": [], "meta_info": meta})
        async with session.request(request.method, worker + request.path, data=body) as r:
            return web.Response(status=r.status, body=await r.read(), headers={
                "Content-Type": r.headers.get("Content-Type", "application/json")})  # fmt: skip

    async def close(app: web.Application) -> None:
        await session.close()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(close)
    # A client that goes away does not cancel the forwarded request (the worst case: the
    # worker keeps generating until an abort reaches it directly).
    runner = web.AppRunner(app, handler_cancellation=False, shutdown_timeout=0.05)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", dropped


async def test_abort_through_a_router_goes_to_the_workers(
    tok: ChatTokenizer, api: ModuleType
) -> None:
    d = await started(tok, schema=api, cost=CostModel(per_token_s=0.5, capacity=4))
    runner, router, dropped = await start_router(d.url)
    try:
        async with SGLangPolicy(router, tokenizer=tok, worker_urls=[d.url]) as p:
            with anyio.move_on_after(0.3):
                await p.act(req("ep"))
            with anyio.fail_after(5):
                while not d.stats.abort_matched:
                    await anyio.sleep(0.01)
        assert d.stats.abort_matched == [d.stats.rids[-1]]
        assert dropped == [d.stats.rids[-1]]  # the router got one too, and dropped it
    finally:
        await runner.cleanup()
        await d.stop()


# -- 3 and 5. streams: deltas, errors, retractions ------------------------------------------


async def test_incremental_streaming_is_accumulated(tok: ChatTokenizer, api: ModuleType) -> None:
    out = {}
    for incremental in (False, True):
        d = await started(
            tok,
            schema=api,
            incremental_streaming_output=incremental,
            cost=CostModel(per_token_s=0.005),  # several chunks per answer
        )
        try:
            async with SGLangPolicy(d.url, tokenizer=tok, strategy="batch_stream") as p:
                resp = await p.act(req("ep"))
                data = p.finish_episode("ep")
            assert d.stats.stream_requests == 1 and d.chunks_sent >= 3
        finally:
            await d.stop()
        out[incremental] = (resp, data)
    (full, full_data), (inc, inc_data) = out[False], out[True]
    expected = [*tok.encode("Thought: I should go up.\nAction: move up"), tok.eos_id]
    assert inc.token_ids == full.token_ids == expected
    assert inc.logprobs == full.logprobs and inc.logprobs is not None
    assert len(inc.logprobs) == len(expected)
    assert inc.text == full.text and "Action: move up" in inc.text
    assert inc_data == full_data


async def test_stream_error_chunk_keeps_the_servers_message(
    tok: ChatTokenizer, api: ModuleType
) -> None:
    d = await started(tok, schema=api, cost=CostModel(per_token_s=0.01))
    try:
        async with SGLangPolicy(d.url, tokenizer=tok, strategy="batch_stream") as p:
            d.fail_next("stream_error")
            with pytest.raises(PolicyError, match="injected stream error: scheduler failed"):
                await p.act(req("ep"))
            assert (await p.act(req("next"))).finish_reason == "stop"
    finally:
        await d.stop()
    assert d.contract_violations == []


async def test_retracted_item_is_resent_alone(tok: ChatTokenizer, api: ModuleType) -> None:
    d = await started(tok, schema=api, cost=CostModel(per_token_s=0.002))
    try:
        async with SGLangPolicy(
            d.url, tokenizer=tok, strategy="batch_stream", window_s=0.05, backoff_s=0.01
        ) as p:
            d.fail_next("retract")
            results = await gather(p, [req(f"e{i}", f"obs {i}") for i in range(3)])
            assert p.items_resent == 1
        assert all(
            isinstance(r, PolicyResponse) and r.finish_reason == "stop" for r in results.values()
        ), results
        assert d.stats.request_items == [3, 1]  # the batch, then only the retracted item
        assert len(set(d.stats.rids)) == 4  # the resent item got a fresh rid
    finally:
        await d.stop()
    assert d.contract_violations == []


async def test_batch_retraction_resends_only_that_item(tok: ChatTokenizer, api: ModuleType) -> None:
    """The ``batch`` strategy: one item retracted (abort, status 503) is resent alone; the
    others are answered from the same request. (SGLang answers a NON-streamed batch with
    one HTTP 503 and aborts its other items, so a policy that asks for one resends all.)"""
    d = await started(tok, schema=api, cost=CostModel(per_token_s=0.002))
    try:
        async with SGLangPolicy(
            d.url, tokenizer=tok, strategy="batch", window_s=0.05, backoff_s=0.01
        ) as p:
            d.fail_next("retract")
            results = await gather(p, [req(f"e{i}", f"obs {i}") for i in range(3)])
            assert p.items_resent == 1 and p.retried == 1
            data = {f"e{i}": p.finish_episode(f"e{i}") for i in range(3)}
        answer = [*tok.encode("Thought: I should go up.\nAction: move up"), tok.eos_id]
        for ep, r in results.items():
            assert isinstance(r, PolicyResponse) and r.finish_reason == "stop", (ep, r)
            assert r.token_ids == answer
            token_data = data[ep]
            assert token_data is not None
            assert token_data.loss_mask.endswith(b"\x01" * len(answer))
        assert d.stats.request_items == [3, 1]  # the batch, then only the retracted item
        assert d.stats.discarded_items == 0
        assert len(set(d.stats.rids)) == 4  # the resent item got a fresh rid
    finally:
        await d.stop()
    assert d.contract_violations == []


async def test_batch_strategy_streams_one_chunk_per_answer(
    tok: ChatTokenizer, api: ModuleType
) -> None:
    """``batch`` asks SGLang for ``stream_interval = max_new_tokens``: besides an item's first
    token only its final chunk comes (as cheap as a non-streamed answer); ``batch_stream``
    gets a chunk every few tokens."""
    long_answer = tok.encode("Thought: I should go up. " * 6 + "\nAction: move up")
    assert len(long_answer) > 20
    chunks = {}
    for strategy in ("batch", "batch_stream"):
        d = SGLangDouble(
            lambda ids: [*long_answer, tok.eos_id],
            decode=tok.decode,
            eos_id=tok.eos_id,
            schema=api,
            cost=CostModel(per_token_s=0.002),
        )
        await d.start()
        try:
            async with SGLangPolicy(
                d.url, tokenizer=tok, strategy=strategy, window_s=0.05, max_new_tokens=64
            ) as p:
                results = await gather(p, [req(f"e{i}", f"obs {i}") for i in range(4)])
            assert all(
                isinstance(r, PolicyResponse) and r.token_ids == [*long_answer, tok.eos_id]
                for r in results.values()
            ), results
            assert d.stats.stream_requests == d.stats.requests == 1
            chunks[strategy] = d.chunks_sent
            if strategy == "batch":
                assert d.stats.last_sampling_params["stream_interval"] == 64
        finally:
            await d.stop()
        assert d.contract_violations == []
    assert chunks["batch"] <= 2 * 4 < chunks["batch_stream"]


async def test_retraction_of_a_single_request_is_retried(
    tok: ChatTokenizer, double: SGLangDouble
) -> None:
    async with SGLangPolicy(double.url, tokenizer=tok, backoff_s=0.01) as p:
        double.fail_next("retract")
        resp = await p.act(req("ep"))
    assert resp.finish_reason == "stop" and p.retried == 1
    assert double.stats.request_items == [1, 1]


async def test_retractions_of_a_single_request_are_bounded(
    tok: ChatTokenizer, double: SGLangDouble
) -> None:
    # SGLang answers a retracted non-streamed request with HTTP 503: retried as such.
    async with SGLangPolicy(double.url, tokenizer=tok, backoff_s=0.01, retries=2) as p:
        double.fail_next("retract", 10)
        with pytest.raises(PolicyError, match=r"giving up after 3 attempts: .*HTTP 503"):
            await p.act(req("ep"))
        assert p.retried == 2 and double.stats.request_items == [1, 1, 1]
        # The failed turn holds nothing: no request in flight, the server's room given back.
        assert p.servers[0].budget.requests == 0 and p.servers[0].budget.tokens == 0


async def test_an_answer_aborted_with_503_is_resent(tok: ChatTokenizer, api: ModuleType) -> None:
    # Not what SGLang 0.5.23 answers a single request (it raises HTTP 503), but a server
    # may: the turn is resent with a fresh rid, bounded by ``retries``, and each resend gets
    # the connection-level retries afresh.
    d = await started(tok, schema=api)
    script = ["http503", "abort503", "http503", "forward"]
    runner, url, _ = await start_router(d.url, script)
    try:
        async with SGLangPolicy(url, tokenizer=tok, backoff_s=0.01, retries=1) as p:
            resp = await p.act(req("ep"))
            assert resp.finish_reason == "stop" and script == []
            assert p.items_resent == 1 and p.retried == 3
            script.extend(["abort503"] * 3)
            with pytest.raises(PolicyError, match=r"giving up after 2 attempts: .*status 503"):
                await p.act(req("ep2"))
            assert p.items_resent == 2 and p.servers[0].budget.requests == 0
    finally:
        await runner.cleanup()
        await d.stop()


# -- 4. a server still loading ------------------------------------------------------------


async def test_waits_for_a_loading_server(
    tok: ChatTokenizer, api: ModuleType, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    d = await started(tok, schema=api, ready_file=ready)
    try:
        async with anyio.create_task_group() as tg:

            async def mark_ready() -> None:
                while d.stats.health_checks < 3:  # answered 503 three times by then
                    await anyio.sleep(0.01)
                ready.touch()

            tg.start_soon(mark_ready)
            async with SGLangPolicy(d.url, tokenizer=tok, startup_timeout_s=30) as p:
                resp = await p.act(req("ep"))
        assert resp.finish_reason == "stop" and d.stats.health_checks >= 4
    finally:
        await d.stop()


async def test_a_server_that_never_loads_fails_clearly(
    tok: ChatTokenizer, api: ModuleType, tmp_path: Path
) -> None:
    d = await started(tok, schema=api, ready_file=tmp_path / "never")
    try:
        with pytest.raises(PolicyError) as info:
            async with SGLangPolicy(d.url, tokenizer=tok, startup_timeout_s=0.3):
                pass
        message = str(info.value)
        assert d.url in message and "HTTP 503" in message and "within 0.3s" in message
        assert d.stats.health_checks >= 2
    finally:
        await d.stop()


# -- 6. weight versions ----------------------------------------------------------------------


async def test_weight_version_reaches_the_trajectory(
    tok: ChatTokenizer, api: ModuleType, tmp_path: Path
) -> None:
    from gymux import Runtime, RuntimeConfig, Workload

    d = await started(tok, schema=api, weight_version="step-42")
    try:
        policy = SGLangPolicy(d.url, tokenizer=tok, max_new_tokens=64)
        async with Runtime(RuntimeConfig(max_concurrent_episodes=4)) as rt:
            result = await rt.run(Workload(env="maze", tasks=[0, 1]), policy=policy)
    finally:
        await d.stop()
    turns = [t for traj in result.trajectories for t in traj.turns]
    assert turns and all(t.weight_version == "step-42" for t in turns)
    # It survives the store's encoding.
    from gymux.trajectory import Trajectory

    traj = result.trajectories[0]
    back = json.loads(__import__("msgspec").json.encode(traj))
    assert back["turns"][0]["weight_version"] == "step-42"
    assert isinstance(traj, Trajectory)
