"""The ``hf`` engine's continuous batching, KV reuse across turns and weight updates.

Real transformers/torch with the tiny random Llama (:mod:`doubles.tiny_hf_model`); a second
one with other weights (seed 1, same tokenizer) is the "trained" model. Checked: episodes
answered with their caches reused equal episodes answered from scratch (ids, and logprobs
within fp32 noise), also when the LRU budget forces evictions; a turn that arrives while
another decodes joins it at the next step (with its episode's cache) and every row leaves
when it is done; a weight update loads the new weights (answers follow them, the version is
reported), keeps every turn in flight (tokens before it follow the old weights, after it
the new ones) and refuses weights that do not fit without changing anything.
"""

from __future__ import annotations

import array
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from gymux.errors import PolicyError
from gymux.messages import Message, PolicyRequest, PolicyResponse
from gymux.trajectory import TokenData

from doubles.tiny_hf_model import make_tiny_hf_model

if os.environ.get("CI") != "true":
    pytest.importorskip("torch")
    pytest.importorskip("transformers")

from gymux.policies.hf import HFPolicy

pytestmark = pytest.mark.anyio

#: fp32: a cached prefix and a from-scratch forward differ by summation order only.
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other weights for the same architecture and tokenizer."""
    return make_tiny_hf_model(tmp_path_factory.mktemp("trained") / "model", seed=1)


def load(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    model.eval()
    return model


@pytest.fixture(scope="module")
def reference(tiny: Path) -> Any:
    return load(tiny)


@pytest.fixture(scope="module")
def reference_trained(trained: Path) -> Any:
    return load(trained)


def request(episode: str, turn: int, messages: list[Message]) -> PolicyRequest:
    return PolicyRequest(episode_id=episode, env_id="maze", task_id=0, turn=turn, messages=messages)


def first(episode: str, text: str) -> PolicyRequest:
    return request(episode, 0, [Message(role="user", content=text)])


def after(req: PolicyRequest, response: PolicyResponse, observation: str) -> PolicyRequest:
    messages = [
        *req.messages,
        Message(role="assistant", content=response.text),
        Message(role="user", content=observation),
    ]
    return request(req.episode_id, req.turn + 1, messages)


def unpack(tokens: TokenData | None) -> tuple[list[int], list[float], list[int]]:
    assert tokens is not None and tokens.logprobs is not None
    return (
        array.array("i", tokens.ids).tolist(),
        array.array("f", tokens.logprobs).tolist(),
        list(tokens.loss_mask),
    )


def recomputed(model: Any, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for every i >= 1 from one from-scratch forward pass."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [0.0] + [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def assert_token_exact(model: Any, tokens: TokenData | None) -> int:
    ids, logprobs, mask = unpack(tokens)
    expected = recomputed(model, ids)
    generated = [i for i, m in enumerate(mask) if m]
    assert generated
    for i in generated:
        assert abs(logprobs[i] - expected[i]) < TOL, (i, logprobs[i], expected[i])
    return len(generated)


async def wait_for(condition: Any) -> None:
    with anyio.fail_after(60):
        while not condition():
            await anyio.sleep(0.002)


async def play(policy: HFPolicy, episode: str, text: str, turns: int) -> TokenData | None:
    """One episode of ``turns`` turns (fixed observations); returns its token record."""
    req = first(episode, text)
    for turn in range(turns):
        response = await policy.act(req)
        req = after(req, response, f"Observation {turn}: walls left and right.")
    return policy.finish_episode(episode)


async def play_all(policy: HFPolicy, turns: int) -> dict[str, TokenData | None]:
    texts = {f"e{i}": "You are in a maze. Find the goal. " * (i + 1) for i in range(3)}
    out: dict[str, TokenData | None] = {}

    async def one(episode: str) -> None:
        out[episode] = await play(policy, episode, texts[episode], turns)

    async with anyio.create_task_group() as tg:
        for episode in texts:
            tg.start_soon(one, episode)
    return out


# -- KV reuse across turns ------------------------------------------------------------------


async def test_reused_caches_answer_like_a_fresh_prefill(tiny: Path, reference: Any) -> None:
    """Three concurrent 4-turn episodes, greedy: with reuse, with reuse under a budget that
    holds about one episode (evictions), and without reuse: the same ids, the same
    logprobs (within fp32 noise), each equal to a from-scratch forward pass."""
    runs: dict[str, dict[str, TokenData | None]] = {}
    stats: dict[str, Any] = {}
    budgets = {"reuse": 1 << 30, "tight": 200_000, "none": 0}
    for name, budget in budgets.items():
        async with HFPolicy(
            tiny, temperature=0.0, max_new_tokens=6, kv_cache_bytes=budget
        ) as policy:
            runs[name] = await play_all(policy, turns=4)
            assert policy.engine is not None
            stats[name] = policy.engine.kv.stats
            assert len(policy.engine.kv) == 0  # finished episodes leave nothing behind
    assert (stats["reuse"].hits, stats["reuse"].misses) == (9, 3)
    assert stats["reuse"].evictions == 0
    assert stats["tight"].evictions > 0 and 0 < stats["tight"].hits < 9
    assert stats["none"].hits == 0
    assert stats["reuse"].reused_tokens > stats["reuse"].prefilled_tokens
    for episode, tokens in runs["none"].items():
        ids, logprobs, mask = unpack(tokens)
        for name in ("reuse", "tight"):
            other_ids, other_logprobs, other_mask = unpack(runs[name][episode])
            assert (other_ids, other_mask) == (ids, mask)
            assert max(abs(a - b) for a, b in zip(logprobs, other_logprobs, strict=True)) < TOL
        assert assert_token_exact(reference, runs["reuse"][episode]) == 4 * 6


# -- continuous batching -----------------------------------------------------------------------


async def test_turns_join_the_running_batch_and_leave_when_done(tiny: Path, reference: Any) -> None:
    """Greedy decoding of the random model never emits EOS, so each turn runs its
    ``max_new_tokens``. B arrives while A decodes and joins it at the next step instead of
    waiting for A to finish; A leaves as soon as it is done while B goes on; A's next turn
    joins B's batch with A's cached prefix. Every answer is token-exact."""
    steps = 40
    async with HFPolicy(tiny, temperature=0.0, max_new_tokens=steps) as policy:
        engine = policy.engine
        assert engine is not None
        answers: dict[str, PolicyResponse] = {}
        order: list[str] = []
        a0 = first("A", "Find the exit of this maze, quickly please.")
        b0 = first("B", "Go.")

        async def turn(name: str, req: PolicyRequest) -> None:
            answers[name] = await policy.act(req)
            order.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(turn, "A0", a0)
            await wait_for(lambda: engine.tokens_generated >= steps // 2)
            tg.start_soon(turn, "B0", b0)
            await wait_for(lambda: "A0" in answers)
            # A left at once: B is still decoding, alone.
            assert "B0" not in answers and engine.active_rows == 1
            tg.start_soon(turn, "A1", after(a0, answers["A0"], "A wall."))
        assert order[0] == "A0" and set(order) == {"A0", "B0", "A1"}
        assert all(len(r.token_ids or []) == steps for r in answers.values())
        assert engine.joined_running == 2  # B0 into A0's batch, A1 into B0's
        assert engine.max_rows == 2
        assert engine.kv.stats.hits == 1  # A1 prefilled only its new suffix
        # Overlapped: far fewer steps than three turns one after another.
        assert engine.decode_steps < 3 * (steps - 1)
        assert_token_exact(reference, policy.finish_episode("A"))
        assert_token_exact(reference, policy.finish_episode("B"))


# -- weight updates ------------------------------------------------------------------------------


async def test_weight_update_changes_the_answers_and_reports_the_version(
    tiny: Path, trained: Path, reference: Any, reference_trained: Any
) -> None:
    prompt = "You are in a maze. Go."
    async with HFPolicy(tiny, temperature=0.0, max_new_tokens=8) as policy:
        engine = policy.engine
        assert engine is not None
        before = await policy.act(first("old", prompt))
        assert before.weight_version == "0" == policy.weight_version
        assert before.weight_versions is None  # one version: no ranges
        assert "old" in engine.kv  # cached: the update must drop it

        await policy.update_weights(trained, version="step-1")  # a save_pretrained folder
        assert policy.weight_version == "step-1" and engine.weight_updates == 1
        assert len(engine.kv) == 0
        new = await policy.act(first("new", prompt))
        assert new.weight_version == "step-1"
        assert new.logprobs != before.logprobs
        assert_token_exact(reference_trained, policy.finish_episode("new"))

        # A mapping (a trainer's state_dict) brings the first weights back.
        await policy.update_weights(reference.state_dict(), version="step-2")
        back = await policy.act(first("back", prompt))
        assert back.weight_version == "step-2"
        assert back.token_ids == before.token_ids
        assert back.logprobs is not None and before.logprobs is not None
        assert max(abs(a - b) for a, b in zip(back.logprobs, before.logprobs, strict=True)) < TOL


async def test_weight_update_in_flight_loses_no_turn(
    tiny: Path, reference: Any, reference_trained: Any
) -> None:
    """Three turns decode; new weights arrive mid-turn. Every turn completes; its tokens up
    to the update follow the old weights, the rest the new ones (the turns were prefilled
    again under them), and the answers report the new version."""
    steps = 200
    new_weights = reference_trained.state_dict()
    async with HFPolicy(tiny, temperature=0.0, max_new_tokens=steps) as policy:
        engine = policy.engine
        assert engine is not None
        answers: dict[str, PolicyResponse] = {}

        async def turn(episode: str, text: str) -> None:
            answers[episode] = await policy.act(first(episode, text))

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(turn, f"e{i}", "Maze. " * (i + 1))
            await wait_for(lambda: engine.tokens_generated >= 6)
            await policy.update_weights(new_weights, version="v1")
            assert engine.active_rows == 3  # the update did not end them
        assert sorted(answers) == ["e0", "e1", "e2"]
        for episode, response in answers.items():
            assert len(response.token_ids or []) == steps
            assert response.weight_version == "v1"
            ids, logprobs, mask = unpack(policy.finish_episode(episode))
            old, new = recomputed(reference, ids), recomputed(reference_trained, ids)
            generated = [i for i, m in enumerate(mask) if m]
            switch = next(n for n, i in enumerate(generated) if abs(logprobs[i] - old[i]) > TOL)
            assert 2 <= switch < steps
            assert response.weight_versions == [(0, "0"), (switch, "v1")]
            for n, i in enumerate(generated):
                assert abs(logprobs[i] - (old if n < switch else new)[i]) < TOL, (n, switch)


async def test_weights_that_do_not_fit_change_nothing(
    tiny: Path, reference: Any, tmp_path: Path
) -> None:
    import torch

    state = reference.state_dict()
    name = next(iter(state))
    (tmp_path / "model.bin").write_bytes(b"pickle")
    async with HFPolicy(tiny, temperature=0.0, max_new_tokens=6) as policy:
        before = await policy.act(first("a", "Go."))
        bad: list[tuple[Any, str]] = [
            ({"no.such.weight": torch.zeros(2)}, "names the model does not have"),
            ({name: torch.zeros(3, 3)}, "shapes that differ"),
            ({}, "no tensors"),
            (tmp_path / "nowhere", "no weights at"),
            (tmp_path / "model.bin", "only safetensors"),
            (tmp_path, r"no \*\.safetensors"),
        ]
        for source, message in bad:
            with pytest.raises(PolicyError, match=message):
                await policy.update_weights(source, version="broken")
        assert policy.weight_version == "0"
        assert policy.engine is not None and policy.engine.weight_updates == 0
        again = await policy.act(first("b", "Go."))
        assert again.token_ids == before.token_ids and again.weight_version == "0"
    with pytest.raises(PolicyError, match="not running"):
        await policy.update_weights(state, version="late")


async def test_a_cancelled_turn_can_be_asked_again(tiny: Path, reference: Any) -> None:
    """A turn cancelled mid-decode (a timeout, an update that aborts calls in flight) and
    asked again with the same messages is answered; the record holds its prompt once and
    only the answer that was returned."""
    async with HFPolicy(tiny, temperature=0.0, max_new_tokens=300) as policy:
        engine = policy.engine
        assert engine is not None
        req0 = first("e", "Go.")
        answer0 = await policy.act(req0)
        req1 = after(req0, answer0, "A wall.")
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(policy.act, req1)
                await wait_for(lambda: engine.tokens_generated >= 300 + 3)
                scope.cancel()
        await wait_for(lambda: engine.cancelled_rows == 1)
        answer1 = await policy.act(req1)
        assert len(answer1.token_ids or []) == 300
        tokens = policy.finish_episode("e")
        ids, _, mask = unpack(tokens)
        assert sum(mask) == 600  # two answers, not three
        assert ids[-300:] == answer1.token_ids
        assert assert_token_exact(reference, tokens) == 600


def test_default_threads_leave_busy_cpus_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from gymux.policies.hf import engine

    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(engine.os, "getloadavg", lambda: (9.7, 5.0, 3.0))
    assert engine.default_threads() == 1  # 2 CPUs, both busy: one thread
    monkeypatch.setattr(engine.os, "getloadavg", lambda: (0.2, 0.1, 0.0))
    assert engine.default_threads() == 2  # idle: all of them
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert engine.default_threads() == 8  # at most 8


@pytest.mark.parametrize("mode", ["abort", "continue"])
async def test_runtime_update_policy_keeps_every_episode(
    mode: str, tiny: Path, reference: Any, reference_trained: Any
) -> None:
    """``Runtime.update_policy`` on a running maze workload: ``abort`` cancels the calls in
    flight and the episodes ask again (the ledger keeps each prompt once); ``continue``
    lets them finish under the new weights. Every episode plays all its turns, and every
    generated token's logprob is the one of the version its turn records for it."""
    from gymux import Runtime, RuntimeConfig, Workload

    references = {"0": reference, "v1": reference_trained}
    async with Runtime(RuntimeConfig()) as rt:
        policy = HFPolicy(tiny, temperature=0.0, max_new_tokens=100)
        workload = Workload(env="maze", tasks=[0, 1, 2], policy="hf", max_turns=3)
        handle = await rt.submit(workload, policy=policy)
        # Every episode's first turn is answered (100 tokens: the random model never stops
        # on its own) and the second ones decode.
        await wait_for(lambda: policy.engine is not None and policy.engine.tokens_generated >= 305)
        await rt.update_policy(
            policy, version="v1", source=reference_trained.state_dict(), mode=mode
        )
        result = await handle.wait()
    assert [t.finish_reason.value for t in result.trajectories] == ["max_turns"] * 3
    versions_seen: set[str] = set()
    for t in result.trajectories:
        ids, logprobs, _ = unpack(t.tokens)
        recomputed_by = {v: recomputed(model, ids) for v, model in references.items()}
        assert len(t.turns) == 3
        for turn in t.turns:
            assert turn.span is not None and turn.weight_version is not None
            ranges = turn.weight_versions or [(turn.span[0], turn.weight_version)]
            for i in range(*turn.span):
                version = [v for start, v in ranges if start <= i][-1]
                versions_seen.add(version)
                assert abs(logprobs[i] - recomputed_by[version][i]) < TOL, (version, i)
    assert versions_seen == {"0", "v1"}
    if mode == "abort":
        assert any(turn.abort == "weight_update" for t in result.trajectories for turn in t.turns)
