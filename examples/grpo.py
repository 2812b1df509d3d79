"""GRPO on gymux rollouts, in plain torch, on CPU.

::

    python examples/grpo.py --model smollm2 --steps 20 --out runs/grpo --plot grpo.png

The policy is gymux's in-process ``hf`` policy (:class:`gymux.policies.hf.HFPolicy`); the
trainer is a second copy of the same model, trained with torch. One step:

1. **Rollouts** run in the background through a :class:`gymux.Runtime`: groups of
   ``group_size`` episodes per task (``Workload.group_size``), written whole to the store
   (one ``GROUP`` record each), at most ``ahead`` groups ahead of the trainer (one step off
   the policy by default, as in verl's one-step-off or AReaL's bounded asynchrony).
2. **A batch** of ``groups_per_step`` groups comes from the store through
   :class:`gymux.stores.TrainingBatches`: padded token ids, the loss mask (generated tokens
   only), the generation's logprobs, and GRPO's group-normalised advantages. Groups older
   than ``max_staleness`` versions are skipped (and on the sampling side,
   ``Workload.max_staleness`` restarts episodes that finish too old).
3. **The loss** is GRPO's clipped surrogate per generated token,
   ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`` with ``ratio = exp(logp_now -
   logp_generation)``, averaged over the batch's generated tokens (no KL term). One AdamW
   step; then the batch is acknowledged (the consumer cursor moves, durably).
4. **The new weights** go to the running policy with ``Runtime.update_policy(..., mode=)``:
   episodes keep running; turns in flight are aborted and redone (``abort``), awaited
   (``wait``) or finished under the new weights (``continue``). The version goes up by one.

Each step's figures are printed as one JSON line and appended to ``<out>/steps.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import torch

from gymux import Runtime, RuntimeConfig, Workload
from gymux.env_plugins import EnvPlugin
from gymux.env_plugins.registry import Registry, default_registry
from gymux.log import configure_logging
from gymux.policies.hf import HFPolicy
from gymux.policies.hf.models import resolve_model
from gymux.runtime import RunHandle
from gymux.scheduler import RolloutStats
from gymux.stores import TrainingBatch, TrainingBatches

#: Maze training tasks (not the test split) that start one move from the goal: a small
#: model finds the goal on some tries and not others, which is what GRPO learns from.
MAZE_NEAR_GOAL = [40, 45, 46, 65, 68, 69, 72, 87]


class GRPOConfig(msgspec.Struct, kw_only=True):
    model: str = "smollm2"  # "smollm2" or a local Hugging Face model folder
    env: str = "maze"
    tasks: list[int] = msgspec.field(default_factory=lambda: list(MAZE_NEAR_GOAL))
    steps: int = 10
    group_size: int = 4
    groups_per_step: int = 2
    ahead: int | None = None  # groups the rollouts may run ahead (default: one step's)
    max_turns: int = 3
    max_new_tokens: int = 48
    temperature: float = 1.0
    lr: float = 1e-5
    clip_eps: float = 0.2
    max_grad_norm: float = 1.0
    max_staleness: int = 1
    update_mode: str = "continue"  # "abort", "wait" or "continue"
    drop_zero_variance: bool = False
    # Take the first of the env's example actions found anywhere in the output (a 135M
    # model rarely writes AgentGym's "Thought: ... Action: ..." format at first).
    lenient_actions: bool = True
    seed: int = 0
    out: str = "runs/grpo"


class StepStats(msgspec.Struct, kw_only=True):
    step: int
    version: int  # the trainer's version the batch was taken at (= the policy's)
    groups: int
    rows: int
    tokens: int  # generated tokens trained on
    reward: float  # mean reward of the batch
    loss: float
    ratio: float  # mean importance ratio
    clipped: float  # fraction of tokens whose ratio was clipped
    # Mean |logp_now - logp_generation| on rows of the current version (None: no such row).
    onpolicy_gap: float | None
    lag_max: int  # the batch's oldest sample, in versions behind the trainer
    row_versions: list[int]
    group_ids: list[str]
    skipped_stale: int
    update_inflight: int  # policy calls in flight when the new weights were pushed
    update_s: float  # pause to resume
    train_s: float


class GRPOResult(msgspec.Struct, kw_only=True):
    steps: list[StepStats]
    rollouts: list[RolloutStats]  # each rollout run's groups kept, dropped, stale, ...


def lenient(plugin: EnvPlugin) -> EnvPlugin:
    """``plugin`` with a forgiving parser: the first of its example actions that appears
    in the output (``move up`` for the maze), else the plugin's own parser."""
    actions = [a.lower() for a in plugin.spec.example_actions]
    strict = plugin.parse_action

    def parse(text: str) -> str:
        lowered = text.lower()
        found = [(lowered.find(a), a) for a in actions if a in lowered]
        return min(found)[1] if found else strict(text)

    forgiving = copy.copy(plugin)
    forgiving.parse_action = parse
    return forgiving


# -- the trainer ------------------------------------------------------------------------


class Trainer:
    """The model being trained and its optimizer; ``version`` counts optimizer steps."""

    def __init__(self, folder: Path, cfg: GRPOConfig) -> None:
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.version = 0

    def step(self, batch: TrainingBatch) -> dict[str, Any]:
        """One GRPO step on ``batch`` (blocking: run it in a worker thread)."""
        t = batch.to_torch()
        # Token i is predicted at position i - 1: shift the per-token arrays by one.
        mask = t["loss_mask"][:, 1:]
        old = t["logprobs"][:, 1:]
        total = mask.sum().clamp(min=1.0)
        sums = {"loss": 0.0, "ratio": 0.0, "clipped": 0.0, "gap": 0.0, "gap_n": 0.0}
        for i in range(batch.num_sequences):  # one row at a time: modest memory
            n = int(t["attention_mask"][i].sum())
            keep = mask[i, : n - 1].nonzero().squeeze(-1)  # predicting positions
            if keep.numel() == 0:
                continue
            ids = t["input_ids"][i : i + 1, :n]
            logits = self.model(input_ids=ids, logits_to_keep=keep).logits[0].float()
            logp = torch.log_softmax(logits, -1).gather(-1, ids[0, keep + 1, None]).squeeze(-1)
            ratio = torch.exp(logp - old[i, keep])
            adv = t["advantages"][i]
            eps = self.cfg.clip_eps
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
            loss = -surrogate.sum() / total
            loss.backward()
            with torch.no_grad():
                sums["loss"] += float(loss)
                sums["ratio"] += float(ratio.sum())
                sums["clipped"] += float(((ratio - 1).abs() > eps).sum())
                if int(t["weight_versions"][i]) == self.version:
                    sums["gap"] += float((logp - old[i, keep]).abs().sum())
                    sums["gap_n"] += keep.numel()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.version += 1
        n = float(total)
        return {
            "loss": sums["loss"],
            "ratio": sums["ratio"] / n,
            "clipped": sums["clipped"] / n,
            "gap": sums["gap"] / sums["gap_n"] if sums["gap_n"] else None,
            "tokens": n,
        }

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.model.state_dict())


# -- rollouts ahead of the trainer ------------------------------------------------------


class Rollouts:
    """Rollouts one run at a time (``groups_per_step`` groups each) and the trainer's batches.

    The next run starts while fewer than ``ahead`` written groups wait for the trainer, or
    when the trainer found too few fresh groups for a batch. ``ahead=0`` is on-policy (each
    batch is sampled by the trainer's current weights); ``ahead=groups_per_step`` (the
    default) samples the next batch while the trainer trains on this one.
    """

    def __init__(self, rt: Runtime, policy: HFPolicy, cfg: GRPOConfig, batches: TrainingBatches):
        self.rt, self.policy, self.cfg, self.batches = rt, policy, cfg, batches
        self.ahead = cfg.ahead if cfg.ahead is not None else cfg.groups_per_step
        self.rows = cfg.group_size * cfg.groups_per_step
        self.written = 0  # groups the finished runs wrote
        self.taken = 0  # groups the trainer consumed or skipped as stale
        self.short = False  # the trainer waits for another run
        self.runs: list[RolloutStats] = []
        self.handle: RunHandle | None = None
        self._cond = anyio.Condition()

    def workload(self, k: int) -> Workload:
        cfg, n, g = self.cfg, len(self.cfg.tasks), self.cfg.groups_per_step
        return Workload(
            env=cfg.env,
            tasks=[cfg.tasks[(k * g + i) % n] for i in range(g)],
            policy="hf",
            group_size=cfg.group_size,
            drop_zero_variance=cfg.drop_zero_variance,
            max_staleness=cfg.max_staleness,
            stale="restart",
            max_turns=cfg.max_turns,
            seed=cfg.seed + k,
        )

    async def produce(self) -> None:
        while True:
            async with self._cond:
                while self.written - self.taken >= self.ahead and not self.short:
                    await self._cond.wait()
            self.handle = await self.rt.submit(
                self.workload(len(self.runs)), policy=self.policy, keep_trajectories=False
            )
            result = await self.handle.wait()
            async with self._cond:
                self.runs.append(result.rollout)
                self.written += result.rollout.groups_kept
                self.short = False
                self._cond.notify_all()

    def _take(self) -> TrainingBatch | None:
        """The first full batch of what the store holds now (blocking: a worker thread)."""
        reading = iter(self.batches)  # follow=False: one pass over the durable records
        try:
            batch = next(reading, None)
        finally:
            reading.close()  # type: ignore[attr-defined]
        if batch is not None and batch.num_sequences < self.rows:
            self.batches.discard_unacked()  # partial: wait for more groups
            return None
        return batch

    async def next_batch(self, *, give_up_after: int = 20) -> TrainingBatch | None:
        """The trainer's next batch; ``None`` after ``give_up_after`` runs that did not
        complete one (e.g. every group dropped for zero variance)."""
        first = len(self.runs)
        while len(self.runs) - first <= give_up_after:
            seen = len(self.runs)
            batch = await anyio.to_thread.run_sync(self._take)
            async with self._cond:
                if batch is not None:
                    self.taken += len(batch.group_ids) + batch.skipped_stale
                    self._cond.notify_all()
                    return batch
                self.short = True
                self._cond.notify_all()
                while len(self.runs) == seen:
                    await self._cond.wait()
        return None


# -- the loop ---------------------------------------------------------------------------


async def train(
    cfg: GRPOConfig,
    *,
    registry: Registry | None = None,
    on_step: Callable[[StepStats], None] | None = None,
) -> GRPOResult:
    """Run ``cfg.steps`` GRPO steps; returns each step's figures and each run's counts."""
    if cfg.groups_per_step > len(set(cfg.tasks)):
        raise ValueError("groups_per_step must not exceed the number of distinct tasks")
    out = Path(cfg.out)
    if registry is None and cfg.lenient_actions:
        registry = Registry(entry_points_group=None)
        registry.register(lenient(default_registry().get_runnable(cfg.env)))
    folder = resolve_model(cfg.model)  # smollm2: made once from the installed package
    trainer = Trainer(folder, cfg)
    policy = HFPolicy(
        folder,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=1.0,
        seed=cfg.seed,
    )
    config = RuntimeConfig(max_concurrent_episodes=cfg.group_size * cfg.groups_per_step)
    stats: list[StepStats] = []
    async with Runtime(config, out=out, registry=registry) as rt, anyio.create_task_group() as tg:
        batches = TrainingBatches(  # the store exists once the runtime has opened its sink
            out / "store",
            "grpo",
            max_sequences=cfg.group_size * cfg.groups_per_step,
            max_staleness=cfg.max_staleness,
            current_version=lambda: trainer.version,
        )
        rollouts = Rollouts(rt, policy, cfg, batches)
        tg.start_soon(rollouts.produce)
        try:
            for step in range(cfg.steps):
                batch = await rollouts.next_batch()
                if batch is None:
                    break
                version = trainer.version
                started = time.perf_counter()
                figures = await anyio.to_thread.run_sync(trainer.step, batch)
                train_s = time.perf_counter() - started
                report = await rt.update_policy(
                    policy,
                    version=trainer.version,
                    source=trainer.weights(),
                    mode=cfg.update_mode,  # type: ignore[arg-type]
                )
                batches.ack(batch, extra={"step": trainer.version})
                row = StepStats(
                    step=step,
                    version=version,
                    groups=len(batch.group_ids),
                    rows=batch.num_sequences,
                    tokens=int(figures["tokens"]),
                    reward=float(batch.rewards.mean()),
                    loss=figures["loss"],
                    ratio=figures["ratio"],
                    clipped=figures["clipped"],
                    onpolicy_gap=figures["gap"],
                    lag_max=version - int(batch.weight_versions.min()),
                    row_versions=[int(v) for v in batch.weight_versions],
                    group_ids=list(batch.group_ids),
                    skipped_stale=batch.skipped_stale,
                    update_inflight=report.inflight,
                    update_s=report.paused_s,
                    train_s=train_s,
                )
                stats.append(row)
                with (out / "steps.jsonl").open("ab") as f:
                    f.write(msgspec.json.encode(row) + b"\n")
                if on_step is not None:
                    on_step(row)
        finally:
            if rollouts.handle is not None:
                rollouts.handle.cancel()
            tg.cancel_scope.cancel()
    return GRPOResult(steps=stats, rollouts=rollouts.runs)


# -- command line -----------------------------------------------------------------------


def plot(stats: list[StepStats], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s.step for s in stats]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    top.plot(steps, [s.reward for s in stats], marker="o")
    top.set_ylabel("mean reward of the batch")
    top.set_title(title)
    bottom.plot(steps, [s.loss for s in stats], marker="o", color="tab:red")
    bottom.set_ylabel("GRPO loss")
    bottom.set_xlabel("trainer step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    defaults = GRPOConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in GRPOConfig.__struct_fields__:
        value = getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif isinstance(value, list):
            parser.add_argument(flag, type=lambda s: [int(x) for x in s.split(",")], default=value)
        else:
            kind: Any = type(value) if value is not None else int
            parser.add_argument(flag, type=kind, default=value)
    parser.add_argument("--plot", type=Path, help="write a PNG of reward and loss per step")
    args = vars(parser.parse_args(argv))
    chart = args.pop("plot")
    cfg = GRPOConfig(**args)

    def show(row: StepStats) -> None:
        brief = {k: v for k, v in msgspec.to_builtins(row).items() if k != "group_ids"}
        sys.stdout.write(json.dumps(brief) + "\n")
        sys.stdout.flush()

    configure_logging("info")  # to stderr; the steps go to stdout
    stats = anyio.run(lambda: train(cfg, on_step=show)).steps
    if chart is not None and stats:
        plot(stats, chart, f"GRPO, {cfg.model} on {cfg.env} (groups of {cfg.group_size})")


if __name__ == "__main__":
    main()
