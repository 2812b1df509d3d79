"""Environment throughput benchmark: steps/s of every built-in env, in-process and over HTTP.

For each env, a policy plays test tasks (cycled) with a turn cap, and we count env steps
(turns) per second of wall time:

* **in-process**: ``Runtime`` with the plugin loaded directly, at 1 and at 32 concurrent
  episodes;
* **http**: the same episodes through ``gymux serve-env NAME`` (a real subprocess on
  loopback) and the ``agentgym`` client plugin, at 1 and at 32 concurrent episodes.

The baseline of each env's row is its in-process C=1 figure, measured in the same run;
the table prints the other three as ratios to it. Both sides use the plugin's own cap on
live instances (``max_instances``: e.g. 4 JVMs for sciworld). The default policy is
``random`` (the env's example actions, which cost nothing), so the figures are the env's
and the runtime's cost; ``--policy oracle`` measures an expert-data run instead, where the
oracle's planning is part of every step (babyai's bot-guided planner costs seconds).

``--soak N`` also runs N sequential oracle episodes of each env (``gymux.testing.soak``) and
prints the resource readings (RSS, open fds, processes, threads) along the way.

Usage::

    python bench/envs.py                     # every env, ~3 min on 2 cores
    python bench/envs.py --quick             # fewer episodes (< 1 min)
    python bench/envs.py --policy oracle     # expert-data throughput instead
    python bench/envs.py --envs maze,sqlgym  # a subset
    python bench/envs.py --soak 1000         # plus the 1,000-episode leak run (long)
    python bench/envs.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import anyio
import msgspec

from gymux import Runtime, RuntimeConfig, Workload
from gymux.env_plugins.agentgym.client import agentgym_plugin
from gymux.env_plugins.registry import PluginError, Registry, default_registry
from gymux.policies.registry import make_policy
from gymux.testing.soak import soak

ENVS = ["maze", "wordle", "textcraft", "babyai", "sciworld", "textworld", "sqlgym"]
#: Episodes per measurement (full run); --quick divides by 4. JVM and generator-backed
#: envs have long episodes, so fewer of them.
EPISODES = {"sciworld": 64, "textworld": 64, "babyai": 128}
#: Soak policy and turn cap per env: the oracle where it is cheap; where an oracle episode
#: costs seconds (babyai's planner, sciworld's long gold sequences) the random policy with a
#: turn cap, which still resets and steps the env every episode.
SOAK: dict[str, tuple[str, int | None]] = {"babyai": ("random", 20), "sciworld": ("random", 10)}
#: Envs whose soak cycles the test split only: each new textworld game is generated (~5 s),
#: so 1,000 distinct train games would take over an hour.
SOAK_TEST_ONLY = {"textworld"}
DEFAULT_EPISODES = 256


@dataclass
class Row:
    env: str
    mode: str
    concurrency: int
    episodes: int
    steps: int
    wall_s: float
    success: float

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else 0.0


def _tasks(registry: Registry, env: str, n: int) -> list[int]:
    ids = registry.get(env).spec.splits["test"].ids
    return [ids[i % len(ids)] for i in range(n)]


#: Turn cap of every measured episode.
TURNS = 10


async def _measure(
    registry: Registry,
    env_id: str,
    policy_env: str,
    tasks: list[int],
    concurrency: int,
    policy_name: str,
) -> tuple[int, float, float]:
    plugin = registry.get(env_id)
    policy = make_policy(policy_name, registry.get(policy_env))
    config = RuntimeConfig(max_concurrent_episodes=concurrency)
    workload = Workload(env=plugin.id, tasks=tasks, max_turns=TURNS)
    async with Runtime(config, registry=registry) as rt:
        started = time.perf_counter()
        result = await rt.run(workload, policy=policy)
        wall = time.perf_counter() - started
    steps = sum(len(t.turns) for t in result.trajectories)
    success = sum(t.success for t in result.trajectories) / max(1, len(result.trajectories))
    return steps, wall, success


class _Server:
    """``gymux serve-env NAME --port 0`` as a subprocess; reads the URL it prints."""

    def __init__(self, env: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gymux",
                "serve-env",
                env,
                "--port",
                "0",
                "--log-level",
                "error",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"listening on (http://[^\s/]+)", line)
        if not found:
            self.close()
            raise RuntimeError(f"serve-env {env} did not start: {line!r}")
        self.url = found[1]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _count(episodes: int, concurrency: int) -> int:
    """Episodes of one measurement: a quarter at C=1 (it is 32x slower per episode)."""
    return max(1, episodes // 4) if concurrency == 1 else max(episodes, concurrency)


def bench_env(registry: Registry, env: str, episodes: int, policy: str) -> list[Row]:
    rows: list[Row] = []
    # Warm-up, not timed: imports, data builds, game generation, the oracle's caches.
    anyio.run(_measure, registry, env, env, _tasks(registry, env, episodes), 32, policy)
    for concurrency in (1, 32):
        tasks = _tasks(registry, env, _count(episodes, concurrency))
        steps, wall, ok = anyio.run(_measure, registry, env, env, tasks, concurrency, policy)
        rows.append(Row(env, "in-process", concurrency, len(tasks), steps, wall, ok))
    server = _Server(env)
    try:
        plugin = registry.get(env)
        bridge = agentgym_plugin(
            env,
            server.url,
            tasks=plugin.spec.splits["test"].ids,
            max_turns=plugin.spec.max_turns,
            success_threshold=plugin.spec.success.threshold,
            max_instances=plugin.max_instances,  # the server's cap: no 503s to retry
            env_id=f"bench-http/{env}",
        )
        registry.register(bridge)
        for concurrency in (1, 32):
            tasks = _tasks(registry, env, _count(episodes, concurrency))
            steps, wall, ok = anyio.run(
                _measure, registry, bridge.id, env, tasks, concurrency, policy
            )
            rows.append(Row(env, "http", concurrency, len(tasks), steps, wall, ok))
    finally:
        server.close()
    return rows


def _table(rows: list[Row]) -> str:
    lines = [
        f"{'env':<10} {'mode':<11} {'C':>3} {'episodes':>8} {'steps':>7} {'wall s':>7} "
        f"{'steps/s':>9} {'x base':>7} {'success':>8}",
        "-" * 79,
    ]
    base: dict[str, float] = {}
    for r in rows:
        if r.mode == "in-process" and r.concurrency == 1:
            base[r.env] = r.steps_per_s
        ratio = r.steps_per_s / base[r.env] if base.get(r.env) else 0.0
        lines.append(
            f"{r.env:<10} {r.mode:<11} {r.concurrency:>3} {r.episodes:>8} {r.steps:>7} "
            f"{r.wall_s:>7.2f} {r.steps_per_s:>9.1f} {ratio:>7.2f} {r.success * 100:>7.1f}%"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes (< 1 min)")
    parser.add_argument("--envs", help="comma-separated env ids (default: all built-in)")
    parser.add_argument("--soak", type=int, metavar="N", help="also soak N episodes per env")
    parser.add_argument("--policy", default="random", choices=["random", "oracle"])
    parser.add_argument("--no-throughput", action="store_true", help="only the soak")
    parser.add_argument("--json", metavar="PATH", help="write the measurements as JSON")
    args = parser.parse_args()
    registry = default_registry()
    wanted = args.envs.split(",") if args.envs else ENVS
    rows: list[Row] = []
    soaks: dict[str, object] = {}
    for env in wanted:
        try:
            registry.get(env)
        except PluginError as exc:
            print(f"skip {env}: {exc}", file=sys.stderr)
            continue
        n = EPISODES.get(env, DEFAULT_EPISODES)
        if args.quick:
            n = max(32, n // 4)
        if not args.no_throughput:
            rows.extend(bench_env(registry, env, n, args.policy))
        if not args.no_throughput:
            print(f"done {env}", file=sys.stderr)
    if rows:
        print(f"\npolicy {args.policy}, <= {TURNS} turns per episode; x base = ratio to ")
        print(f"in-process C=1; cpus={os.cpu_count()}")
        print(_table(rows))
    if args.soak:
        print(f"\nsoak: {args.soak} sequential oracle episodes per env")
        for env in wanted:
            if rows and env not in {r.env for r in rows}:
                continue
            policy, turns = SOAK.get(env, ("oracle", None))
            ids = registry.get(env).spec.splits["test"].ids if env in SOAK_TEST_ONLY else None
            report = anyio.run(
                lambda e=env, p=policy, t=turns, i=ids: soak(
                    e, episodes=args.soak, checkpoints=5, policy=p, max_turns=t, tasks=i
                )
            )
            readings = [msgspec.to_builtins(x) for x in report.readings]
            soaks[env] = {"flat": report.flat(), "readings": readings}
            verdict = "flat" if report.flat() else "GREW"
            print(f"\n{env} ({policy}): {verdict}; finish reasons {report.finish_reasons}")
            print(report.table())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "rows": [{**asdict(r), "steps_per_s": r.steps_per_s} for r in rows],
                    "soak": soaks,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
