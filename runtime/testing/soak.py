"""Soak runs: many sequential episodes of one env, with resource readings between them.

A plugin that leaks (an unclosed file per episode, a subprocess or JVM per reset, a
growing cache) looks fine in a short test and takes a long run down. :func:`soak` runs
``episodes`` episodes one at a time through a real :class:`~gymux.Runtime` (so instances
are pooled and reused exactly as in production) and reads, at each checkpoint, the
resident memory of this process and of all its descendants, the number of open file
descriptors, of descendant processes and of threads::

    report = await soak("textcraft", episodes=1000, checkpoints=5)
    assert report.flat(), report.table()

Readings come from ``/proc`` (Linux). ``bench/envs.py --soak`` runs 1,000 episodes of each
env; the test suite runs a shorter soak of each.
"""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import msgspec

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.registry import Registry, default_registry

__all__ = ["ResourceReading", "SoakReport", "read_resources", "soak"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ResourceReading(msgspec.Struct, frozen=True, kw_only=True):
    """Resources held at one moment, after ``episodes`` episodes."""

    episodes: int
    #: Resident memory of this process plus all its descendants, in MiB.
    rss_mib: float
    open_fds: int
    #: Live descendant processes (worker processes, JVMs, ...).
    processes: int
    threads: int


class SoakReport(msgspec.Struct, kw_only=True):
    env_id: str
    policy: str
    readings: list[ResourceReading]
    successes: int = 0
    finish_reasons: dict[str, int] = msgspec.field(default_factory=dict)

    def flat(self, *, rss_slack_mib: float = 32.0, rss_slack_frac: float = 0.10) -> bool:
        """Whether nothing grew from the first reading (after warm-up) to the last.

        File descriptors and processes must not grow at all; threads by at most 2 (thread
        pools grow on demand); RSS by at most ``max(rss_slack_mib, rss_slack_frac * rss)``
        (allocators keep freed memory, so a little drift is not a leak). With three or more
        readings RSS is judged from the second one: a JVM or an interpreter grows its heap
        over the first tasks of each kind it meets and then stays, while a leak keeps
        growing between every pair of readings: so RSS above the slack counts as growth
        only while it is still rising at the last reading (by more than ``rss_slack_mib``
        over the one before it). A JVM that enlarges its heap when it meets a new task
        kind mid-run and then holds or shrinks it is flat; a leak large enough to pass the
        slack rises in every interval and is caught.
        """
        if len(self.readings) < 2:
            return True
        first, last = self.readings[0], self.readings[-1]
        base = self.readings[1] if len(self.readings) >= 3 else first
        slack = max(rss_slack_mib, rss_slack_frac * base.rss_mib)
        previous = self.readings[-2]
        rising = previous is base or last.rss_mib > previous.rss_mib + rss_slack_mib
        return (
            last.open_fds <= first.open_fds
            and last.processes <= first.processes
            and last.threads <= first.threads + 2
            and (last.rss_mib <= base.rss_mib + slack or not rising)
        )

    def table(self) -> str:
        rows = [f"{'episodes':>9} {'rss MiB':>9} {'fds':>5} {'procs':>6} {'threads':>8}"]
        rows += [
            f"{r.episodes:>9} {r.rss_mib:>9.1f} {r.open_fds:>5} {r.processes:>6} {r.threads:>8}"
            for r in self.readings
        ]
        return "\n".join(rows)


def _children() -> dict[int, list[int]]:
    """ppid -> child pids, over every process visible in ``/proc``."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name is in parentheses and may hold spaces: split after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _rss_pages(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def read_resources(episodes: int = 0) -> ResourceReading:
    """Read this process's resources (and its descendants') now."""
    me = os.getpid()
    kids = _descendants(me)
    pages = _rss_pages(me) + sum(_rss_pages(pid) for pid in kids)
    return ResourceReading(
        episodes=episodes,
        rss_mib=pages * _PAGE / (1 << 20),
        open_fds=len(os.listdir("/proc/self/fd")),
        processes=len(kids),
        threads=threading.active_count(),
    )


def _task_ids(registry: Registry, env_id: str, count: int) -> list[int]:
    spec = registry.get(env_id).spec
    pool = list(spec.splits["test"].ids) if "test" in spec.splits else []
    for name, split in sorted(spec.splits.items()):
        if name != "test":
            pool.extend(split.ids)
    if not pool:
        raise ValueError(f"env {env_id!r} has no tasks")
    return [pool[i % len(pool)] for i in range(count)]


async def soak(
    env_id: str,
    *,
    episodes: int = 1000,
    checkpoints: int = 5,
    warmup: int | None = None,
    policy: str = "oracle",
    tasks: list[int] | None = None,
    max_turns: int | None = None,
    registry: Registry | None = None,
    config: RuntimeConfig | None = None,
) -> SoakReport:
    """Run ``warmup`` then ``episodes`` sequential episodes of ``env_id``; read resources
    after the warm-up and at ``checkpoints`` evenly spaced points after it.

    Tasks cycle through ``tasks`` (default: the test split, then the other splits). One
    :class:`Runtime` runs everything, so env instances are reused as in a long production
    run.
    """
    from gymux.runtime import Runtime

    if episodes < 1 or checkpoints < 1:
        raise ValueError("episodes and checkpoints must be >= 1")
    registry = registry or default_registry()
    warm = warmup if warmup is not None else max(2, episodes // 10)
    if tasks is not None:
        if not tasks:
            raise ValueError("tasks is empty")
        order = [tasks[i % len(tasks)] for i in range(warm + episodes)]
    else:
        order = _task_ids(registry, env_id, warm + episodes)
    config = config or RuntimeConfig(max_concurrent_episodes=1)
    report = SoakReport(env_id=env_id, policy=policy, readings=[])
    bounds = [warm + round(episodes * (i + 1) / checkpoints) for i in range(checkpoints)]
    done = 0
    async with Runtime(config, registry=registry) as rt:
        for end in [warm, *bounds]:
            if end > done:
                workload = Workload(
                    env=env_id, tasks=order[done:end], policy=policy, max_turns=max_turns
                )
                result = await rt.run(workload)
                for t in result.trajectories:
                    report.successes += int(t.success)
                    key = str(t.finish_reason)
                    report.finish_reasons[key] = report.finish_reasons.get(key, 0) + 1
                done = end
            gc.collect()
            report.readings.append(read_resources(done - warm))
    return report
