"""What keeps a token-exact server policy's client work per turn small, and still exact.

* Turn 0 tokenizes only what is new: an env's instruction is tokenized once and spliced
  from the cache (:class:`gymux.policies.tokens.PieceEncoder`), and the prompt the server
  receives is still exactly the chat template applied to the messages and tokenized whole
  (checked here over many episodes of several envs, for the vLLM policy against a scripted
  ``/v1/completions`` on loopback and for the SGLang policy against its stand-in).
* A request body is encoded once, by msgspec, and sent as those bytes.
* A server's budget takes and gives back room without touching the event loop while
  nobody waits, and still makes turns wait when it is full.

The CPU figures themselves come from ``bench/policy.py --vllm`` (no timing assertions here).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from gymux.messages import Message, PolicyRequest, PolicyResponse
from gymux.policies.sglang import transport
from gymux.policies.sglang.client import SGLangPolicy
from gymux.policies.sglang.routing import Budget
from gymux.policies.tokens import ChatTokenizer
from gymux.policies.vllm import VLLMPolicy

from doubles.sglang_double import SGLangDouble, build_tiny_tokenizer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

ENVS = 3
EPISODES = 24
TURNS = 3


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


class FakeCompletions:
    """A scripted ``/v1/completions`` (not vLLM): records each body as received and
    answers a fixed completion, as vLLM shapes it, with ``token_id:N`` tokens."""

    def __init__(self, answer_ids: list[int], text: str) -> None:
        self.bodies: list[bytes] = []
        self.content_types: list[str] = []
        self.answer = msgspec.json.encode(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "model": "fake",
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "finish_reason": "stop",
                        "logprobs": {
                            "tokens": [f"token_id:{i}" for i in answer_ids],
                            "token_logprobs": [-0.25] * len(answer_ids),
                        },
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(answer_ids)},
            }
        )
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeCompletions:
        async def completions(request: web.Request) -> web.Response:
            self.bodies.append(await request.read())
            self.content_types.append(request.content_type)
            return web.Response(body=self.answer, content_type="application/json")

        async def models(request: web.Request) -> web.Response:
            return web.json_response({"data": [{"id": "fake", "max_model_len": 1 << 20}]})

        async def health(request: web.Request) -> web.Response:
            return web.Response()

        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/completions", completions)
        app.router.add_get("/v1/models", models)
        app.router.add_get("/health", health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def _instructions(rng: random.Random) -> list[str]:
    unit = "Solve the maze. Answer with Thought: ... then Action: move <direction>. "
    return [f"Env {e}. " + unit * rng.randrange(20, 60) for e in range(ENVS)]


def _observation(rng: random.Random, ep: int, turn: int) -> str:
    extra = rng.choice(["", " ", "\n", "  Walls: left.\n", "<|im_end|>", "ü 🙂"])
    return f"You are at ({ep}, {turn}).{extra}"


async def _play(policy: Any, rng: random.Random, answer_text: str) -> list[list[Message]]:
    """Play EPISODES episodes (concurrently, ENVS envs) of TURNS turns; return each
    episode's messages as sent on each turn."""
    instructions = _instructions(rng)
    observations = {ep: [_observation(rng, ep, t) for t in range(TURNS)] for ep in range(EPISODES)}
    sent: list[list[Message]] = []

    async def episode(ep: int) -> None:
        messages = [
            Message(role="user", content=instructions[ep % ENVS]),
            Message(role="assistant", content="OK"),
            Message(role="user", content=observations[ep][0]),
        ]
        for turn in range(TURNS):
            sent.append(list(messages))
            resp = await policy.act(
                PolicyRequest(
                    episode_id=f"e{ep}", env_id="maze", task_id=ep, turn=turn, messages=messages
                )
            )
            assert isinstance(resp, PolicyResponse) and resp.finish_reason == "stop"
            if turn + 1 < TURNS:
                messages = [
                    *messages,
                    Message(role="assistant", content=answer_text, loss=True),
                    Message(role="user", content=observations[ep][turn + 1]),
                ]
        policy.finish_episode(f"e{ep}")

    async with anyio.create_task_group() as tg:
        for ep in range(EPISODES):
            tg.start_soon(episode, ep)
    return sent


async def test_vllm_turn0_prompts_are_exact_and_instructions_cached(tok_dir: Path) -> None:
    tok = ChatTokenizer.from_dir(tok_dir)
    answer_text = "Thought: go up.\nAction: move up"
    answer = [*tok.encode(answer_text), tok.eos_id]
    async with FakeCompletions(answer, answer_text) as server:
        policy = VLLMPolicy(server.url, tokenizer=tok, max_new_tokens=16)
        async with policy:
            sent = await _play(policy, random.Random(7), answer_text)
    bodies = [msgspec.json.decode(b) for b in server.bodies]
    assert len(bodies) == EPISODES * TURNS
    assert set(server.content_types) == {"application/json"}
    prompts = [b["prompt"] for b in bodies]
    for body in bodies:
        assert body["logprobs"] == 0 and body["return_tokens_as_token_ids"] is True
    # Each episode's first prompt is the template applied to its messages, tokenized whole.
    turn0 = [m for m in sent if len(m) == 3]
    assert len(turn0) == EPISODES
    for messages in turn0:
        assert tok.encode(tok.render(messages, add_generation_prompt=True)) in prompts
    # The instructions (one per env) were tokenized once each, not once per episode.
    pieces = policy.tokenizer.pieces
    assert pieces.whole == 0
    instruction_pieces = [text for _, text in pieces._cache if len(text) > 500]
    assert len(instruction_pieces) == ENVS


async def test_turn0_ids_equal_whole_text_over_many_episodes(tok_dir: Path) -> None:
    """The SGLang policy shares the ledger: its turn-0 ``input_ids`` are the whole text's ids
    for every episode, with the instruction pieces taken from the cache."""
    tok = ChatTokenizer.from_dir(tok_dir)
    answer_text = "Thought: I should go up.\nAction: move up"
    answer = [*tok.encode(answer_text), tok.eos_id]
    double = SGLangDouble(lambda ids: list(answer), decode=tok.decode, eos_id=tok.eos_id)
    await double.start()
    try:
        async with SGLangPolicy(double.url, tokenizer=tok) as policy:
            sent = await _play(policy, random.Random(11), answer_text)
    finally:
        await double.stop()
    turn0 = [m for m in sent if len(m) == 3]
    assert len(turn0) == EPISODES
    inputs = list(double.stats.inputs.values())
    for messages in turn0:
        assert tok.encode(tok.render(messages, add_generation_prompt=True)) in inputs
    # The instructions (one per env) were tokenized once each, not once per episode.
    assert tok.pieces.whole == 0
    assert len([text for _, text in tok.pieces._cache if len(text) > 500]) == ENVS
    assert tok.pieces.whole == 0


async def test_post_sends_the_body_encoded_once() -> None:
    """``transport.post`` sends msgspec's bytes as they are (pre-encoded bytes untouched)."""
    received: list[tuple[bytes, str]] = []

    async def echo(request: web.Request) -> web.Response:
        received.append((await request.read(), request.content_type))
        return web.Response(text="{}")

    app = web.Application()
    app.router.add_post("/x", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    body = {"prompt": list(range(1000)), "text": "ü\n"}
    encoded = transport.json_bytes(body)
    assert encoded == msgspec.json.encode(body) and transport.json_bytes(encoded) is encoded
    session = transport.open_session(
        connections_per_host=2, request_timeout_s=30, connect_timeout_s=5
    )
    try:
        for payload in (body, encoded):
            async with transport.post(session, url, "/x", payload, label="t") as resp:
                assert await resp.read() == b"{}"
    finally:
        await session.close()
        await runner.cleanup()
    assert received == [(encoded, "application/json")] * 2


async def test_a_connection_not_accepted_in_time_is_retryable() -> None:
    """A server too busy to accept (its accept queue full: connects hang) is a connect
    timeout, reported as such and retryable, not the request's total timeout."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: the queue fills and further SYNs are dropped
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    session = transport.open_session(
        connections_per_host=2, request_timeout_s=600, connect_timeout_s=0.3
    )
    try:
        with pytest.raises(transport.Retryable) as raised:
            async with transport.post(session, f"http://127.0.0.1:{port}", "/x", {}, label="t"):
                pass
    finally:
        await session.close()
        for sock in (*fillers, listener):
            sock.close()
    assert str(raised.value) == (f"http://127.0.0.1:{port} did not accept a connection within 0.3s")
    assert not raised.value.refused and not raised.value.stale


async def test_budget_fast_path_and_waiting() -> None:
    budget = Budget(max_requests=2, max_tokens=100)
    await budget.acquire(1, 40)
    await budget.acquire(1, 40)
    assert (budget.requests, budget.tokens) == (2, 80)
    got: list[str] = []

    async def waiter(name: str) -> None:
        await budget.acquire(1, 10)
        got.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "a")
        with anyio.fail_after(10):
            while budget._waiting == 0:
                await anyio.sleep(0.001)
        # Full: the waiter waits until room is given back.
        assert got == [] and budget.requests == 2
        await budget.release(1, 40)
    assert got == ["a"] and (budget.requests, budget.tokens) == (2, 50)
    # A cancelled waiter leaves the counts as they were.
    with anyio.move_on_after(0.05):
        await budget.acquire(1, 10)
    assert (budget.requests, budget.tokens, budget._waiting) == (2, 50, 0)
    await budget.release(1, 40)
    await budget.release(1, 10)
    assert (budget.requests, budget.tokens) == (0, 0)
    # A lone oversize item may pass.
    await budget.acquire(1, 10_000)
    assert budget.tokens == 10_000


async def test_a_hanging_server_is_cut_at_request_timeout(tok_dir: Path) -> None:
    """The session's own timeout bounds each request (no per-request cancel scope)."""
    from gymux.errors import PolicyError

    release = anyio.Event()

    async def hang(request: web.Request) -> web.Response:
        await request.read()
        with anyio.move_on_after(60):
            await release.wait()
        return web.Response(status=500)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake", "max_model_len": 4096}]})

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/completions", hang)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    messages = [Message(role="user", content="hi")]
    try:
        async with VLLMPolicy(url, tokenizer=tok_dir, request_timeout_s=0.5) as policy:
            with pytest.raises(PolicyError, match=r"no answer within 0\.5s"):
                await policy.act(
                    PolicyRequest(episode_id="e", env_id="m", task_id=0, turn=0, messages=messages)
                )
            assert policy.requests_cut == 1
    finally:
        release.set()
        await runner.cleanup()
