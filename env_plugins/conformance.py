"""Protocol conformance checks any plugin can run in its own test suite.

::

    import anyio
    from gymux.env_plugins.conformance import check_plugin

    def test_my_env_conforms():
        report = anyio.run(check_plugin, my_plugin)
        assert report.ok, report.problems

The checks drive real instances through the same adapters the runtime uses (thread or
process for blocking envs): spec sanity, ``reset`` on tasks of every split, a ``step``
with an example action, determinism of ``reset`` for the same task id, instance reuse
across episodes, a malformed action turned into a clean error, ``close``, and -- where
the plugin has one -- the oracle finishing every task it is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from gymux.env_plugins.adapters import factory_ref, make_instance
from gymux.env_plugins.protocol import (
    ActionParseError,
    Env,
    EnvPlugin,
    Execution,
    Observation,
    Oracle,
    StepResult,
    Task,
)
from gymux.env_plugins.registry import PluginError, validate_plugin
from gymux.messages import Message, PolicyRequest, PolicyResponse

__all__ = ["ConformanceReport", "check_plugin"]


class ConformanceReport(msgspec.Struct, kw_only=True):
    env_id: str
    checks: list[str] = msgspec.field(default_factory=list)
    problems: list[str] = msgspec.field(default_factory=list)
    oracle_successes: int = 0
    oracle_episodes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


async def _new(plugin: EnvPlugin) -> Env:
    ref = factory_ref(plugin) if plugin.execution is Execution.PROCESS else None
    return await make_instance(plugin, anyio.CapacityLimiter(4), ref)


async def check_plugin(
    plugin: EnvPlugin,
    *,
    tasks_per_split: int = 3,
    oracle_tasks: list[Task] | None = None,
    timeout_s: float = 60.0,
) -> ConformanceReport:
    """Run the conformance checks; ``oracle_tasks`` defaults to the first test tasks."""
    report = ConformanceReport(env_id=plugin.id)
    problems = report.problems

    def check(name: str, ok: bool, detail: str = "") -> bool:
        report.checks.append(name)
        if not ok:
            problems.append(f"{name}: {detail}" if detail else name)
        return ok

    try:
        validate_plugin(plugin.id, plugin)
        check("spec is valid", True)
    except PluginError as exc:
        check("spec is valid", False, exc.cause)
        return report

    spec = plugin.spec
    with anyio.fail_after(timeout_s):
        env = await _new(plugin)
        try:
            first_text: dict[int, str] = {}
            for split in spec.splits.values():
                for task_id in split.ids[:tasks_per_split]:
                    obs = await env.reset(Task(id=task_id, split=split.name))
                    if not check(
                        f"reset({task_id}) returns Observation",
                        isinstance(obs, Observation),
                        repr(type(obs)),
                    ):
                        continue
                    check(f"reset({task_id}) text non-empty", bool(obs.text.strip()))
                    first_text.setdefault(task_id, obs.text)
                    action = (obs.admissible_actions or spec.example_actions or ["noop"])[0]
                    result = await env.step(action)
                    if check(
                        f"step after reset({task_id}) returns StepResult",
                        isinstance(result, StepResult),
                        repr(type(result)),
                    ):
                        lo, hi = spec.reward_range
                        check(
                            f"reward of task {task_id} in range",
                            lo <= result.reward <= hi,
                            f"{result.reward} not in {lo}..{hi}",
                        )
            # Same task id -> same start, on a reused instance.
            for task_id, text in first_text.items():
                again = await env.reset(Task(id=task_id))
                check(
                    f"reset({task_id}) is deterministic",
                    again.text == text,
                    "a second reset of the same task gave a different observation",
                )
            try:
                plugin.parse_action("no action here \x00")
                check("parser rejects malformed output", False, "no ActionParseError raised")
            except ActionParseError as exc:
                check("parser rejects malformed output", bool(str(exc)), "empty message")
        finally:
            await env.close()
        check("close", True)

        if plugin.oracle is not None:
            tasks = oracle_tasks
            if tasks is None:
                split = spec.splits.get("test") or next(iter(spec.splits.values()))
                tasks = [Task(id=i, split=split.name) for i in split.ids[:tasks_per_split]]
            await _check_oracle(plugin, tasks, report)
    return report


_Answer = Callable[[PolicyRequest], Awaitable[str]]


@asynccontextmanager
async def _oracle_answers(
    plugin: EnvPlugin,
) -> AsyncIterator[Callable[[PolicyRequest], Awaitable[str]]]:
    """The plugin's oracle as ``request -> answer text``, closed on the way out.

    An :class:`Oracle` answers through ``solve`` (and is closed with its ``aclose``, if it
    has one); a factory made for older gymux returns a policy, entered as one.
    """
    assert plugin.oracle is not None
    made: Any = plugin.oracle()
    if isinstance(made, Oracle):
        try:
            yield made.solve
        finally:
            close = getattr(made, "aclose", None)
            if close is not None:
                await close()
        return
    async with made as policy:

        async def act(request: PolicyRequest) -> str:
            response = await policy.act(request)
            assert isinstance(response, PolicyResponse)
            return str(response.text)

        yield act


async def _check_oracle(plugin: EnvPlugin, tasks: list[Task], report: ConformanceReport) -> None:
    spec = plugin.spec
    env = await _new(plugin)
    try:
        async with _oracle_answers(plugin) as answer:
            for task in tasks:
                obs = await env.reset(task)
                messages = [
                    Message(role="user", content=spec.instruction),
                    Message(role="assistant", content="OK"),
                    Message(role="user", content=obs.text),
                ]
                reward, done = 0.0, False
                admissible = obs.admissible_actions
                for turn in range(spec.max_turns):
                    text = await answer(
                        PolicyRequest(
                            episode_id=f"conformance-{task.id}",
                            env_id=spec.id,
                            task_id=task.id,
                            turn=turn,
                            messages=list(messages),
                            admissible_actions=admissible,
                        )
                    )
                    messages.append(Message(role="assistant", content=text, loss=True))
                    result = await env.step(plugin.parse_action(text))
                    reward, done = result.reward, result.done
                    if done:
                        break
                    admissible = result.observation.admissible_actions
                    messages.append(Message(role="user", content=result.observation.text))
                report.oracle_episodes += 1
                if done and spec.success.is_success(reward):
                    report.oracle_successes += 1
                else:
                    report.problems.append(f"oracle failed task {task.id} (reward {reward})")
    finally:
        await env.close()
    report.checks.append("oracle solves its tasks")
