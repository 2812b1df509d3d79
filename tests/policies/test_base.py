"""The policy base classes, the optional Policy members, and the adapter that lets the
runtime run a third-party policy implementing only the required ones."""

from __future__ import annotations

import pytest

from gymux._lifecycle import AsyncResource
from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.registry import Registry
from gymux.messages import PolicyRequest, PolicyResponse
from gymux.policies import react
from gymux.policies.base import BasePolicy, SimplePolicy, with_defaults
from gymux.policies.batching import BatchingPolicy
from gymux.policies.openai import OpenAICompatPolicy
from gymux.policies.protocol import Policy
from gymux.policies.sglang.launch import ManagedServer
from gymux.policies.sglang.policy import SGLangPolicy
from gymux.react import format_react
from gymux.runtime import Runtime
from gymux.trajectory import TokenData

from doubles import envs as E

pytestmark = pytest.mark.anyio

E_REQUEST = PolicyRequest(episode_id="e", env_id="probe", task_id=0, turn=0, messages=[])


def test_react_is_the_one_grammar_formatter():
    assert react is format_react
    assert react("t", "a") == "Thought:\nt\n\nAction:\na"


def test_async_resources_share_the_lifecycle_base():
    for cls in (SimplePolicy, BatchingPolicy, OpenAICompatPolicy, SGLangPolicy, ManagedServer):
        assert issubclass(cls, AsyncResource), cls
        assert "__aenter__" not in vars(cls) and "__aexit__" not in vars(cls), cls


async def test_base_classes_give_the_optional_members_defaults():
    policy = SimplePolicy()
    assert isinstance(policy, Policy)
    assert policy.step is None and policy.finish_episode("e") is None
    assert with_defaults(policy) is policy
    async with policy as entered:
        assert entered is policy


class ActOnly:
    """A third-party policy with only the required members (no step, no finish_episode)."""

    name = "act-only"
    version = "7"

    def __init__(self) -> None:
        self.entered = self.exited = 0

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        return PolicyResponse(text=react("go", "go"))

    async def __aenter__(self) -> ActOnly:
        self.entered += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited += 1


class Stepped(SimplePolicy):
    name = "stepped"
    step = 42

    def __init__(self) -> None:
        self.finished: list[str] = []

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        return PolicyResponse(text=react("go", "go"))

    def finish_episode(self, episode_id: str) -> TokenData | None:
        self.finished.append(episode_id)
        return TokenData(ids=b"\x01\x00\x00\x00", loss_mask=b"\x01", tokenizer="t")


async def test_with_defaults_adapts_an_act_only_policy():
    inner = ActOnly()
    assert not isinstance(inner, Policy)
    policy = with_defaults(inner)
    assert isinstance(policy, Policy)
    assert (policy.name, policy.version, policy.step) == ("act-only", "7", None)
    assert policy.finish_episode("e") is None
    async with policy:
        assert inner.entered == 1
        assert (await policy.act(E_REQUEST)).text.endswith("go")
    assert inner.exited == 1


def probe_registry() -> Registry:
    reg = Registry(entry_points_group=None)
    reg.register(E.plugin(E.AsyncProbe, max_instances=4))
    return reg


async def test_runtime_runs_an_act_only_policy():
    policy = ActOnly()
    async with Runtime(RuntimeConfig(), registry=probe_registry()) as rt:
        result = await rt.run(Workload(env="probe", tasks=E.HEALTHY), policy=policy)  # type: ignore[arg-type]
    assert result.summary.success_rate == 1.0
    assert all(t.policy == "act-only" and t.policy_version == "7" for t in result.trajectories)
    assert all(t.policy_step is None and t.tokens is None for t in result.trajectories)
    assert policy.entered == 1 and policy.exited == 1


async def test_runtime_records_step_and_tokens_of_a_full_policy():
    policy = Stepped()
    async with Runtime(RuntimeConfig(), registry=probe_registry()) as rt:
        result = await rt.run(Workload(env="probe", tasks=E.HEALTHY), policy=policy)
    assert all(t.policy_step == 42 for t in result.trajectories)
    assert all(t.tokens is not None and t.tokens.tokenizer == "t" for t in result.trajectories)
    assert sorted(policy.finished) == sorted(t.episode_id for t in result.trajectories)


async def test_base_policy_act_is_abstract():
    with pytest.raises(NotImplementedError):
        await BasePolicy().act(E_REQUEST)
