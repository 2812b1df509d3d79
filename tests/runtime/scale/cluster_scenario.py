"""Runs inside a fresh network + pid namespace (``unshare --net --pid --fork --mount-proc``):
brings ``lo`` up, starts a 3-node Ray cluster on 127.0.0.1 (a head and two worker nodes
with their own resources, each ``ray start --block``, stopped by pid), runs the scenarios
and writes what they produced under OUT. Only ``lo`` exists in the namespace, so nothing
can bind or connect beyond loopback; when this script (pid 1 of the namespace) exits, the
kernel ends whatever is left.

usage: cluster_scenario.py OUT RUN_ID
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import msgspec

VENV_BIN = Path(sys.executable).parent
ADDRESS = "127.0.0.1:6379"
NODE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    # CI machines are shared: do not let Ray's memory monitor kill workers for memory
    # other jobs use (the workloads here are tiny).
    "RAY_memory_monitor_refresh_ms": "0",
    # Notice a dead node within a few seconds, not tens of them.
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def descendants(pid: int) -> list[int]:
    """``pid``'s descendants, from /proc (this namespace's own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    pids = [*descendants(pid), pid]
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
    return pids


class Cluster:
    def __init__(self, temp: Path) -> None:
        self.temp = temp
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = (self.temp / f"{name}.log").open("ab")
        self.nodes[name] = subprocess.Popen(
            [
                str(VENV_BIN / "ray"),
                "start",
                "--block",
                "--node-ip-address",
                "127.0.0.1",
                "--object-store-memory",
                str(80 << 20),
                "--disable-usage-stats",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **NODE_ENV},
        )

    def up(self) -> None:
        self.start(
            "head",
            "--head",
            "--port",
            "6379",
            "--include-dashboard=false",
            "--num-cpus",
            "1",
            "--resources",
            '{"head": 1}',
            "--temp-dir",
            str(self.temp / "ray"),
        )
        import ray

        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=ADDRESS, namespace="gymux", log_to_driver=False)
                break
            except Exception:
                if time.monotonic() > deadline or self.nodes["head"].poll() is not None:
                    raise
                time.sleep(0.5)
        # One worker node at a time; on a loaded machine `ray start` can time out
        # registering with the head (an RPC deadline), so a node that exits is started again.
        for joined, (name, resources) in enumerate(
            [("node_a", '{"node_a": 1, "jvm": 1}'), ("node_b", '{"node_b": 1, "jvm": 1}')],
            start=2,
        ):
            args = ("--address", ADDRESS, "--num-cpus", "1", "--resources", resources)
            self.start(name, *args)
            tries, deadline = 1, time.monotonic() + 180
            while sum(1 for n in ray.nodes() if n["Alive"]) < joined:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker node {name} did not join")
                if self.nodes[name].poll() is not None:
                    if tries == 3:
                        raise RuntimeError(f"worker node {name} failed to start 3 times")
                    kill_tree(self.nodes[name].pid)
                    self.start(name, *args)
                    tries += 1
                time.sleep(0.3)

    def down(self) -> None:
        for name in ("node_a", "node_b", "head"):
            proc = self.nodes.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
            if proc is not None:
                kill_tree(proc.pid)


async def run_one(out: Path, name: str, workload, run_id: str, kill=None):
    from gymux.config import RuntimeConfig
    from gymux.events import EpisodeFinished
    from gymux.scale import RayExecutor, RayRuntime

    config = RuntimeConfig(max_concurrent_episodes=6)
    executor = RayExecutor(address=ADDRESS)
    async with RayRuntime(config, executor=executor, out=out / name) as rt:
        finished = 0
        killed: list[int] = []

        def on_event(event) -> None:
            nonlocal finished
            if isinstance(event, EpisodeFinished):
                finished += 1
                if kill is not None and finished == kill[0] and not killed:
                    killed.extend(kill_tree(kill[1]))

        rt.subscribe(on_event)
        handle = await rt.submit(workload, run_id=run_id)
        result = await handle.wait()
        stats = rt.stats(handle)
    (out / f"{name}.json").write_bytes(
        msgspec.json.encode(
            {
                "stats": stats,
                "summary": result.summary,
                "killed": killed,
                "trajectories": result.trajectories,
            }
        )
    )


def free_cpus(want: float, timeout: float = 30.0) -> float:
    import ray

    deadline = time.monotonic() + timeout
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if free >= want or time.monotonic() > deadline:
            return free
        time.sleep(0.2)


def interrupt(out: Path) -> None:
    events = out / "interrupt-events.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gymux",
            "run",
            "--ray",
            ADDRESS,
            "--env",
            "textcraft",
            "--policy",
            "oracle",
            "--samples",
            "20",
            "--out",
            str(out / "interrupt"),
            "--progress",
            "off",
            "--events",
            str(events),
            "--concurrency",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and proc.poll() is None:
        if events.exists() and events.read_text().count('"episode_finished"') >= 5:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        output, _ = proc.communicate()
    (out / "interrupt.json").write_text(
        json.dumps({"rc": proc.returncode, "output": output, "free_cpus": free_cpus(3.0)})
    )


def main() -> None:
    out, run_id = Path(sys.argv[1]), sys.argv[2]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.environ.update(NODE_ENV)
    from gymux.config import Workload

    cluster = Cluster(out)
    started = time.monotonic()
    timings: dict[str, float] = {}
    try:
        cluster.up()
        timings["cluster_up_s"] = time.monotonic() - started
        for name, workload in [
            ("maze", Workload(env="maze", tasks="test", samples=2, policy="oracle")),
            ("textcraft", Workload(env="textcraft", tasks="test", limit=30, policy="oracle")),
            ("groups", Workload(env="maze", tasks="test", limit=9, group_size=3, policy="oracle")),
        ]:
            t = time.monotonic()
            anyio.run(run_one, out, name, workload, f"{run_id}-{name}")
            timings[name + "_s"] = time.monotonic() - t
        # Ctrl-C: SIGINT to `gymux run --ray` once episodes are coming in.
        t = time.monotonic()
        interrupt(out)
        timings["interrupt_s"] = time.monotonic() - t
        # A node dies mid-run: SIGKILL node_b's ray start, raylet and workers by pid.
        t = time.monotonic()
        kill = (8, cluster.nodes["node_b"].pid)
        workload = Workload(env="textcraft", tasks="test", samples=3, policy="oracle")
        anyio.run(run_one, out, "kill", workload, f"{run_id}-kill", kill)
        timings["kill_s"] = time.monotonic() - t
        # The CLI against the cluster (two nodes left).
        t = time.monotonic()
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "gymux",
                "run",
                "--ray",
                ADDRESS,
                "--env",
                "maze",
                "--policy",
                "oracle",
                "--out",
                str(out / "cli"),
                "--progress",
                "off",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        (out / "cli.txt").write_text(f"rc={cli.returncode}\n{cli.stdout}\n{cli.stderr}")
        timings["cli_s"] = time.monotonic() - t
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.down()
        (out / "timings.json").write_text(json.dumps(timings))


if __name__ == "__main__":
    main()
