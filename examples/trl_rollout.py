"""gymux as TRL's rollout source: a ``rollout_func`` for ``trl.GRPOTrainer`` (TRL >= 1.x).

::

    rollout = GymuxRollout(env="maze", model=folder, max_turns=3, max_new_tokens=48)
    trainer = GRPOTrainer(
        model=folder,
        reward_funcs=env_reward,                  # the env's reward, from the rollout
        train_dataset=Dataset.from_dict({"prompt": ["40", "45", ...]}),  # maze task ids
        args=GRPOConfig(num_generations=4, ...),
        rollout_func=rollout,
    )
    trainer.train()
    rollout.close()

TRL hands ``rollout_func(prompts, trainer)`` each process's prompts, every prompt repeated
``num_generations`` times in a row (its sampler's groups), and expects one completion per
prompt back: ``prompt_ids``, ``completion_ids`` and ``logprobs``, plus ``env_mask`` (1 on
model tokens, 0 on the environment's observations between turns) and any other field,
which TRL passes to the reward functions. Here each prompt is a task id of a gymux env;
each run of equal prompts becomes one gymux group (``Workload.group_size``), played
multi-turn by gymux's in-process ``hf`` policy, token-exact. Before a call, when TRL's
``global_step`` moved, the trainer's weights are pushed into the policy with
``Runtime.update_policy`` (so rollouts are sampled by the weights being trained). The
trajectories also land in the gymux store at ``out`` when given.

The runtime lives on an event loop in a background thread (an anyio blocking portal),
since TRL calls the rollout function synchronously.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import numpy as np

from gymux import Runtime, RuntimeConfig, Workload
from gymux.env_plugins.registry import Registry
from gymux.policies.hf import HFPolicy
from gymux.trajectory import Trajectory


def env_reward(
    prompts: list[Any], completions: list[Any], env_reward: list[float], **_: Any
) -> list[float]:
    """A TRL reward function: the gymux episode's reward (the ``env_reward`` field)."""
    return list(env_reward)


class GymuxRollout:
    """A ``rollout_func`` running gymux episodes (see the module docstring)."""

    def __init__(
        self,
        env: str,
        model: str | Path,
        *,
        max_turns: int | None = None,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        registry: Registry | None = None,
        out: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        self.env, self.max_turns, self.seed = env, max_turns, seed
        self.version = 0
        self.calls = 0
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.policy = HFPolicy(
            str(model), max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0
        )
        self._rt_cm = self.portal.wrap_async_context_manager(
            Runtime(RuntimeConfig(max_concurrent_episodes=256), registry=registry, out=out)
        )
        self.rt = self._rt_cm.__enter__()

    def close(self) -> None:
        self._rt_cm.__exit__(None, None, None)
        self._portal_cm.__exit__(None, None, None)

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        step = int(trainer.state.global_step)
        if step > self.version:  # push the weights being trained
            model = trainer.accelerator.unwrap_model(trainer.model)
            state = {k: v.detach() for k, v in model.state_dict().items()}
            self.portal.call(self._update, state, step)
            self.version = step
        # Consecutive equal prompts form one group.
        blocks: list[tuple[int, int]] = []  # (task id, size)
        for prompt in prompts:
            task = int(prompt if isinstance(prompt, str) else prompt[-1]["content"])
            if blocks and blocks[-1][0] == task and blocks[-1][1] < trainer.num_generations:
                blocks[-1] = (task, blocks[-1][1] + 1)
            else:
                blocks.append((task, 1))
        groups = self.portal.call(self._play, blocks)
        self.calls += 1
        out: dict[str, list[Any]] = {
            "prompt_ids": [],
            "completion_ids": [],
            "logprobs": [],
            "env_mask": [],
            "env_reward": [],
            "weight_version": [],
        }
        for group in groups:
            for t in group:
                tokens = t.tokens
                assert tokens is not None
                ids = np.frombuffer(tokens.ids, "<i4").tolist()
                mask = list(tokens.loss_mask)
                logprobs = np.frombuffer(tokens.logprobs or bytes(4 * len(ids)), "<f4").tolist()
                first = mask.index(1)  # the prompt ends where the first response starts
                out["prompt_ids"].append(ids[:first])
                out["completion_ids"].append(ids[first:])
                out["logprobs"].append(
                    [lp if m else 0.0 for lp, m in zip(logprobs[first:], mask[first:], strict=True)]
                )
                out["env_mask"].append(mask[first:])
                out["env_reward"].append(t.reward)
                out["weight_version"].append(
                    t.policy_step if t.policy_step is not None else self.version
                )
        return out

    async def _update(self, state: dict[str, Any], step: int) -> None:
        await self.rt.update_policy(self.policy, version=step, source=state, mode="wait")

    async def _play(self, blocks: list[tuple[int, int]]) -> list[list[Trajectory]]:
        """One gymux run per block (a group of ``size`` episodes of task ``task``)."""
        results: list[list[Trajectory]] = [[] for _ in blocks]

        async def one(i: int, task: int, size: int) -> None:
            workload = Workload(
                env=self.env,
                tasks=[task],
                policy="hf",
                group_size=size,
                max_turns=self.max_turns,
                seed=self.seed + 1000 * self.calls + i,
            )
            result = await self.rt.run(workload, policy=self.policy)
            results[i] = sorted(result.trajectories, key=lambda t: t.sample)

        async with anyio.create_task_group() as tg:
            for i, (task, size) in enumerate(blocks):
                tg.start_soon(one, i, task, size)
        return results
