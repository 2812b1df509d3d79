"""Scheduler / runtime benchmark for gymux.

Measures the runtime itself, with an environment and policies that cost (almost) nothing:

* ``zero`` env: an async :class:`~gymux.env_plugins.Env` whose ``reset``/``step`` return
  precomputed ``Observation``/``StepResult`` objects at once; episodes end after ``K`` steps
  (``max_turns`` is ``K + 10``, so every episode ends ``done``).
* ``instant`` policy: returns a precomputed ``PolicyResponse``.
* ``50ms`` policy: ``await anyio.sleep(0.05)`` then the same response (a stand-in for a
  model server with 50 ms latency and unlimited capacity).

Each configuration runs in a fresh subprocess of this script, so ``ru_maxrss`` (the
process-wide peak RSS) belongs to that configuration alone. The baseline ("AgentGym way")
drives the same env and policy one episode after another with a plain loop, no runtime.

Usage::

    python bench/scheduler.py                 # full run (~1 min on 2 cores)
    python bench/scheduler.py --quick         # smoke version (< 30 s)
    python bench/scheduler.py --json out.json # also dump every measurement as JSON
    python bench/scheduler.py --ablations     # plus what-if rows (~2.5 min in all)

    # one configuration, JSON on stdout (what the parent runs):
    python bench/scheduler.py --one 1000 instant [--parser react] [--episodes N]
    python bench/scheduler.py --one seq 50ms     # the sequential baseline
    # the cost of the store sink's durability (the default, always, vs batch / os):
    python bench/scheduler.py --one 1000 instant --store always
    # profile one configuration (cProfile, pstats file + top functions on stderr):
    python bench/scheduler.py --one 1000 instant --profile /tmp/c1000.prof
    # what-if: patch the runtime in that process only (see ABLATIONS):
    python bench/scheduler.py --one 10000 50ms --ablate scopes --ablate gc

See docs/benchmarks.md for what each column means and the measured figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import anyio

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.protocol import (
    EnvPlugin,
    EnvSpec,
    Observation,
    StepResult,
    Task,
    splits_from,
)
from gymux.env_plugins.registry import Registry
from gymux.messages import Message, PolicyRequest, PolicyResponse
from gymux.policies.base import SimplePolicy
from gymux.runtime import Runtime

#: Steps per episode (the env says ``done`` after K steps).
K = 10
#: Turn budget is K + MAX_TURNS_SLACK, above K so episodes end by ``done``.
MAX_TURNS_SLACK = 10
#: Latency of the slow policy.
POLICY_LATENCY_S = 0.05
ENV_ID = "zero"

# Targets (from the issue).
HELD_TARGET = 10_000
RSS_TARGET_MB = 2048.0
OVERHEAD_TARGET_US = 100.0
THROUGHPUT_TARGET = 8_000.0

# -- the zero-cost env and the policies ------------------------------------------------------

_OBS = Observation(text="You are in a small room. There is a door to the north.")
_STEP = StepResult(observation=_OBS, reward=0.0, done=False)
_DONE = StepResult(observation=_OBS, reward=1.0, done=True)
_RESPONSE = PolicyResponse(text="Thought:\nI go north.\n\nAction: x")


class ZeroEnv:
    """Answers instantly with precomputed objects; done after K steps."""

    __slots__ = ("_turn",)

    def __init__(self) -> None:
        self._turn = 0

    async def reset(self, task: Task) -> Observation:
        self._turn = 0
        return _OBS

    async def step(self, action: str) -> StepResult:
        self._turn += 1
        return _DONE if self._turn >= K else _STEP

    async def close(self) -> None:
        return None


def _trivial_parser(text: str) -> str:
    return text


def make_plugin(episodes: int, parser: str) -> EnvPlugin:
    spec = EnvSpec(
        id=ENV_ID,
        version="1",
        instruction="Find the exit. Answer as 'Thought: ...\\nAction: <action>'.",
        action_format="Action: <action>",
        splits=splits_from({"test": range(episodes)}),
        max_turns=K + MAX_TURNS_SLACK,
    )
    return EnvPlugin(
        spec,
        ZeroEnv,
        execution="async",
        parse_action=_trivial_parser if parser == "trivial" else None,  # None: ReAct regex
        max_instances=64,
    )


class InstantPolicy(SimplePolicy):
    name = "instant"
    version = "1"

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        return _RESPONSE


class SleepPolicy(SimplePolicy):
    name = "50ms"
    version = "1"

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        await anyio.sleep(POLICY_LATENCY_S)
        return _RESPONSE


POLICIES = {"instant": InstantPolicy, "50ms": SleepPolicy}

# -- measurement helpers ---------------------------------------------------------------------


def _maxrss_mb() -> float:
    # Linux: kilobytes; macOS: bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


class _GcTimer:
    """Time spent in the cyclic garbage collector (via gc.callbacks)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.collections = 0
        self.by_generation = [0.0, 0.0, 0.0]
        self.count_by_generation = [0, 0, 0]
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            spent = time.perf_counter() - self._t
            self.total += spent
            self.collections += 1
            self.by_generation[info["generation"]] += spent
            self.count_by_generation[info["generation"]] += 1


# -- ablations (experiments: what would removing X save?) ------------------------------------
#
# Each one monkeypatches a gymux module *in this process only* to estimate the gain of an
# optimisation before anyone implements it. They reach into internals, so a library change
# can make one stale: it then says so and the run goes on without it.


class _NoScope:
    """Stands in for an ``anyio.CancelScope()``: nothing to enter, nothing to cancel."""

    __slots__ = ()
    cancelled_caught = False

    def __enter__(self) -> _NoScope:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _AnyioProxy:
    """The ``anyio`` module with a few names replaced."""

    def __init__(self, **overrides: Any) -> None:
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)


def _require(module: Any, text: str) -> None:
    import inspect

    if text not in inspect.getsource(module):
        raise RuntimeError(f"{module.__name__} no longer calls {text}...)")


def _ablate_scopes() -> None:
    import gymux.episode as episode

    _require(episode, "anyio.CancelScope(")

    def scope(*args: Any, **kwargs: Any) -> Any:
        # Shielded cleanup keeps its scope; nothing is cancelled in a benchmark run.
        return anyio.CancelScope(*args, **kwargs) if kwargs.get("shield") else _NoScope()

    episode.anyio = _AnyioProxy(CancelScope=scope)  # type: ignore[attr-defined]


def _ablate_spawn() -> None:
    import gymux.scheduler as scheduler

    _require(scheduler, "anyio.Semaphore(")
    scheduler.anyio = _AnyioProxy(  # type: ignore[attr-defined]
        Semaphore=lambda n, **k: anyio.Semaphore(n, fast_acquire=True)
    )


def _ablate_pool() -> None:
    import gymux.pool as pool

    _require(pool, "anyio.Condition(")
    pool.anyio = _AnyioProxy(  # type: ignore[attr-defined]
        Condition=lambda *a, **k: anyio.Condition(anyio.Lock(fast_acquire=True))
    )


def _ablate_gc() -> None:
    gc.set_threshold(50_000, 20, 100)


ABLATIONS = {
    # The cancel scopes left in episode.py once the watchdog enforces the time limits
    # (one per policy call, for the weight-update gate's aborts, and one per episode) ->
    # no-ops: what the last scopes cost. (The per-call ``move_on_after`` timers this
    # ablation used to remove are gone: the watchdog saved ~8 us per turn.)
    "scopes": _ablate_scopes,
    # Scheduler slot semaphore with anyio's fast_acquire=True: no event-loop round trip
    # per spawned episode when a slot is free (today: one spawn per loop iteration).
    "spawn": _ablate_spawn,
    # Pool condition with a fast_acquire lock: fewer round trips per lease/return.
    "pool": _ablate_pool,
    # Fewer cyclic-GC passes: gc.set_threshold(50_000, 20, 100).
    "gc": _ablate_gc,
}


def apply_ablations(names: list[str]) -> list[str]:
    applied = []
    for name in names:
        try:
            ABLATIONS[name]()
        except Exception as exc:  # a library change made it stale
            print(f"ablation {name!r} not applied: {exc!r}", file=sys.stderr)
            continue
        applied.append(name)
    return applied


# -- the runtime configuration ---------------------------------------------------------------


async def _run_runtime(
    concurrency: int,
    policy_kind: str,
    parser: str,
    episodes: int,
    warmup: int,
    profiler: Any,
    store: str | None = None,
) -> dict[str, Any]:
    registry = Registry(entry_points_group=None)
    registry.register(make_plugin(episodes, parser))
    config = RuntimeConfig(
        max_concurrent_episodes=concurrency,
        env_instances={ENV_ID: concurrency},
        durability=store or "always",  # type: ignore[arg-type]
    )
    policy = POLICIES[policy_kind]()
    rss_before = _maxrss_mb()
    # --store MODE: every trajectory also goes to a store in a temp dir, committed in MODE.
    tmp = tempfile.TemporaryDirectory(prefix="gymux-bench-") if store else None
    out = tmp.name if tmp is not None else None
    async with Runtime(config, registry=registry, out=out) as rt:
        # Warm-up: a short run on the same runtime (creates a few instances, warms caches).
        if warmup:
            await rt.run(Workload(env=ENV_ID, tasks="test", limit=warmup), policy=policy)
        gc_timer = _GcTimer()
        gc.callbacks.append(gc_timer)
        samples: list[tuple[float, int, int]] = []
        peak_running = 0
        if profiler is not None:
            profiler.enable()
        t0 = time.perf_counter()
        c0 = time.process_time()
        handle = await rt.submit(Workload(env=ENV_ID, tasks="test"), policy=policy)
        scheduler = rt.scheduler

        full = min(concurrency, episodes)
        ramp_s: float | None = None

        async def sampler() -> None:
            nonlocal peak_running, ramp_s
            while not handle.done:
                running = scheduler.running
                now = time.perf_counter()
                peak_running = max(peak_running, running)
                if ramp_s is None and running >= 0.99 * full:
                    ramp_s = now - t0
                samples.append((now, handle.metrics.turns, running))
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            result = await handle.wait()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if profiler is not None:
            profiler.disable()
        gc.callbacks.remove(gc_timer)
        turns = sum(len(t.turns) for t in result.trajectories)
        bad = sum(1 for t in result.trajectories if t.finish_reason.value != "done")
        n = len(result.trajectories)
        del result
    # Steady state: turns/s while at least 90% of the slots were in use.
    steady = [(t, k) for t, k, r in samples if r >= 0.9 * concurrency]
    steady_tps = None
    if len(steady) >= 3 and steady[-1][0] > steady[0][0]:
        steady_tps = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
    if tmp is not None:
        tmp.cleanup()
    return {
        "kind": "runtime",
        "store": store,
        "concurrency": concurrency,
        "policy": policy_kind,
        "parser": parser,
        "episodes": n,
        "not_done": bad,
        **_rates(turns, wall, cpu, steady_tps),
        "peak_running": peak_running,
        "ramp_s": ramp_s,
        "gc_s": gc_timer.total,
        "gc_collections": gc_timer.collections,
        "gc_s_by_generation": gc_timer.by_generation,
        "gc_collections_by_generation": gc_timer.count_by_generation,
        "turns_per_episode": K,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _maxrss_mb(),
    }


def _rates(turns: int, wall: float, cpu: float, steady_tps: float | None) -> dict[str, Any]:
    """A result row's turn count, times and per-turn rates."""
    return {
        "turns": turns,
        "wall_s": wall,
        "cpu_s": cpu,
        "turns_per_s": turns / wall,
        "steady_turns_per_s": steady_tps,
        "us_per_turn": wall / turns * 1e6,
        "cpu_us_per_turn": cpu / turns * 1e6,
    }


# -- the baseline: one episode after another, no runtime --------------------------------------


async def _sequential_episode(
    env: ZeroEnv, policy: SimplePolicy, parse: Any, spec: EnvSpec, task_id: int
) -> int:
    """AgentGym-style loop: reset, then policy.act -> parse -> env.step until done."""
    obs = await env.reset(Task(id=task_id, split="test"))
    messages = [
        Message(role="user", content=spec.instruction),
        Message(role="assistant", content="OK"),
        Message(role="user", content=obs.text),
    ]
    turns = 0
    for index in range(spec.max_turns):
        response = await policy.act(
            PolicyRequest(
                episode_id=f"seq:{task_id}",
                env_id=spec.id,
                task_id=task_id,
                turn=index,
                messages=messages,
            )
        )
        messages.append(Message(role="assistant", content=response.text))
        result = await env.step(parse(response.text))
        turns += 1
        if result.done:
            break
        messages.append(Message(role="user", content=result.observation.text))
    return turns


async def _run_sequential(
    policy_kind: str, parser: str, episodes: int, warmup: int, profiler: Any
) -> dict[str, Any]:
    plugin = make_plugin(max(episodes, 1), parser)
    spec, parse = plugin.spec, plugin.parse_action
    env = ZeroEnv()
    policy = POLICIES[policy_kind]()
    for i in range(warmup):
        await _sequential_episode(env, policy, parse, spec, i)
    if profiler is not None:
        profiler.enable()
    t0 = time.perf_counter()
    c0 = time.process_time()
    turns = 0
    for i in range(episodes):
        turns += await _sequential_episode(env, policy, parse, spec, i)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if profiler is not None:
        profiler.disable()
    return {
        "kind": "sequential",
        "concurrency": 1,
        "policy": policy_kind,
        "parser": parser,
        "episodes": episodes,
        "not_done": 0,
        **_rates(turns, wall, cpu, None),
        "peak_running": 1,
        "ramp_s": None,
        "gc_s": None,
        "gc_collections": None,
        "turns_per_episode": K,
        "rss_before_mb": None,
        "peak_rss_mb": _maxrss_mb(),
    }


def run_one(args: argparse.Namespace) -> None:
    global K
    conc_text, policy_kind = args.one
    if args.turns:
        K = args.turns
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    ablations = apply_ablations(args.ablate or [])
    if policy_kind not in POLICIES:
        raise SystemExit(f"unknown policy {policy_kind!r} (choose from {sorted(POLICIES)})")
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    if conc_text == "seq":
        episodes = args.episodes or 20
        warmup = 0 if policy_kind == "50ms" else 20
        out = anyio.run(_run_sequential, policy_kind, args.parser, episodes, warmup, profiler)
    else:
        concurrency = int(conc_text)
        episodes = args.episodes or concurrency * 3
        warmup = min(concurrency, 100)
        out = anyio.run(
            _run_runtime,
            concurrency,
            policy_kind,
            args.parser,
            episodes,
            warmup,
            profiler,
            args.store,
        )
    out["ablations"] = ablations
    if profiler is not None:
        import pstats

        profiler.dump_stats(args.profile)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
    print(json.dumps(out))


# -- the driver --------------------------------------------------------------------------------


Spec = tuple[str, str, str, int | None, tuple[str, ...]]


def _child(spec: Spec) -> dict[str, Any]:
    conc, policy_kind, parser, episodes, ablations = spec
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--one",
        conc,
        policy_kind,
        "--parser",
        parser,
    ]
    if episodes:
        cmd += ["--episodes", str(episodes)]
    for name in ablations:
        cmd += ["--ablate", name]
    label = f"C={conc} {policy_kind} {parser}" + (
        f" ablate={'+'.join(ablations)}" if ablations else ""
    )
    print(f"  running {label} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"configuration {label} failed (exit {proc.returncode})")
    sys.stderr.write(proc.stderr)
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"    {out['turns_per_s']:,.0f} turns/s, {out['us_per_turn']:.1f} us/turn "
        f"({time.perf_counter() - t:.1f} s with start-up)",
        file=sys.stderr,
        flush=True,
    )
    return out


def plan(quick: bool, ablations: bool) -> list[Spec]:
    """(concurrency or 'seq', policy, parser, episodes or None for 3*C, ablations)."""
    if quick:
        rows: list[Spec] = [
            ("seq", "instant", "trivial", 500, ()),
            ("seq", "50ms", "trivial", 1, ()),
            ("1000", "instant", "trivial", 2000, ()),
            ("1000", "instant", "react", 2000, ()),
            ("1000", "50ms", "trivial", 2000, ()),
            # 2*C episodes: with exactly C, the first ones end before the last ones start.
            ("10000", "50ms", "trivial", 20_000, ()),
        ]
    else:
        rows = [
            ("seq", "instant", "trivial", 3000, ()),
            ("seq", "instant", "react", 3000, ()),
            ("seq", "50ms", "trivial", 2, ()),
            ("100", "instant", "trivial", None, ()),
            ("1000", "instant", "trivial", None, ()),
            ("1000", "instant", "react", None, ()),
            ("10000", "instant", "trivial", None, ()),
            ("100", "50ms", "trivial", None, ()),
            ("1000", "50ms", "trivial", None, ()),
            ("1000", "50ms", "react", None, ()),
            ("10000", "50ms", "trivial", None, ()),
        ]
    if ablations:
        episodes = 2000 if quick else None
        big = 20_000 if quick else None
        rows += [
            ("1000", "instant", "trivial", episodes, ("scopes",)),
            ("1000", "instant", "trivial", episodes, ("spawn",)),
            ("1000", "instant", "trivial", episodes, ("pool",)),
            ("1000", "instant", "trivial", episodes, ("gc",)),
            ("1000", "instant", "trivial", episodes, ("scopes", "spawn", "pool", "gc")),
            ("1000", "50ms", "trivial", episodes, ("scopes", "spawn", "pool", "gc")),
            ("10000", "50ms", "trivial", big, ("scopes",)),
            ("10000", "50ms", "trivial", big, ("spawn",)),
            ("10000", "50ms", "trivial", big, ("gc",)),
            ("10000", "50ms", "trivial", big, ("scopes", "spawn", "pool", "gc")),
        ]
    return rows


def _find(
    results: list[dict[str, Any]], kind: str, conc: int, policy: str, parser: str = "trivial"
) -> dict[str, Any] | None:
    for r in results:
        if (
            r["kind"] == kind
            and r["policy"] == policy
            and r["parser"] == parser
            and not r.get("ablations")
            and (kind == "sequential" or r["concurrency"] == conc)
        ):
            return r
    return None


def report(results: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = []
    header = (
        f"{'mode':<8} {'C':>6} {'policy':<7} {'parser':<7} {'episodes':>8} "
        f"{'turns':>7} {'wall s':>6} {'turns/s':>9} {'steady/s':>9} {'us/turn':>7} "
        f"{'cpu us/t':>8} {'gc s':>5} {'peak run':>8} {'RSS MB':>6} {'x base':>8}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    plain = [r for r in results if not r.get("ablations")]
    for r in plain:
        base = _find(results, "sequential", 1, r["policy"], r["parser"]) or _find(
            results, "sequential", 1, r["policy"]
        )
        ratio = r["turns_per_s"] / base["turns_per_s"] if base else float("nan")
        mode = "baseline" if r["kind"] == "sequential" else "runtime"
        conc = "seq" if r["kind"] == "sequential" else f"{r['concurrency']:,}"
        gc_s = "-" if r["gc_s"] is None else f"{r['gc_s']:.2f}"
        steady = "-" if not r["steady_turns_per_s"] else f"{r['steady_turns_per_s']:,.0f}"
        lines.append(
            f"{mode:<8} {conc:>6} {r['policy']:<7} {r['parser']:<7} {r['episodes']:>8,} "
            f"{r['turns']:>7,} {r['wall_s']:>6.2f} {r['turns_per_s']:>9,.0f} {steady:>9} "
            f"{r['us_per_turn']:>7.1f} {r['cpu_us_per_turn']:>8.1f} {gc_s:>5} "
            f"{r['peak_running']:>8,} {r['peak_rss_mb']:>6.0f} {ratio:>7.2f}x"
        )
        if r["not_done"]:
            lines.append(f"  !! {r['not_done']} episodes did not end 'done'")

    ablated = [r for r in results if r.get("ablations")]
    if ablated:
        lines.append("")
        lines.append(
            "What-if (ablations patched into this process only; 'x plain' = turns/s vs "
            "the same row without them):"
        )
        head = (
            f"{'C':>6} {'policy':<7} {'ablations':<24} {'turns/s':>9} {'steady/s':>9} "
            f"{'us/turn':>7} {'cpu us/t':>8} {'gc s':>5} {'RSS MB':>6} {'x plain':>8}"
        )
        lines.append(head)
        lines.append("-" * len(head))
        for r in ablated:
            ref = _find(results, "runtime", r["concurrency"], r["policy"], r["parser"])
            ratio = r["turns_per_s"] / ref["turns_per_s"] if ref else float("nan")
            steady = "-" if not r["steady_turns_per_s"] else f"{r['steady_turns_per_s']:,.0f}"
            lines.append(
                f"{r['concurrency']:>6,} {r['policy']:<7} {'+'.join(r['ablations']):<24} "
                f"{r['turns_per_s']:>9,.0f} {steady:>9} {r['us_per_turn']:>7.1f} "
                f"{r['cpu_us_per_turn']:>8.1f} {r['gc_s']:>5.2f} {r['peak_rss_mb']:>6.0f} "
                f"{ratio:>7.2f}x"
            )

    targets: list[dict[str, Any]] = []
    held = _find(results, "runtime", 10_000, "50ms")
    if held:
        ok = held["peak_running"] >= 0.99 * HELD_TARGET and held["peak_rss_mb"] < RSS_TARGET_MB
        ramp = (
            f"99% of slots filled after {held['ramp_s']:.2f} s"
            if held.get("ramp_s") is not None
            else "never reached 99% of slots"
        )
        targets.append(
            {
                "target": f"{HELD_TARGET:,} concurrent episodes held, RSS < {RSS_TARGET_MB:.0f} MB",
                "measured": f"peak running {held['peak_running']:,}, peak RSS "
                f"{held['peak_rss_mb']:.0f} MB ({held['episodes']:,} episodes, "
                f"all trajectories retained); {ramp}",
                "pass": ok,
            }
        )
    for parser in ("trivial", "react"):
        over = _find(results, "runtime", 1000, "instant", parser)
        if over:
            targets.append(
                {
                    "target": f"overhead < {OVERHEAD_TARGET_US:.0f} us/turn "
                    f"(instant, C=1,000, {parser} parser)",
                    "measured": f"{over['us_per_turn']:.1f} us/turn "
                    f"(cpu {over['cpu_us_per_turn']:.1f})",
                    "pass": over["us_per_turn"] < OVERHEAD_TARGET_US,
                }
            )
    for parser in ("trivial", "react"):
        thr = _find(results, "runtime", 1000, "50ms", parser)
        if thr:
            steady = thr["steady_turns_per_s"]
            steady_text = f", steady state {steady:,.0f}" if steady else ""
            targets.append(
                {
                    "target": f">= {THROUGHPUT_TARGET:,.0f} turns/s (50 ms policy, C=1,000, "
                    f"{parser} parser; ideal 20,000)",
                    "measured": f"{thr['turns_per_s']:,.0f} turns/s{steady_text}",
                    "pass": thr["turns_per_s"] >= THROUGHPUT_TARGET,
                }
            )
    lines.append("")
    for t in targets:
        lines.append(f"[{'PASS' if t['pass'] else 'FAIL'}] {t['target']}: {t['measured']}")
    return lines, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke version (< 30 s)")
    parser.add_argument("--json", metavar="PATH", help="write all measurements to PATH")
    parser.add_argument(
        "--one",
        nargs=2,
        metavar=("C", "POLICY"),
        help="run one configuration (C: a number, or 'seq' for the baseline) and print its JSON",
    )
    parser.add_argument(
        "--parser",
        choices=("trivial", "react"),
        default="trivial",
        help="action parser for --one (default: trivial, returns the text)",
    )
    parser.add_argument("--episodes", type=int, help="episodes for --one (default 3*C)")
    parser.add_argument(
        "--store",
        choices=["os", "batch", "always"],
        help="with --one: also write every trajectory to a store (temp dir) in this durability",
    )
    parser.add_argument("--profile", metavar="PATH", help="with --one: cProfile to PATH")
    parser.add_argument(
        "--turns", type=int, help=f"with --one: turns per episode (default {K}; experiments)"
    )
    parser.add_argument(
        "--ablate",
        action="append",
        choices=sorted(ABLATIONS),
        help="with --one: patch the runtime to estimate a saving (repeatable)",
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also run the ablation rows (what-if experiments, ~1.5 min more)",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        metavar="N",
        help="with --one: gc.set_threshold(N, ...) first (experiments)",
    )
    args = parser.parse_args()
    if args.one:
        run_one(args)
        return

    started = time.perf_counter()
    print(
        f"gymux scheduler benchmark: Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}; K={K} turns/episode"
        f"{' (quick)' if args.quick else ''}",
        file=sys.stderr,
    )
    results = [_child(spec) for spec in plan(args.quick, args.ablations)]
    lines, targets = report(results)
    print()
    print(
        f"gymux scheduler benchmark -- Python {platform.python_version()} "
        f"({platform.python_implementation()}), {os.cpu_count()} CPUs, "
        f"anyio {_version('anyio')}, msgspec {_version('msgspec')}; "
        f"{K} turns/episode, 'x base' = turns/s vs the sequential loop with the same policy"
    )
    for line in lines:
        print(line)
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                    "turns_per_episode": K,
                    "quick": args.quick,
                    "ablations": args.ablations,
                    "results": results,
                    "targets": targets,
                    "total_s": total,
                },
                f,
                indent=2,
            )
            f.write("\n")


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
