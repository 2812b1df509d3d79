"""examples/grpo.py: a real GRPO loop (torch, the in-process hf policy, the tiny random
Llama of ``doubles.tiny_hf_model``) on gymux rollouts, a few steps each.

The env is a two-turn "coin" whose reward is the parity of the second answer's length, so
the random model's groups have reward variance: advantages are not all zero, gradients
are real, and the weights the trainer pushes change what the policy computes.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from gymux.env_plugins import EnvPlugin, EnvSpec, Observation, StepResult, Task, splits_from
from gymux.env_plugins.registry import Registry
from gymux.stores import ConsumerCursor, RecordType, Store, decode_group, decode_trajectory

from doubles.tiny_hf_model import make_tiny_hf_model

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GROUP, GROUPS = 4, 2  # group size, groups per step


def load_module(file: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec resolves the Structs' annotations through it
    spec.loader.exec_module(module)
    return module


grpo = load_module("grpo.py", "gymux_example_grpo")


class Coin:
    """Two turns; the second answer's length decides the reward (odd: 1, even: 0)."""

    def __init__(self) -> None:
        self.turn = 0

    async def reset(self, task: Task) -> Observation:
        self.turn = 0
        return Observation(text=f"Task {task.id}: say anything.")

    async def step(self, action: str) -> StepResult:
        self.turn += 1
        done = self.turn >= 2
        reward = float(len(action) % 2) if done else 0.0
        return StepResult(observation=Observation(text="Once more."), reward=reward, done=done)

    async def close(self) -> None:
        return None


COIN = EnvPlugin(
    EnvSpec(
        id="coin",
        version="1",
        instruction="Say anything.",
        action_format="any text",
        splits=splits_from({"train": range(4)}),
        max_turns=2,
    ),
    Coin,
    execution="async",
    parse_action=lambda text: text or ".",
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny-llama"))


def registry() -> Registry:
    reg = Registry(entry_points_group=None)
    reg.register(COIN)
    return reg


def config(model: Path, out: Path, **kw: Any) -> Any:
    fields: dict[str, Any] = dict(
        model=str(model),
        env="coin",
        tasks=[0, 1, 2, 3],
        steps=4,
        group_size=GROUP,
        groups_per_step=GROUPS,
        max_turns=2,
        max_new_tokens=8,
        lr=0.05,
        out=str(out),
    )
    fields.update(kw)
    return grpo.GRPOConfig(**fields)


def stored_groups(store: Path) -> dict[str, list[Any]]:
    """Every group record of the store: its id -> its members; fails on a lone trajectory."""
    groups: dict[str, list[Any]] = {}
    reader = Store(store).reader("trajectories")
    for record in reader.records(reader.seek(0)):
        assert record.type != RecordType.TRAJECTORY, "a grouped run wrote a lone trajectory"
        if record.type == RecordType.GROUP:
            members = [decode_trajectory(m) for m in decode_group(record.payload)]
            groups[members[0].group_id] = members
    return groups


async def test_one_step_off_loop_advances_versions_and_respects_staleness(
    tiny_model: Path, tmp_path: Path
) -> None:
    cfg = config(tiny_model, tmp_path / "run", max_staleness=1, update_mode="continue")
    result = await grpo.train(cfg, registry=registry())
    steps = result.steps

    # Versions advance, one per optimizer step, and the loss is finite.
    assert [s.version for s in steps] == [0, 1, 2, 3]
    for s in steps:
        assert s.rows == GROUP * GROUPS and s.groups == GROUPS
        assert math.isfinite(s.loss) and math.isfinite(s.ratio) and s.tokens > 0
        # Staleness: no consumed sample is more than max_staleness versions old.
        assert all(v >= s.version - cfg.max_staleness for v in s.row_versions), s
        assert s.lag_max <= cfg.max_staleness
    # Later rollouts ran under the weights the trainer pushed.
    assert max(v for s in steps for v in s.row_versions) >= 1
    # The pushed weights differ from the ones that sampled older rows: ratios move off 1.
    assert any(abs(s.ratio - 1.0) > 1e-6 for s in steps[1:] if s.lag_max > 0)

    # Groups are atomic: whole group records only, each group consumed once and whole.
    groups = stored_groups(tmp_path / "run" / "store")
    for gid, members in groups.items():
        assert len(members) == GROUP
        assert {m.group_id for m in members} == {gid} and {m.group_size for m in members} == {GROUP}
    consumed = [g for s in steps for g in s.group_ids]
    assert len(consumed) == len(set(consumed)) == 4 * GROUPS
    assert set(consumed) <= set(groups)

    # The consumer cursor is committed past every consumed batch, with the trainer's step.
    cursor = ConsumerCursor.load(Store(tmp_path / "run" / "store"), "grpo")
    assert cursor.state.extra == {"step": 4}
    assert cursor.state.consumed_groups == len(consumed)


async def test_on_policy_loop_serves_exactly_the_trained_weights(
    tiny_model: Path, tmp_path: Path
) -> None:
    """``ahead=0``: each batch is sampled after the previous update, so every row is of the
    trainer's current version and the generation's logprobs equal the trainer's own: the
    policy runs exactly the weights the trainer pushed."""
    cfg = config(tiny_model, tmp_path / "run", ahead=0, max_staleness=0, update_mode="wait")
    steps = (await grpo.train(cfg, registry=registry())).steps
    assert [s.version for s in steps] == [0, 1, 2, 3]
    for s in steps:
        assert set(s.row_versions) == {s.version}
        assert s.onpolicy_gap < 1e-4, s
        assert abs(s.ratio - 1.0) < 1e-3
    assert any(abs(s.loss) > 0 for s in steps)  # real gradients (reward variance)


async def test_stale_groups_never_reach_the_trainer(tiny_model: Path, tmp_path: Path) -> None:
    """Rollouts far ahead of the trainer with ``max_staleness=0``: what goes stale is
    restarted (sampling side) or skipped (trainer side), never trained on."""
    cfg = config(
        tiny_model,
        tmp_path / "run",
        steps=3,
        ahead=4 * GROUPS,
        max_staleness=0,
        update_mode="abort",
    )
    result = await grpo.train(cfg, registry=registry())
    assert [s.version for s in result.steps] == [0, 1, 2]
    for s in result.steps:
        assert set(s.row_versions) == {s.version}, s
    runtime_side = sum(
        r.stale_restarted + r.stale_discarded + r.groups_stale for r in result.rollouts
    )
    trainer_side = sum(s.skipped_stale for s in result.steps)
    assert runtime_side + trainer_side > 0


@pytest.mark.timeout(600)  # TRL's trainer is slow to set up on a busy CPU
def test_trl_grpo_trainer_takes_gymux_rollouts(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/trl_rollout.py: TRL's GRPOTrainer trains on gymux groups through its
    ``rollout_func``, and its weights reach the gymux policy between steps."""
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    example = load_module("trl_rollout.py", "gymux_example_trl_rollout")
    store = tmp_path / "rollouts"
    rollout = example.GymuxRollout(
        "coin", tiny_model, max_turns=2, max_new_tokens=8, registry=registry(), out=store
    )
    rewards: list[list[float]] = []

    def recorded(prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        out = rollout(prompts, trainer)
        rewards.append(out["env_reward"])
        # One completion per prompt, the env's observations masked out.
        assert len(out["completion_ids"]) == len(prompts)
        for ids, mask, lps in zip(
            out["completion_ids"], out["env_mask"], out["logprobs"], strict=True
        ):
            assert len(ids) == len(mask) == len(lps) and mask[0] == 1
        return out

    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        num_generations=GROUP,
        per_device_train_batch_size=GROUP * GROUPS,
        max_steps=2,
        learning_rate=0.05,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    try:
        trainer = GRPOTrainer(
            model=str(tiny_model),
            processing_class=AutoTokenizer.from_pretrained(str(tiny_model)),
            reward_funcs=example.env_reward,
            train_dataset=Dataset.from_dict({"prompt": ["0", "1", "2", "3"] * 4}),
            args=args,
            rollout_func=recorded,
        )
        trainer.train()
    finally:
        rollout.close()

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    # TRL scored exactly the rewards gymux's episodes got.
    for log, got in zip(logs, rewards, strict=True):
        assert log["reward"] == pytest.approx(sum(got) / len(got))
    # The second call's episodes ran under the weights TRL had after its first step.
    assert rollout.version == 1
    groups = stored_groups(store / "store")
    assert len(groups) == 2 * GROUPS
    assert all(len(members) == GROUP for members in groups.values())
    steps = sorted(m.policy_step or 0 for members in groups.values() for m in members)
    assert steps == [0] * (GROUP * GROUPS) + [1] * (GROUP * GROUPS)
