"""Scale-out benchmark: CPU-bound envs at 1 core vs 2 cores through Ray, beside the
embedded runtime, and Ray's overhead per episode and per turn.

For each env (textcraft with the oracle, babyai with the random policy) the same workload
runs three ways, each in a fresh subprocess pinned to its cores (``sched_setaffinity``,
inherited by Ray's processes and the envs' worker processes):

* ``embedded``: the embedded runtime (one process, one event loop) on 1 core;
* ``ray x1``: a local Ray cluster on 1 core, one worker (one embedded runtime);
* ``ray x2``: a local Ray cluster on 2 cores, two workers.

``scaling`` is ray x2 / ray x1 episodes/s (the issue's target: >= 1.7x on 2 free cores);
``overhead/episode`` and ``overhead/turn`` are (ray x1 wall - embedded wall) divided by
the episodes and turns (worker start-up excluded: it is timed apart as ``start_s``).

Ray binds what its nodes advertise; run on a shared machine, the benchmark re-runs itself
inside a network namespace with only ``lo`` up (``unshare``, as root) unless
``--no-isolate``.

Usage::

    python bench/scale.py                  # textcraft + babyai (~2 min on 2 cores)
    python bench/scale.py --quick          # smaller workloads
    python bench/scale.py --json out.json  # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import anyio

from gymux.config import RuntimeConfig, Workload
from gymux.runtime import Runtime

CASES = {
    "textcraft": dict(env="textcraft", tasks="train", policy="oracle", samples=4),
    "babyai": dict(env="babyai", tasks="train", policy="random", samples=1, max_turns=20),
}


#: Env instances per runtime (per core): babyai runs one worker process per instance, and
#: starting one (importing minigrid) costs about a second of CPU; 2 keep a core busy.
INSTANCES = {"babyai": 2}


def _config(cap: int) -> RuntimeConfig:
    return RuntimeConfig(max_concurrent_episodes=cap, env_instances=INSTANCES)


async def _embedded(workload: Workload, cap: int) -> dict[str, Any]:
    async with Runtime(_config(cap)) as rt:
        rt.registry.get_runnable(workload.env)  # loaded before timing, as Ray workers do
        started = time.perf_counter()
        result = await rt.run(workload)
        wall = time.perf_counter() - started
    return _figures(wall, result.summary.episodes, result.summary.turns, 0.0)


async def _ray(workload: Workload, cap: int, workers: int) -> dict[str, Any]:
    from gymux.scale import RayExecutor, RayRuntime

    executor = RayExecutor(workers=workers)
    config = _config(cap)
    async with RayRuntime(config, executor=executor) as rt:
        started = time.perf_counter()
        cpu = time.process_time()
        handle = await rt.submit(workload)
        result = await handle.wait()
        wall = time.perf_counter() - started
        driver_cpu = time.process_time() - cpu
        stats = rt.stats(handle)
    # The run's wall from its first chunk: worker start-up timed apart.
    figures = _figures(
        wall - stats.start_s, result.summary.episodes, result.summary.turns, stats.start_s
    )
    # The driver's own CPU time (decoding chunks, events, sinks): near wall_s means the
    # driver, not the workers, sets the pace.
    figures["driver_cpu_s"] = round(driver_cpu, 3)
    return figures


def _figures(wall: float, episodes: int, turns: int, start_s: float) -> dict[str, Any]:
    return {
        "wall_s": round(wall, 3),
        "episodes": episodes,
        "turns": turns,
        "episodes_per_s": round(episodes / wall, 2) if wall else 0.0,
        "turns_per_s": round(turns / wall, 1) if wall else 0.0,
        "start_s": round(start_s, 3),
    }


def _init_ray(cpus: int) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # On a machine shared with other jobs, Ray's memory monitor kills workers for memory
    # that others use; the workloads here are small.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        namespace="gymux",
        object_store_memory=100 << 20,
        _node_ip_address="127.0.0.1",
    )


CAP = 64
MODES = {"embedded": 1, "ray_x1": 1, "ray_x2": 2}


def one(name: str, mode: str, quick: bool) -> dict[str, Any]:
    """One configuration, in this process, pinned to its cores."""
    cores = MODES[mode]
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < cores:
        raise SystemExit(f"{mode} needs {cores} cores, this process may use {len(usable)}")
    os.sched_setaffinity(0, set(usable[:cores]))
    limits = {"textcraft": 150 if quick else 444, "babyai": 60 if quick else 1200}
    workload = Workload(**CASES[name], limit=limits[name])  # type: ignore[arg-type]
    if mode == "embedded":
        return anyio.run(_embedded, workload, CAP)
    _init_ray(cores)
    try:
        return anyio.run(_ray, workload, CAP, cores)
    finally:
        import ray

        ray.shutdown()


def measure(quick: bool) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name in CASES:
        row: dict[str, Any] = {}
        for mode in MODES:
            cmd = [sys.executable, __file__, "--no-isolate", "--one", name, mode]
            cmd += ["--quick"] if quick else []
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{name} {mode} failed:\n{proc.stderr[-3000:]}")
            row[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        one, two, emb = row["ray_x1"], row["ray_x2"], row["embedded"]
        row["scaling"] = round(two["episodes_per_s"] / one["episodes_per_s"], 2)
        extra = one["wall_s"] - emb["wall_s"]
        row["overhead_per_episode_ms"] = round(1000 * extra / max(1, one["episodes"]), 3)
        row["overhead_per_turn_ms"] = round(1000 * extra / max(1, one["turns"]), 3)
        rows[name] = row
    return rows


def report(rows: dict[str, Any]) -> None:
    print(
        f"{'env':<10} {'mode':<9} {'episodes':>8} {'turns':>7} {'wall s':>8} "
        f"{'ep/s':>8} {'turns/s':>8} {'start s':>8} {'driver cpu s':>12}"
    )
    for name, row in rows.items():
        for mode in ("embedded", "ray_x1", "ray_x2"):
            f = row[mode]
            print(
                f"{name:<10} {mode:<9} {f['episodes']:>8} {f['turns']:>7} {f['wall_s']:>8.2f} "
                f"{f['episodes_per_s']:>8.1f} {f['turns_per_s']:>8.0f} {f['start_s']:>8.2f} "
                f"{f.get('driver_cpu_s', 0.0):>12.2f}"
            )
        print(
            f"{name:<10} scaling 2 cores / 1 core: {row['scaling']:.2f}x; Ray overhead "
            f"{row['overhead_per_episode_ms']:.2f} ms/episode, "
            f"{row['overhead_per_turn_ms']:.3f} ms/turn (vs embedded)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the figures as JSON to this file")
    parser.add_argument("--no-isolate", action="store_true", help="run in this network")
    parser.add_argument("--isolated", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, metavar=("ENV", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.quick)))
        return
    if not args.no_isolate and not args.isolated:
        if os.geteuid() == 0 and shutil.which("unshare"):
            cmd = [
                "unshare",
                "--net",
                "--pid",
                "--fork",
                "--mount-proc",
                sys.executable,
                __file__,
                "--isolated",
                *sys.argv[1:],
            ]
            sys.exit(subprocess.call(cmd))
        print("not root or no unshare: running without a network namespace", file=sys.stderr)
    if args.isolated:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    rows = measure(args.quick)
    report(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cpus": os.cpu_count(), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
