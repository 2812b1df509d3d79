"""The client-CPU cuts keep behaviour: the vLLM body built from the prompt's JSON, the
ledger's untracked arrays, the health watcher that sleeps while all servers are healthy."""

from __future__ import annotations

import gc
from pathlib import Path

import anyio
import msgspec
import pytest

from gymux.messages import Message
from gymux.policies.sglang.routing import Router, Server
from gymux.policies.tokens import ChatTokenizer, PromptIds, TokenLedger
from gymux.policies.vllm import VLLMPolicy, completion_body

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    from doubles.sglang_double import build_tiny_tokenizer

    return ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "t"))


def test_vllm_body_bytes_equal_completion_body(tok: ChatTokenizer) -> None:
    policy = VLLMPolicy(
        "http://127.0.0.1:9",
        tokenizer=tok,
        max_new_tokens=7,
        temperature=0.3,
        extra_body={"seed": 5},
    )
    prompt = [1, 2, 300, 4]
    raw = b"".join(policy._body("m", PromptIds(prompt).json_parts()))
    expected = completion_body("m", prompt, policy.sampling, {"seed": 5})
    assert msgspec.json.decode(raw) == expected
    # Built once, reused: a second body with another prompt and model still matches; a
    # prompt in several fragments (a ledger's shared pieces and its own ids) too.
    raw2 = b"".join(policy._body("other", PromptIds([9]).json_parts()))
    assert msgspec.json.decode(raw2) == completion_body("other", [9], policy.sampling, {"seed": 5})
    split = PromptIds.of_parts([b"1,2", b"300", b"4"], 4)
    assert b"".join(split.json_parts()) == b"[1,2,300,4]" == bytes(split.json)
    raw3 = b"".join(policy._body("m", split.json_parts()))
    assert msgspec.json.decode(raw3) == expected


def test_ledger_keeps_its_ids_out_of_the_garbage_collector(tok: ChatTokenizer) -> None:
    ledger = TokenLedger(tok)
    msgs = [Message(role="user", content="hi " * 50)]
    prompt = ledger.prompt_for(msgs)
    assert isinstance(prompt, list) and prompt == tok.encode(
        tok.render(msgs, add_generation_prompt=True)
    )
    ledger.append_generated([5, 6], [-0.25, -0.5])
    assert ledger.ids == [*prompt, 5, 6]
    assert ledger.loss_mask == [0] * len(prompt) + [1, 1]
    assert ledger.logprobs[-2:] == [-0.25, -0.5]
    # The collector walks a list's every slot but nothing inside a typed array (at most
    # its type), however long the episode.
    for arr in (ledger._ids, ledger._logprobs, ledger._mask):
        assert len(gc.get_referents(arr)) <= 1
    data = ledger.token_data()
    assert len(data.ids) == 4 * (len(prompt) + 2)


async def test_health_watcher_wakes_when_a_server_goes_down() -> None:
    router = Router(
        ["http://a", "http://b"],
        label="x",
        max_requests=4,
        max_tokens=100,
        retries=0,
        backoff_s=0.01,
        backoff_max_s=0.01,
    )
    probed: list[str] = []
    readmitted = anyio.Event()

    async def probe(server: Server) -> None:
        probed.append(server.url)
        readmitted.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: router.watch_health(probe, interval_s=0.001, timeout_s=1.0))
        await anyio.wait_all_tasks_blocked()
        assert probed == []  # all healthy: the watcher waits, it does not poll
        router._set_health(router.servers[1], False)
        with anyio.fail_after(10):
            await readmitted.wait()
        assert probed == ["http://b"]
        while not router.servers[1].healthy:
            await anyio.sleep(0)
        tg.cancel_scope.cancel()


def test_prompt_json_grows_with_the_ledger_and_matches_its_ids(tok: ChatTokenizer) -> None:
    from gymux.messages import PolicyRequest
    from gymux.policies.tokens import EpisodeLedgers, PromptIds, TokenLedger

    ledgers = EpisodeLedgers(tok)
    msgs = [Message(role="user", content="Solve the maze."), Message(role="user", content="Go.")]
    for turn in range(3):
        request = PolicyRequest(episode_id="e", env_id="maze", task_id=0, turn=turn, messages=msgs)
        got = ledgers.prompt_ids(request, max_new_tokens=4, context_length=None)
        assert isinstance(got, PromptIds)
        ids = ledgers._ledgers["e"].ids
        assert msgspec.json.decode(got.json) == ids and len(got) == len(ids) == got.n
        assert got.ids() == ids
        ledgers.record("e", [7, 300 + turn], [-0.1, -0.2])
        msgs = [
            *msgs,
            Message(role="assistant", content="x", loss=True),
            Message(role="user", content=f"You moved {turn}."),
        ]
    # The list form of the same turn (a ledger's own ids) is the same prompt.
    first = PolicyRequest(episode_id="f", env_id="maze", task_id=0, turn=0, messages=msgs[:2])
    listed = TokenLedger(tok).prompt_for(first.messages)
    assert isinstance(listed, list)
    as_json = EpisodeLedgers(tok).prompt_ids(first, max_new_tokens=4, context_length=None)
    assert isinstance(as_json, PromptIds) and msgspec.json.decode(as_json.json) == listed
    # Past the context: the same context_limit answer from both.
    limited = EpisodeLedgers(tok).prompt_ids(first, max_new_tokens=4, context_length=len(listed))
    assert not isinstance(limited, PromptIds) and limited.finish_reason == "context_limit"


async def test_vllm_policy_against_the_bench_fake_server(tok: ChatTokenizer) -> None:
    """bench/_fake_vllm.py (a subprocess on 127.0.0.1) answers as vLLM does; the policy's
    prompt JSON reaches it intact, turn after turn, and the ledger records its ids."""
    import subprocess
    import sys

    from gymux.messages import PolicyRequest

    script = Path(__file__).resolve().parents[2] / "bench" / "_fake_vllm.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--max-model-len", "4096", "--tokens", "100,101"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.startswith("PORT "), line
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        msgs = [Message(role="user", content="Solve the maze."), Message(role="user", content="Go")]
        async with VLLMPolicy(url, tokenizer=tok, max_new_tokens=3) as policy:
            assert policy.context_length == 4096  # from /v1/models
            sent: list[int] = []
            for turn in range(2):
                request = PolicyRequest(
                    episode_id="e", env_id="maze", task_id=0, turn=turn, messages=msgs
                )
                resp = await policy.act(request)
                assert resp.token_ids == [100, 101, 100]
                assert resp.logprobs == [-0.5, -0.51, -0.52]
                assert resp.finish_reason == "length"
                # The server decoded a prompt as long as the ledger's before this answer.
                ledger = policy._ledgers._ledgers["e"]
                assert resp.prompt_tokens == len(ledger) - 3
                sent = ledger.ids[:-3]
                msgs = [
                    *msgs,
                    Message(role="assistant", content=resp.text, loss=True),
                    Message(role="user", content="You moved."),
                ]
            data = policy.finish_episode("e")
        assert data is not None
        assert len(data.ids) == 4 * (len(sent) + 3)
    finally:
        proc.kill()
        proc.wait()
