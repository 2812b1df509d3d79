"""The in-process ``hf`` policy (gymux.policies.hf) with a real, tiny, random Llama.

The model folder is made at test time (:mod:`doubles.tiny_hf_model`: a 2-layer Llama and a
locally trained tokenizer), loaded by real transformers/torch. Checked: concurrent turns
coalesce into one prefill and one forward pass per decode step; the ids and logprobs the
policy hands out (and the store keeps) equal a fresh full-sequence forward pass of the same
model; the loss mask is 1 exactly on generated ids; the context limit; cancellation of a
queued and of a decoding turn; ``gymux run --policy hf`` end to end; bad input.
"""

from __future__ import annotations

import array
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from gymux.errors import PolicyOptionsError
from gymux.messages import Message, PolicyRequest
from gymux.trajectory import TokenData

from doubles.procs import REPO_ROOT, clean_env
from doubles.tiny_hf_model import make_tiny_hf_model

if os.environ.get("CI") != "true":
    pytest.importorskip("torch")
    pytest.importorskip("transformers")

from gymux.policies.hf import HFPolicy

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def reference(tiny: Path) -> Any:
    """The same model, loaded independently, to recompute logprobs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    model.eval()
    return model


def request(episode: str, turn: int, messages: list[Message]) -> PolicyRequest:
    return PolicyRequest(episode_id=episode, env_id="maze", task_id=0, turn=turn, messages=messages)


def first(episode: str, text: str) -> PolicyRequest:
    return request(episode, 0, [Message(role="user", content=text)])


def unpack(tokens: TokenData) -> tuple[list[int], list[float], list[int]]:
    assert tokens.logprobs is not None
    return (
        array.array("i", tokens.ids).tolist(),
        array.array("f", tokens.logprobs).tolist(),
        list(tokens.loss_mask),
    )


def recomputed_logprobs(model: Any, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for every i >= 1, from one full forward pass."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [0.0] + [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def check_token_exact(model: Any, tokens: TokenData, *, greedy: bool) -> int:
    """Generated positions' stored logprobs equal a recomputation; returns their count."""
    import torch

    ids, logprobs, mask = unpack(tokens)
    assert len(ids) == len(logprobs) == len(mask)
    expected = recomputed_logprobs(model, ids)
    generated = [i for i, m in enumerate(mask) if m]
    assert generated, "no generated tokens"
    for i in generated:
        assert abs(logprobs[i] - expected[i]) < 1e-4, (i, logprobs[i], expected[i])
    for i, m in enumerate(mask):
        if not m:
            assert logprobs[i] == 0.0
    if greedy:  # each generated id is the argmax after its prefix
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        for i in generated:
            assert int(logits[i - 1].argmax()) == ids[i]
    return len(generated)


async def act_all(policy: HFPolicy, requests: list[PolicyRequest]) -> list[Any]:
    results: list[Any] = [None] * len(requests)

    async def one(i: int) -> None:
        results[i] = await policy.act(requests[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(requests)):
            tg.start_soon(one, i)
    return results


# -- batching, token exactness, loss mask ---------------------------------------------------


async def test_concurrent_turns_share_forward_passes(tiny: Path, reference: Any) -> None:
    steps = 12
    texts = [f"The goal is at position ({i}, {i + 1})." * (i + 1) for i in range(6)]
    async with HFPolicy(tiny, temperature=0.0, max_new_tokens=steps, max_batch=16) as policy:
        results = await act_all(policy, [first(f"e{i}", t) for i, t in enumerate(texts)])
        engine = policy.engine
        assert engine is not None
        # One left-padded prefill for all six, then one pass per decode step at most.
        assert engine.batch_sizes == [6]
        assert engine.prefill_calls == 1
        assert engine.forward_calls <= steps
        assert sum(len(r.token_ids) for r in results) == engine.tokens_generated
        # Batched, padded decoding gives each row what it would get alone.
        async with HFPolicy(tiny, temperature=0.0, max_new_tokens=steps) as alone:
            for i, text in enumerate(texts):
                single = await alone.act(first(f"s{i}", text))
                assert single.token_ids == results[i].token_ids
                for a, b in zip(single.logprobs, results[i].logprobs, strict=True):
                    assert abs(a - b) < 1e-4
        for i, result in enumerate(results):
            tokens = policy.finish_episode(f"e{i}")
            assert tokens is not None
            assert check_token_exact(reference, tokens, greedy=True) == len(result.token_ids)
            ids, _, mask = unpack(tokens)
            assert ids[-len(result.token_ids) :] == result.token_ids
            assert mask == [0] * (len(ids) - len(result.token_ids)) + [1] * len(result.token_ids)


async def test_multi_turn_ledger_is_token_exact_with_sampling(tiny: Path, reference: Any) -> None:
    """Three turns, temperature 1: the record grows by the generated ids plus each new
    observation; its loss mask marks exactly the generated ids of every turn."""
    async with HFPolicy(tiny, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3) as policy:
        engine = policy.engine
        assert engine is not None
        messages = [Message(role="user", content="You are in a maze. Go.")]
        generated: list[list[int]] = []
        for turn in range(3):
            response = await policy.act(request("ep", turn, messages))
            assert response.finish_reason in ("stop", "length")
            assert response.completion_tokens == len(response.token_ids) >= 1
            assert response.weight_version == "0"
            generated.append(response.token_ids)
            messages = [
                *messages,
                Message(role="assistant", content=response.text),
                Message(role="user", content=f"Observation {turn}: a wall."),
            ]
        tokens = policy.finish_episode("ep")
        # Turns 1 and 2 prefilled only their new suffix on top of the episode's cache;
        # finishing the episode dropped it.
        assert (engine.kv.stats.hits, engine.kv.stats.misses) == (2, 1)
        assert engine.kv.stats.reused_tokens > engine.kv.stats.prefilled_tokens
        assert "ep" not in engine.kv and engine.kv.nbytes == 0
    assert tokens is not None
    assert check_token_exact(reference, tokens, greedy=False) == sum(map(len, generated))
    ids, _, mask = unpack(tokens)
    runs: list[list[int]] = []
    for i, m in enumerate(mask):
        if m and (i == 0 or not mask[i - 1]):
            runs.append([])
        if m:
            runs[-1].append(ids[i])
    assert runs == generated


# -- context limit ----------------------------------------------------------------------------


async def test_context_limit_option_answers_without_running_the_model(tiny: Path) -> None:
    async with HFPolicy(tiny, context_length=40, max_new_tokens=8) as policy:
        response = await policy.act(first("e", "word " * 60))
        assert response.finish_reason == "context_limit"
        assert response.prompt_tokens is not None and response.prompt_tokens + 8 > 40
        assert policy.engine is not None and policy.engine.forward_calls == 0


async def test_context_limit_of_the_model_ends_a_later_turn(tmp_path: Path) -> None:
    """The model's own max_position_embeddings: turn 0 fits, turn 1 (longer) does not."""
    from gymux.policies.tokens import ChatTokenizer

    folder = make_tiny_hf_model(tmp_path / "m", max_positions=4096)
    messages = [Message(role="user", content="Find the exit.")]
    prompt = len(
        ChatTokenizer.from_dir(folder).encode(
            ChatTokenizer.from_dir(folder).render(messages, add_generation_prompt=True)
        )
    )
    short = make_tiny_hf_model(tmp_path / "short", max_positions=prompt + 6 + 2)
    async with HFPolicy(short, temperature=0.0, max_new_tokens=6) as policy:
        assert policy.context_length == prompt + 8
        one = await policy.act(request("e", 0, messages))
        assert one.finish_reason != "context_limit" and one.token_ids
        later = [
            *messages,
            Message(role="assistant", content=one.text),
            Message(role="user", content="No exit here."),
        ]
        two = await policy.act(request("e", 1, later))
        assert two.finish_reason == "context_limit"
        assert two.token_ids is None


# -- cancellation -------------------------------------------------------------------------------


async def wait_for(condition: Any) -> None:
    with anyio.fail_after(60):
        while not condition():
            await anyio.sleep(0.005)


async def test_cancelled_turn_is_dropped_from_its_running_batch(tiny: Path) -> None:
    """Greedy decoding of the random model never emits EOS: without cancellation the turn
    would take all 3000 steps."""
    async with HFPolicy(tiny, temperature=0.0, max_new_tokens=3000) as policy:
        engine = policy.engine
        assert engine is not None
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(policy.act, first("victim", "hello"))
                await wait_for(lambda: engine.tokens_generated >= 2)
                scope.cancel()
        assert scope.cancelled_caught
        await wait_for(lambda: engine.cancelled_rows == 1)
        assert engine.tokens_generated < 3000
        # The policy carries on: the next turn runs in a batch of its own.
        after = await policy.act(first("next", "hi"))
        assert after.token_ids
        assert engine.batch_sizes == [1, 1]


async def test_cancelled_queued_turn_never_runs(tiny: Path) -> None:
    """With the batch full (``max_batch=1``) a second turn waits in the engine's inbox;
    cancelled there, it is never prefilled."""
    async with HFPolicy(tiny, temperature=0.0, max_new_tokens=3000, max_batch=1) as policy:
        engine = policy.engine
        assert engine is not None
        with anyio.CancelScope() as busy:
            async with anyio.create_task_group() as tg:
                tg.start_soon(policy.act, first("busy", "hello"))
                await wait_for(lambda: engine.tokens_generated >= 1)  # "busy" decodes
                with anyio.CancelScope() as queued:
                    async with anyio.create_task_group() as inner:
                        inner.start_soon(policy.act, first("dropped", "bye"))
                        await wait_for(lambda: engine.queued() == 1)
                        queued.cancel()
                busy.cancel()
        await wait_for(lambda: engine.cancelled_rows == 2 and engine.queued() == 0)
        assert engine.batch_sizes == [1]  # "dropped" was never prefilled
        assert engine.active_rows == 0


# -- options and bad input ----------------------------------------------------------------------


def test_options_are_validated(tiny: Path) -> None:
    with pytest.raises(PolicyOptionsError, match="top_p"):
        HFPolicy(tiny, top_p=1.5)
    with pytest.raises(PolicyOptionsError, match="max_batch"):
        HFPolicy(tiny, max_batch=0)
    with pytest.raises(PolicyOptionsError, match="dtype"):
        HFPolicy(tiny, dtype="float8")
    with pytest.raises(PolicyOptionsError, match="neither a model folder"):
        HFPolicy("/nonexistent/model")
    with pytest.raises(PolicyOptionsError, match=r"no config\.json"):
        HFPolicy(tiny.parent)


def test_registry_builds_hf(tiny: Path) -> None:
    from gymux.env_plugins.builtin.maze.plugin import plugin
    from gymux.policies.registry import make_policy

    policy = make_policy("hf", plugin, seed=7, options={"model": str(tiny)})
    assert isinstance(policy, HFPolicy)
    assert policy.options.seed == 7
    with pytest.raises(PolicyOptionsError, match="needs a model"):
        make_policy("hf", plugin, options={})
    with pytest.raises(PolicyOptionsError, match="unknown option"):
        make_policy("hf", plugin, options={"model": str(tiny), "nope": 1})


# -- gymux run end to end -----------------------------------------------------------------------


def gymux(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gymux", *map(str, args)],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_run_maze_with_tiny_model(tiny: Path, reference: Any, tmp_path: Path) -> None:
    from gymux.stores import Store

    out = tmp_path / "out"
    proc = gymux(
        *("run", "--env", "maze", "--policy", "hf", "--model"),
        tiny,
        *("--tasks", "0-4", "--max-turns", "3", "--max-tokens", "12", "--temperature", "0"),
        *("--out",),
        out,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    trajectories = list(Store(out / "store", create=False).trajectories())
    assert sorted(t.task_id for t in trajectories) == [0, 1, 2, 3, 4]
    for t in trajectories:
        assert t.policy == "hf"
        assert t.finish_reason in ("max_turns", "done")
        assert len(t.turns) == 3
        assert t.tokens is not None
        generated = check_token_exact(reference, t.tokens, greedy=True)
        assert generated == sum(turn.completion_tokens or 0 for turn in t.turns)


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    no_model = gymux("run", "--env", "maze", "--policy", "hf", "--tasks", "0", cwd=tmp_path)
    assert no_model.returncode == 2
    assert "--policy hf needs --model" in no_model.stderr
    assert "Traceback" not in no_model.stderr
    missing = gymux(
        *("run", "--env", "maze", "--policy", "hf", "--model"),
        tmp_path / "nope",
        "--tasks",
        "0",
        "--out",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert missing.returncode != 0
    assert "neither a model folder nor 'smollm2'" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "store").exists()  # nothing started, nothing lost


def test_repo_root_is_the_checkout() -> None:
    assert (REPO_ROOT / "policies" / "hf" / "policy.py").is_file()


def test_kv_cache_budget_is_an_option(tmp_path) -> None:
    """``kv_cache_mb`` (config files and make_policy reach it) sets the byte budget;
    ``kv_cache_bytes=`` still overrides it."""
    from gymux.policies.hf.policy import HFPolicy

    from doubles.tiny_hf_model import make_tiny_hf_model

    folder = make_tiny_hf_model(tmp_path / "m")
    assert HFPolicy(folder).kv_cache_bytes == 2048 << 20
    assert HFPolicy(folder, kv_cache_mb=0).kv_cache_bytes == 0
    assert HFPolicy(folder, kv_cache_mb=3, kv_cache_bytes=5).kv_cache_bytes == 5
