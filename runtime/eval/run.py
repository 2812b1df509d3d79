"""Running a suite, resumably: ``gymux eval``'s engine.

Trajectories go to the append-only store ``OUT/store`` (the runtime's default sink).
Before running, the store is read and every ``(env, task, sample)`` already finished by an
earlier run of the same suite and policy (``OUT/eval.json``) is skipped; with
``rerun_failures`` triples whose latest episode failed are run again. Metrics always come
from the latest finished trajectory of each triple in the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict, Unpack

import anyio
import msgspec

from gymux.config import MODEL_POLICIES, RuntimeConfig, Workload
from gymux.env_plugins.registry import Registry, default_registry
from gymux.episode import EpisodeJob
from gymux.errors import ConfigError, SuiteError
from gymux.eval.metrics import (
    EvalMetrics,
    Triple,
    compute_metrics,
    latest_per_triple,
    score_ranges_for,
    success_rules_for,
)
from gymux.eval.suite import Suite
from gymux.policies.protocol import Policy
from gymux.policies.registry import make_policy
from gymux.runtime import RunHandle, Runtime
from gymux.scheduler import plan_jobs
from gymux.trajectory import FinishReason, Trajectory

__all__ = [
    "EvalOptions",
    "EvalOutcome",
    "EvalPlan",
    "EvalRun",
    "plan_eval",
    "policy_identity",
    "read_manifest",
    "read_store",
    "register_suite_bridges",
    "run_eval",
]

MANIFEST = "eval.json"
#: Finish reasons ``--rerun-failures`` treats as failures even when the episode succeeded.
ERROR_REASONS = frozenset({FinishReason.ENV_ERROR, FinishReason.POLICY_ERROR, FinishReason.TIMEOUT})
#: Finish reasons of triples that are not done: a resume runs them again (unless
#: ``keep_errors``): the model server or the env failed, the policy was not measured.
RERUN_REASONS = frozenset({FinishReason.ENV_ERROR, FinishReason.POLICY_ERROR})


class EvalOutcome(msgspec.Struct, kw_only=True):
    suite: str
    policy: str
    #: Episodes run by this invocation, and triples skipped as already done.
    ran: int
    skipped: int
    interrupted: bool
    metrics: EvalMetrics
    #: The policy identity pinned in ``OUT/eval.json`` (see :func:`policy_identity`).
    identity: dict[str, Any] = msgspec.field(default_factory=dict)


class EvalPlan(msgspec.Struct, kw_only=True):
    #: Per env: the jobs' triples still to run, in order.
    todo: dict[str, list[Triple]]
    skipped: int


def read_store(out: Path) -> list[Trajectory]:
    """Every trajectory in ``OUT/store`` (empty when there is none yet)."""
    from gymux.stores import Store

    path = out / "store"
    if not (path / "STORE").exists():
        return []
    store = Store(path, create=False)
    if "trajectories" not in store.streams():
        return []
    return list(store.trajectories())


def _workload(suite: Suite, index: int, policy: str, options: Mapping[str, Any]) -> Workload:
    env = suite.envs[index]
    return Workload(
        env=env.id,
        tasks=suite.env_split(env),
        samples=suite.env_samples(env),
        policy=policy,
        max_turns=env.max_turns,
        limit=suite.env_tasks(env),
        seed=suite.seed,
        policy_options=dict(options) if policy in MODEL_POLICIES else {},
    )


def suite_triples(suite: Suite, registry: Registry) -> dict[str, list[Triple]]:
    """Every ``(env, task, sample)`` the suite covers, per env, in run order."""
    result: dict[str, list[Triple]] = {}
    for i, env in enumerate(suite.envs):
        jobs = plan_jobs("plan", _workload(suite, i, "oracle", {}), registry.get(env.id))
        result[env.id] = [(j.env_id, j.task_id, j.sample) for j in jobs]
    return result


def _keep_in(keys: set[Triple]) -> Callable[[EpisodeJob], bool]:
    def keep(job: EpisodeJob) -> bool:
        return (job.env_id, job.task_id, job.sample) in keys

    return keep


def _needs_run(t: Trajectory | None, rerun_failures: bool, keep_errors: bool) -> bool:
    if t is None:
        return True
    if not keep_errors and t.finish_reason in RERUN_REASONS:
        return True
    return rerun_failures and (not t.success or t.finish_reason in ERROR_REASONS)


def plan_eval(
    suite: Suite,
    registry: Registry,
    existing: list[Trajectory],
    *,
    rerun_failures: bool = False,
    keep_errors: bool = False,
) -> EvalPlan:
    """What is left to run. Triples whose latest episode ended ``policy_error`` or
    ``env_error`` are not done (the model server or env failed, not the policy) unless
    ``keep_errors``; with ``rerun_failures`` every failed triple runs again."""
    latest = latest_per_triple(existing)
    todo: dict[str, list[Triple]] = {}
    skipped = 0
    for env, triples in suite_triples(suite, registry).items():
        todo[env] = [k for k in triples if _needs_run(latest.get(k), rerun_failures, keep_errors)]
        skipped += len(triples) - len(todo[env])
    return EvalPlan(todo=todo, skipped=skipped)


#: Model-policy options that change what the model answers: the eval's identity (URLs,
#: limits, timeouts and retries do not).
IDENTITY_OPTIONS = (
    "model",
    "tokenizer_path",
    "tokenizer",
    "prompt_format",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_new_tokens",
    "stop",
    "context_length",
    "extra_body",
)


def policy_identity(
    policy: str, options: Mapping[str, Any], reported: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """What makes one eval's numbers another's: the policy, its model and sampling options
    (prompt format ``react`` unless set), and what the model server reports
    (``model_path``, ``weight_version``) where known."""
    identity: dict[str, Any] = {"policy": policy}
    if policy in MODEL_POLICIES or options:
        identity.update({k: options[k] for k in IDENTITY_OPTIONS if options.get(k) is not None})
        identity.setdefault("prompt_format", "react")
    identity.update({f"server_{k}": v for k, v in (reported or {}).items()})
    return msgspec.to_builtins(identity)  # type: ignore[no-any-return]


def _changes(theirs: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """What differs between two identities, as ``key: old -> new``."""
    out = []
    for key in sorted(set(theirs) | set(mine)):
        if key.startswith("server_") and (key not in theirs or key not in mine):
            continue  # a server that reports nothing now (or did not before) changes nothing
        if theirs.get(key) != mine.get(key):
            out.append(f"{key}: {theirs.get(key, 'unset')!r} -> {mine.get(key, 'unset')!r}")
    return out


def read_manifest(out: Path) -> dict[str, Any] | None:
    """``OUT/eval.json``, or ``None`` when there is none."""
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} is unreadable: not a JSON object")
    return doc


def _manifest(suite: Suite, policy: str, identity: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "suite": suite.name,
        "policy": policy,
        "identity": dict(identity),
        "suite_spec": msgspec.to_builtins(suite),
    }


def _check_manifest(out: Path, suite: Suite, policy: str, identity: Mapping[str, Any]) -> None:
    """Refuse an ``out`` that holds another eval, another policy identity, or results that
    are not an eval's (a ``gymux run`` store). Writes nothing."""
    theirs = read_manifest(out)
    if theirs is None:
        if (out / "store" / "STORE").exists() or (out / "summary.json").exists():
            raise ConfigError(
                f"{out} holds results that are not a gymux eval (no {MANIFEST}; a gymux run "
                "store?); use another --out"
            )
        return
    if theirs.get("suite") != suite.name or theirs.get("policy") != policy:
        raise ConfigError(
            f"{out} holds an eval of suite {theirs.get('suite')!r} with policy "
            f"{theirs.get('policy')!r}; use another --out for suite {suite.name!r} "
            f"with policy {policy!r}"
        )
    if theirs.get("suite_spec") != msgspec.to_builtins(suite):
        raise ConfigError(f"{out}: suite {suite.name!r} changed since the earlier run")
    old = theirs.get("identity")
    if isinstance(old, dict):
        changed = _changes(old, identity)
        if changed:
            raise ConfigError(
                f"{out} holds an eval of another policy setup ({'; '.join(changed)}); "
                "use another --out"
            )


def _write_manifest(out: Path, suite: Suite, policy: str, identity: Mapping[str, Any]) -> None:
    path = out / MANIFEST
    doc = _manifest(suite, policy, identity)
    old = read_manifest(out)
    if old is not None and isinstance(old.get("identity"), dict):
        # Keep what a server reported earlier when it reports nothing now.
        doc["identity"] = {**old["identity"], **doc["identity"]}
    if old == doc:
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


class EvalOptions(TypedDict, total=False):
    """The keyword options of :class:`EvalRun` and :func:`run_eval` (see EvalRun)."""

    rerun_failures: bool
    registry: Registry | None
    config: RuntimeConfig | None
    options: Mapping[str, Any] | None
    keep_errors: bool
    reported: Mapping[str, str] | None
    #: An executor for ``Runtime(config, executor=...)``, e.g. ``gymux.scale.RayExecutor``.
    executor: object | None


#: Model-policy options that name a file or folder: sent to Ray workers as absolute paths
#: (a worker's working directory is not the driver's).
PATH_OPTIONS = ("model", "tokenizer_path", "tokenizer")


def _ray_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as Ray workers get them: a relative path that exists here made absolute
    (workers on this machine or a shared filesystem then find it)."""
    result = dict(options)
    for key in PATH_OPTIONS:
        value = result.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            path = Path(value)
            result[key] = str(path.resolve()) if path.exists() else value
    return result


def _check_ray_suite(suite: Suite, policy: object) -> None:
    """Refuse what a Ray eval cannot run (one line each, as ``gymux run --ray``): a policy
    given as an object (workers build theirs from its name and options) and AgentGym
    bridges (workers find envs through the installed entry points, not this process's
    registry)."""
    if not isinstance(policy, str):
        name = getattr(policy, "name", type(policy).__name__)
        raise ConfigError(
            f"--ray cannot run a policy given as an object ({name!r}): Ray workers build "
            "their policy from its name and options"
        )
    for env in suite.envs:
        if env.url is not None or env.id.startswith("agentgym/"):
            raise ConfigError(f"--ray cannot run env {env.id}: AgentGym bridges run embedded")


class EvalRun:
    """What is left of ``suite`` for ``policy`` in the folder ``out``, ready to run.

    Building one checks everything that can be checked before anything starts (every env is
    installed, ``out`` holds no eval of another suite, policy or policy identity, and no
    results that are not an eval's) and plans the triples still to run; it writes nothing.
    :meth:`run` writes ``OUT/eval.json`` (the suite and the policy identity: model, sampling
    options, what the server reports) once the run can start, then runs them; cancelling it
    (the CLI does so on SIGINT/SIGTERM) keeps every finished episode, and a later
    ``EvalRun`` resumes from there. :meth:`outcome` reads the metrics back from the store.
    No signal handlers are installed here: that is the caller's business (``gymux eval``
    uses :func:`gymux.cli.common.cancel_on_signals`).

    ``options``: model-policy options (the suite's ``[sampling]`` table is merged under them).
    ``keep_errors``: count ``policy_error``/``env_error`` episodes as done on resume.
    ``reported``: what the model server says about its model (``model_path``,
    ``weight_version``; see :func:`policy_identity`).
    ``executor``: run the episodes on a Ray cluster (:class:`gymux.scale.RayExecutor`):
    each worker builds the policy from its name and options (an ``hf`` model: one copy per
    worker); the store, the manifest and the plan stay in this process.
    """

    def __init__(
        self, suite: Suite, policy: str, out: str | Path, **opts: Unpack[EvalOptions]
    ) -> None:
        self.suite = suite
        self.policy = policy
        self.out = Path(out)
        self.registry = opts.get("registry") or default_registry()
        self.config = opts.get("config") or RuntimeConfig()
        self.executor = opts.get("executor")
        if self.executor is not None:
            _check_ray_suite(suite, policy)
        register_suite_bridges(suite, self.registry)
        for env in suite.envs:  # unknown, not installed, no such split: fail before anything
            spec = self.registry.get_runnable(env.id).spec
            split = suite.env_split(env)
            if split not in spec.splits:
                known = ", ".join(sorted(spec.splits)) or "none"
                raise SuiteError(
                    f"suite {suite.name!r}: env {env.id!r} has no split {split!r} (known: {known})"
                )
        self.options: dict[str, Any] = {**suite.sampling, **(opts.get("options") or {})}
        self.identity = policy_identity(
            policy, self.options if policy in MODEL_POLICIES else {}, opts.get("reported")
        )
        _check_manifest(self.out, suite, policy, self.identity)
        self.plan = plan_eval(
            suite,
            self.registry,
            read_store(self.out),
            rerun_failures=opts.get("rerun_failures", False),
            keep_errors=opts.get("keep_errors", False),
        )
        self._handles: list[RunHandle] = []
        # Built now, so bad options are one clean error before anything else happens.
        self._shared = self._shared_policy()

    def pin_server_identity(self, reported: Mapping[str, str]) -> None:
        """Add what the model server reports about its model (``model_path``,
        ``weight_version``) to the identity, and check it against the folder's."""
        self.identity = policy_identity(
            self.policy, self.options if self.policy in MODEL_POLICIES else {}, reported
        )
        _check_manifest(self.out, self.suite, self.policy, self.identity)

    @property
    def pending(self) -> bool:
        """Whether any triple is left to run."""
        return any(self.plan.todo.values())

    @property
    def ran(self) -> int:
        """Episodes finished by :meth:`run` so far (read it after :meth:`run` returns or is
        cancelled)."""
        return sum(len(h.result().trajectories) for h in self._handles)

    def _shared_policy(self) -> Policy | None:
        """The one model-policy object that serves every env (``None`` for the others)."""
        if self.policy not in MODEL_POLICIES or not self.pending:
            return None
        first = next(env.id for env in self.suite.envs if self.plan.todo.get(env.id))
        return make_policy(
            self.policy, self.registry.get(first), seed=self.suite.seed, options=self.options
        )

    async def run(self, max_episodes: int | None = None) -> None:
        """Run what is left; ``max_episodes``: at most that many (a test hook that stands in
        for an interruption)."""
        suite, registry = self.suite, self.registry
        budget = max_episodes
        shared = self._shared
        # Everything that can fail before the first episode has been checked: only now
        # does the folder become this eval's.
        _write_manifest(self.out, suite, self.policy, self.identity)
        # On an executor (Ray) the workers build the policy from the workload (name and
        # options); here, one object serves every env (model policies) or one per env.
        on_ray = self.executor is not None
        options = self.options
        if on_ray and self.policy in MODEL_POLICIES:
            options = _ray_options(options)
        elif on_ray:
            options = {}
        async with Runtime(
            self.config, executor=self.executor, registry=registry, out=self.out
        ) as rt:
            for i, env in enumerate(suite.envs):
                wanted = self.plan.todo.get(env.id, [])
                if budget is not None:
                    wanted, budget = wanted[:budget], budget - len(wanted[:budget])
                if not wanted:
                    continue
                workload = _workload(suite, i, self.policy, options)
                env_policy = None
                if not on_ray:
                    env_policy = (
                        shared
                        if shared is not None
                        else make_policy(self.policy, registry.get(env.id), seed=suite.seed)
                    )
                self._handles.append(
                    await rt.submit(workload, policy=env_policy, only=_keep_in(set(wanted)))
                )
            for handle in self._handles:
                await handle.wait()

    def outcome(self, *, interrupted: bool = False) -> EvalOutcome:
        """This invocation's counts and the metrics over everything in the store."""
        return EvalOutcome(
            suite=self.suite.name,
            policy=self.policy,
            ran=self.ran,
            skipped=self.plan.skipped,
            interrupted=interrupted,
            identity=self.identity,
            metrics=metrics_for(self.suite, self.registry, read_store(self.out)),
        )


def run_eval(
    suite: Suite,
    policy: str,
    out: str | Path,
    *,
    max_episodes: int | None = None,
    **opts: Unpack[EvalOptions],
) -> EvalOutcome:
    """Run what is left of ``suite`` with ``policy`` into ``out`` and compute the metrics
    (an :class:`EvalRun`, run to the end).

    ``options``: model-policy options (the suite's ``[sampling]`` table is merged under
    them). ``max_episodes``: run at most that many episodes (a test hook that stands in
    for an interruption). Library code installs no signal handlers (``gymux eval``
    does, in :mod:`gymux.cli.eval`).
    """
    ev = EvalRun(suite, policy, out, **opts)
    if ev.pending and max_episodes != 0:
        anyio.run(ev.run, max_episodes)
    return ev.outcome()


def register_suite_bridges(suite: Suite, registry: Registry) -> None:
    """Register an ``agentgym/<env>`` plugin for each suite env that names a server ``url``."""
    from gymux.env_plugins.agentgym.client import agentgym_plugin, bridge_name

    for env in suite.envs:
        name = bridge_name(env.id)
        if env.url is None or name is None:
            continue
        count = suite.env_tasks(env) or 0
        plugin = agentgym_plugin(
            name,
            env.url,
            tasks=range(env.first_task, env.first_task + count),
            dialect=env.dialect,
            split=suite.env_split(env),
            max_turns=env.max_turns,
        )
        registry.register(plugin, replace=True)


def metrics_for(suite: Suite, registry: Registry, trajectories: list[Trajectory]) -> EvalMetrics:
    """Metrics over the suite's triples only (latest finished trajectory of each)."""
    covered = {k for triples in suite_triples(suite, registry).values() for k in triples}
    mine = [t for t in trajectories if (t.env_id, t.task_id, t.sample) in covered]
    envs = [env.id for env in suite.envs]
    ranges = score_ranges_for(envs, registry)
    rules = success_rules_for(envs, registry)
    return compute_metrics(
        mine, envs=envs, seed=suite.seed, score_ranges=ranges, success_rules=rules
    )
