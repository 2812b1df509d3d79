"""The env protocol's gold solver (:class:`gymux.env_plugins.Oracle`), the ``oracle``
policy that adapts it (:mod:`gymux.policies.oracle`), and plugins whose oracle factory
returns a ready policy (the older API, still accepted)."""

from __future__ import annotations

import anyio
import pytest

from gymux.env_plugins import EnvPlugin, Oracle, Task, assistant_turn
from gymux.env_plugins.conformance import check_plugin
from gymux.errors import UnknownPolicyError
from gymux.messages import Message, PolicyRequest, PolicyResponse
from gymux.policies.oracle import OraclePolicy, oracle_policy
from gymux.policies.registry import make_policy

from doubles import envs as E

pytestmark = pytest.mark.anyio


def request(*roles: str) -> PolicyRequest:
    return PolicyRequest(
        episode_id="e",
        env_id="probe",
        task_id=0,
        turn=0,
        messages=[Message(role=r, content="x") for r in roles],  # type: ignore[arg-type]
    )


def with_oracle(oracle: object) -> EnvPlugin:
    return EnvPlugin(E.SPEC, E.AsyncProbe, oracle=oracle)  # type: ignore[arg-type]


async def test_an_oracle_becomes_the_oracle_policy_and_is_closed_with_it() -> None:
    solver = E.GoOracle()
    assert isinstance(solver, Oracle)
    plugin = with_oracle(lambda: solver)
    policy = make_policy("oracle", plugin)
    assert isinstance(policy, OraclePolicy) and policy.oracle is solver
    assert (policy.name, policy.version) == ("oracle", "go-1")
    async with policy:
        response = await policy.act(request("user"))
        assert response == PolicyResponse(text="Thought:\ngo\n\nAction:\ngo")
        assert solver.closed == 0
    assert solver.closed == 1


async def test_an_oracle_without_aclose_needs_none() -> None:
    class Bare:
        version = "bare-1"

        async def solve(self, request: PolicyRequest) -> str:
            return "Action: go"

    async with oracle_policy(with_oracle(Bare)) as policy:
        assert (await policy.act(request())).text == "Action: go"


async def test_a_policy_factory_still_works_and_is_used_as_it_is() -> None:
    policy = make_policy("oracle", E.plugin(E.AsyncProbe))
    assert isinstance(policy, E.SaysGo)
    assert (policy.name, policy.version) == ("says-go", "1")


def test_no_oracle_is_an_unknown_policy() -> None:
    with pytest.raises(UnknownPolicyError, match="has no oracle"):
        make_policy("oracle", with_oracle(None))


def test_conformance_runs_and_closes_an_oracle() -> None:
    solver = E.GoOracle()
    report = anyio.run(
        lambda: check_plugin(with_oracle(lambda: solver), oracle_tasks=[Task(id=0), Task(id=1)])
    )
    assert report.ok, report.problems
    assert report.oracle_successes == report.oracle_episodes == 2
    assert solver.closed == 1


def test_assistant_turn_counts_answers_after_the_opening_ok() -> None:
    assert assistant_turn(request()) == 0
    assert assistant_turn(request("user", "assistant", "user")) == 0
    assert assistant_turn(request("user", "assistant", "user", "assistant", "user")) == 1
