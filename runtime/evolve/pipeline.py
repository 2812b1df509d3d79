"""``gymux evolve``'s engine: behavioural cloning, then AgentEvol iterations, resumably.

Stages, in order (``OUT`` is the run's folder):

1. ``expert``: the envs' oracles play the expert split (``OUT/expert``, an eval folder).
2. ``learn-bc``: fine-tune the base model on the expert episodes that pass the filter
   (``OUT/checkpoints/bc``).
3. ``eval-base`` (with ``eval_base = true``) and ``eval-bc``: the eval split with the base
   model and with the BC checkpoint (``OUT/eval/<name>``).
4. For each iteration ``i``: ``explore-i`` (the previous checkpoint plays the explore split:
   ``OUT/explore/iter-i``), ``filter-i`` (AgentGym's reward thresholds: the kept episode ids
   go to ``OUT/kept/iter-i.json``), ``learn-i`` (from the **base** model, on the expert set
   plus every episode kept so far: ``OUT/checkpoints/iter-i``), ``eval-i``.

``OUT/evolve.json`` (the journal) records each finished stage with what it measured; it is
replaced atomically after each stage. A re-run of the same config skips finished stages;
a stage killed midway starts again, and the episode stages (expert, explore, eval) resume
from their store (:class:`~gymux.eval.run.EvalRun`): finished episodes are not re-run. A
killed learn stage leaves no checkpoint (it is written under a temporary name and renamed).

With an ``executor`` (``gymux evolve --ray``) the episode stages run on a Ray cluster
(each worker builds the policy from the stage's options: an ``hf`` checkpoint folder must
be readable by every worker, on this machine or a shared filesystem); the learn stages
and the filter run in this process, and sglang / vllm servers get each checkpoint from
here as without Ray.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from gymux.config import RuntimeConfig
from gymux.env_plugins.registry import Registry, default_registry
from gymux.errors import ConfigError
from gymux.eval.metrics import score_ranges_for
from gymux.eval.run import EvalRun, read_store
from gymux.eval.suite import Suite, SuiteEnv
from gymux.evolve.config import EvolveConfig, SplitSettings, config_digest
from gymux.evolve.data import examples_from, kept_trajectories
from gymux.evolve.learn import LearnResult, finetune
from gymux.stores.format import fsync_dir, write_file_durable
from gymux.trajectory import Trajectory

if TYPE_CHECKING:
    from gymux.scale import RayExecutor

__all__ = ["JOURNAL", "Evolve", "Journal", "StageRecord"]

JOURNAL = "evolve.json"
_JOURNAL_VERSION = 1


class StageRecord(msgspec.Struct, kw_only=True):
    """One finished stage: its name, wall time and what it measured."""

    name: str
    wall_s: float
    finished_at: float
    info: dict[str, Any] = msgspec.field(default_factory=dict)


class Journal(msgspec.Struct, kw_only=True):
    version: int = _JOURNAL_VERSION
    config_digest: str
    base_model: str = ""
    stages: list[StageRecord] = msgspec.field(default_factory=list)

    def done(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.name == name), None)


def _write_atomic(path: Path, data: bytes) -> None:
    write_file_durable(path, data)
    fsync_dir(path.parent)


class Evolve:
    """An evolve run in ``out`` for ``config``: :meth:`run` runs what is left.

    The base model folder is ``config.base_model`` (``smollm2`` materialised into the gymux
    cache on first use). ``executor``: run the episode stages (expert, explore, eval) on a
    Ray cluster; learning stays in this process.
    """

    def __init__(
        self,
        config: EvolveConfig,
        out: str | os.PathLike[str],
        *,
        registry: Registry | None = None,
        on_event: Callable[[str], None] | None = None,
        executor: RayExecutor | None = None,
    ) -> None:
        self.config = config
        self.executor = executor
        self.out = Path(out)
        self.registry = registry or default_registry()
        self.on_event = on_event or (lambda _line: None)
        self.journal = self._load_journal()
        self.score_ranges = score_ranges_for((e.id for e in config.envs), self.registry)
        self._stop = threading.Event()

    # -- planning ------------------------------------------------------------------------

    def stage_names(self) -> list[str]:
        names = ["expert", "learn-bc"]
        if self.config.eval_base:
            names.append("eval-base")
        names.append("eval-bc")
        for i in range(1, self.config.iterations + 1):
            names += [f"explore-{i}", f"filter-{i}", f"learn-{i}", f"eval-{i}"]
        return names

    def pending(self) -> list[str]:
        return [n for n in self.stage_names() if self.journal.done(n) is None]

    def _load_journal(self) -> Journal:
        digest = config_digest(self.config)
        path = self.out / JOURNAL
        if not path.exists():
            if self.out.exists() and any(self.out.iterdir()):
                raise ConfigError(f"{self.out} is not empty and holds no evolve run ({JOURNAL})")
            return Journal(config_digest=digest)
        try:
            journal = msgspec.json.decode(path.read_bytes(), type=Journal)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ConfigError(f"{path}: not an evolve journal: {exc}") from None
        if journal.config_digest != digest:
            raise ConfigError(
                f"{self.out} holds an evolve run of another config; use a new --out, or the "
                "config it was started with"
            )
        return journal

    def _record(self, name: str, started: float, info: dict[str, Any]) -> None:
        self.journal.stages.append(
            StageRecord(
                name=name,
                wall_s=time.perf_counter() - started,
                finished_at=time.time(),
                info=info,
            )
        )
        _write_atomic(self.out / JOURNAL, msgspec.json.encode(self.journal))

    # -- running -------------------------------------------------------------------------

    def base_folder(self) -> Path:
        from gymux.policies.hf.models import resolve_model

        return resolve_model(self.config.base_model)

    def checkpoint(self, stage: str) -> Path:
        """The model folder after learn stage ``stage`` (``bc`` or ``iter-i``)."""
        return self.out / "checkpoints" / stage

    def _model_for(self, iteration: int) -> Path:
        """The agent that explores in iteration ``iteration`` (the previous learn's)."""
        return self.checkpoint("bc" if iteration <= 1 else f"iter-{iteration - 1}")

    async def run(self) -> Journal:
        """Run every pending stage in order; cancellation (SIGINT in the CLI) stops the
        current stage (finished episodes and stages are kept)."""
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / JOURNAL).exists():
            self.journal.base_model = self.config.base_model
            _write_atomic(self.out / JOURNAL, msgspec.json.encode(self.journal))
        for name in self.pending():
            self.on_event(f"stage {name}: started")
            started = time.perf_counter()
            info = await self._stage(name)
            self._record(name, started, info)
            self.on_event(f"stage {name}: done in {time.perf_counter() - started:.1f} s")
        return self.journal

    async def _stage(self, name: str) -> dict[str, Any]:
        kind, _, suffix = name.partition("-")
        if name == "expert":
            return await self._episodes(
                "expert", self.config.expert, "oracle", None, self.out / "expert"
            )
        if kind == "learn":
            return await self._learn(suffix)
        if kind == "eval":
            model = (
                self.base_folder()
                if suffix == "base"
                else self.checkpoint("bc" if suffix == "bc" else f"iter-{suffix}")
            )
            return await self._episodes(
                f"eval-{suffix}", self.config.eval, "hf", model, self.out / "eval" / suffix
            )
        iteration = int(suffix)
        if kind == "explore":
            settings = self.config.explore
            return await self._episodes(
                f"explore-{iteration}",
                settings,
                "hf",
                self._model_for(iteration),
                self.out / "explore" / f"iter-{iteration}",
                seed=self.config.seed + iteration,
            )
        return self._filter(iteration)

    def _suite(self, name: str, settings: SplitSettings, seed: int) -> Suite:
        return Suite(
            name=f"evolve-{name}",
            split=settings.split,
            tasks=settings.tasks,
            samples=settings.samples,
            seed=seed,
            envs=[SuiteEnv(id=e.id, max_turns=e.max_turns) for e in self.config.envs],
        )

    async def _episodes(
        self,
        name: str,
        settings: SplitSettings,
        policy: str,
        model: Path | None,
        out: Path,
        *,
        seed: int | None = None,
    ) -> dict[str, Any]:
        # One suite per kind of stage: every eval stage runs the same suite, so that
        # `gymux report` compares them as equals.
        kind = name.split("-", 1)[0]
        suite = self._suite(kind, settings, self.config.seed if seed is None else seed)
        options = None if model is None else self.config.policy.options(str(model))
        if model is not None and self.config.policy.kind != "hf":
            policy = self.config.policy.kind
            await self._load_into_servers(model, version=self._version_of(model))
        ev = EvalRun(
            suite,
            policy,
            out,
            registry=self.registry,
            config=RuntimeConfig(max_concurrent_episodes=self.config.concurrency),
            options=options,
            executor=self.executor,
        )
        if ev.pending:
            await ev.run()
        metrics = ev.outcome().metrics
        return {
            "dir": str(out.relative_to(self.out)),
            "episodes": metrics.overall.episodes,
            "envs": {
                m.env: {
                    "episodes": m.episodes,
                    "success_rate": m.success_rate,
                    "mean_score": m.mean_score,
                    "mean_turns": m.mean_turns,
                }
                for m in metrics.envs
            },
        }

    def _version_of(self, model: Path) -> str:
        """The weight version a model folder is served as: ``base``, ``bc``, ``iter-i``."""
        return "base" if model.parent != self.out / "checkpoints" else model.name

    async def _load_into_servers(self, model: Path, *, version: str) -> None:
        """Load ``model`` into the running sglang / vllm servers (no restart): pause (what
        is in flight finishes), load from disk, resume."""
        from gymux.policies.weights import SGLangWeights, VLLMWeights

        settings = self.config.policy
        urls = settings.control_urls or settings.servers
        loader: SGLangWeights | VLLMWeights
        if settings.kind == "sglang":
            loader = SGLangWeights(urls, worker_urls=settings.worker_urls)
        else:
            loader = VLLMWeights(urls)
        await loader.pause("wait")
        try:
            await loader.load(str(model), version=version)
        finally:
            await loader.resume()
        self.on_event(f"loaded {model} into {', '.join(urls)} as weight version {version}")

    def _filter(self, iteration: int) -> dict[str, Any]:
        explored = read_store(self.out / "explore" / f"iter-{iteration}")
        kept = kept_trajectories(explored, self.config.envs, self.score_ranges)
        per_env: dict[str, int] = {}
        for t in kept:
            per_env[t.env_id] = per_env.get(t.env_id, 0) + 1
        path = self.out / "kept" / f"iter-{iteration}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, msgspec.json.encode(sorted(t.episode_id for t in kept)))
        return {"explored": len(explored), "kept": len(kept), "kept_per_env": per_env}

    def _training_set(self, upto: int) -> list[Trajectory]:
        """The expert episodes that pass the filter, plus every episode kept by iterations
        ``1..upto``."""
        chosen = kept_trajectories(
            read_store(self.out / "expert"), self.config.envs, self.score_ranges
        )
        for i in range(1, upto + 1):
            ids = set(msgspec.json.decode((self.out / "kept" / f"iter-{i}.json").read_bytes()))
            explored = read_store(self.out / "explore" / f"iter-{i}")
            chosen.extend(t for t in explored if t.episode_id in ids)
        return chosen

    async def _learn(self, suffix: str) -> dict[str, Any]:
        from gymux.policies.tokens import ChatTokenizer

        upto = 0 if suffix == "bc" else int(suffix)
        base = self.base_folder()
        trajectories = self._training_set(upto)
        tokenizer = ChatTokenizer.from_dir(base)
        examples = examples_from(trajectories, tokenizer, max_length=self.config.train.max_length)
        if not examples:
            raise ConfigError(
                f"learn-{suffix}: no training data (no expert or kept episode passed the "
                "filter); check the envs, the expert split and the thresholds"
            )
        target = self.checkpoint("bc" if suffix == "bc" else f"iter-{suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)

        def on_step(step: int, loss: float) -> None:
            self.on_event(f"learn-{suffix}: step {step} loss {loss:.4f}")

        def train() -> LearnResult:
            run = finetune
            if self.config.train.trainer == "trl":
                from gymux.evolve.learn_trl import finetune_trl as run
            return run(base, examples, target, self.config.train, on_step=on_step, stop=self._stop)

        try:
            # Cancelled (SIGINT): the thread is told to stop at its next step and left to
            # end on its own; no checkpoint is written.
            result = await anyio.to_thread.run_sync(train, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            self._stop.set()
            raise
        return {
            "checkpoint": str(target.relative_to(self.out)),
            "trajectories": len(trajectories),
            **msgspec.to_builtins(result),
        }
