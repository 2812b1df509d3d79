"""``gymux report``: regenerate an eval's reports, or compare several evals.

::

    gymux report RUN                      # rewrite RUN/report.{md,json,html} and RUN/charts/
    gymux report RUN_A RUN_B [...] [--out DIR]   # compare B, C, ... with A over shared envs

A RUN is a folder written by ``gymux eval`` (``RUN/eval.json`` and ``RUN/store``). Metrics
are recomputed from the store exactly as ``gymux eval`` computes them. A comparison goes to
``--out`` (default ``runs/compare-<A>-vs-<B>...``). A folder that is not a run prints one
line ``gymux: error: ...`` and exits 2; a damaged store exits 1.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from gymux.cli.common import EXIT_FAILED, EXIT_OK, UsageError, add_command
from gymux.cli.common import err as _err
from gymux.cli.common import out as _out
from gymux.env_plugins.registry import Registry, default_registry
from gymux.errors import GymuxError
from gymux.eval.charts import write_charts
from gymux.eval.html import render_html
from gymux.eval.metrics import (
    EvalMetrics,
    compute_metrics,
    latest_per_triple,
    score_ranges_for,
    success_rules_for,
)
from gymux.eval.report import (
    RunData,
    RunInfo,
    compare_runs,
    run_letter,
    write_comparison_reports,
    write_reports,
)
from gymux.eval.run import MANIFEST, read_store, suite_triples
from gymux.eval.suite import Suite
from gymux.trajectory import Trajectory

__all__ = [
    "add_parser",
    "load_run",
    "run",
    "select_trajectories",
    "write_eval_reports",
    "write_run_outputs",
]


#: The one-line description of ``gymux report`` and the examples its help shows.
SUMMARY = "regenerate an eval's reports, or compare several evals side by side"
EXAMPLES = (
    "gymux report runs/eval-smoke-oracle",
    "gymux report runs/eval-a runs/eval-b -o runs/a-vs-b",
)


def add_parser(sub: Any) -> None:
    """Register ``gymux report`` on the top-level subparsers."""
    p = add_command(sub, "report", SUMMARY, *EXAMPLES)
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="eval output folders (gymux eval --out); a gymux evolve folder stands for its "
        "evaluated models, in stage order",
    )
    p.add_argument(
        "--out",
        "-o",
        help="where to write (default: the run itself; for several runs "
        "runs/compare-<A>-vs-<B>...)",
    )


def select_trajectories(
    suite: Suite, trajectories: Sequence[Trajectory], registry: Registry | None = None
) -> list[Trajectory]:
    """The latest finished trajectory of each of the suite's ``(env, task, sample)``,
    sorted. Where an env's plugin is not installed here, all of its triples in the store
    count (the suite's task selection cannot be replayed without the plugin)."""
    registry = registry or default_registry()
    covered: set[tuple[str, int, int]] = set()
    loose: set[str] = set()
    for env in suite.envs:
        one = msgspec.structs.replace(suite, envs=[env])
        try:
            covered.update(k for ks in suite_triples(one, registry).values() for k in ks)
        except GymuxError:  # not installed here, or no such split
            loose.add(env.id)
    latest = latest_per_triple(
        t for t in trajectories if t.env_id in loose or (t.env_id, t.task_id, t.sample) in covered
    )
    return [latest[k] for k in sorted(latest)]


def _run_data(
    info: RunInfo,
    suite: Suite,
    trajectories: list[Trajectory],
    metrics: EvalMetrics | None,
    registry: Registry | None = None,
) -> RunData:
    envs = [e.id for e in suite.envs]
    registry = registry or default_registry()
    ranges = score_ranges_for(envs, registry)
    if metrics is None:
        metrics = compute_metrics(
            trajectories,
            envs=envs,
            seed=suite.seed,
            score_ranges=ranges,
            success_rules=success_rules_for(envs, registry),
        )
    return RunData(
        info=info,
        seed=suite.seed,
        envs=envs,
        metrics=metrics,
        trajectories=trajectories,
        score_ranges=ranges,
    )


def load_run(
    path: Path, *, letter: str = "A", name: str | None = None, registry: Registry | None = None
) -> RunData:
    """Read an eval folder: its manifest, its store, and the metrics over its suite.

    :class:`UsageError` when ``path`` is not an eval folder."""
    if not path.is_dir():
        raise UsageError(f"{path}: no such folder")
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise UsageError(
            f"{path} is not a gymux eval run (no {MANIFEST}; write one with gymux eval --out)"
        )
    try:
        doc = json.loads(manifest.read_text())
        suite = msgspec.convert(doc["suite_spec"], Suite)
        policy = str(doc["policy"])
    except (OSError, ValueError, KeyError, TypeError, msgspec.ValidationError) as exc:
        raise UsageError(f"{manifest} is not a valid eval manifest: {exc}") from None
    trajectories = select_trajectories(suite, read_store(path), registry)
    info = RunInfo(
        letter=letter, name=name or path.name, path=str(path), suite=suite.name, policy=policy
    )
    return _run_data(info, suite, trajectories, None, registry)


def write_run_outputs(out: Path, run: RunData) -> list[str]:
    """``report.md``, ``report.json``, ``report.html`` and ``charts/*.png`` of one run under
    ``out``; returns the Markdown table's lines."""
    out.mkdir(parents=True, exist_ok=True)
    table = write_reports(out, run.info.suite, run.info.policy, run.metrics)
    (out / "report.html").write_text(render_html([run]), encoding="utf-8")
    write_charts(out, [run], None)
    return table


def write_eval_reports(
    out: Path, suite: Suite, policy: str, metrics: EvalMetrics, registry: Registry | None = None
) -> list[str]:
    """All of ``gymux eval``'s reports for the eval in ``out`` (whose metrics are given)."""
    trajectories = select_trajectories(suite, read_store(out), registry)
    info = RunInfo(letter="A", name=out.name, path=str(out), suite=suite.name, policy=policy)
    return write_run_outputs(out, _run_data(info, suite, trajectories, metrics, registry))


def _names(paths: Sequence[Path]) -> list[str]:
    names = [p.resolve().name or str(p) for p in paths]
    counts = Counter(names)
    return [n if counts[n] == 1 else str(p) for n, p in zip(names, paths, strict=True)]


def _compare(paths: list[Path], out_text: str | None, registry: Registry) -> int:
    names = _names(paths)
    runs = [
        load_run(p, letter=run_letter(i), name=n, registry=registry)
        for i, (p, n) in enumerate(zip(paths, names, strict=True))
    ]
    slug = "-vs-".join(n.replace("/", "_") for n in names)
    out = Path(out_text) if out_text else Path("runs") / f"compare-{slug}"
    out.mkdir(parents=True, exist_ok=True)
    comp = compare_runs(runs)
    lines = write_comparison_reports(out, comp)
    (out / "report.html").write_text(render_html(runs, comp), encoding="utf-8")
    charts = write_charts(out, runs, comp)
    for line in lines:
        _out(line)
    _out("")
    _out(f"report: {out / 'report.html'}")
    if charts:
        _out(f"charts: {out / 'charts'}")
    return EXIT_OK


def _expand_evolve(path: Path) -> list[Path]:
    """A ``gymux evolve`` folder stands for its evaluated models, in stage order (base, BC,
    then each iteration); any other folder for itself."""
    journal = path / "evolve.json"
    if not journal.is_file():
        return [path]
    try:
        stages = msgspec.json.decode(journal.read_bytes()).get("stages", [])
    except (msgspec.DecodeError, AttributeError):
        raise UsageError(f"{journal}: not an evolve journal") from None
    evals = [
        path / "eval" / s["name"].split("-", 1)[1]
        for s in stages
        if isinstance(s, dict) and str(s.get("name", "")).startswith("eval-")
    ]
    if not evals:
        raise UsageError(f"{path}: the evolve run has evaluated no model yet")
    return evals


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run a parsed ``gymux report ...``; returns the exit code. A folder that is not a run
    raises :class:`UsageError` (exit 2), a damaged store :class:`StoreError` (exit 1); a
    failed read or write of a file is exit 1 too."""
    paths = [stage for p in args.runs for stage in _expand_evolve(Path(p))]
    try:
        if len(paths) > 1:
            return _compare(paths, args.out, registry)
        one = load_run(paths[0], registry=registry)
        out = Path(args.out) if args.out else paths[0]
        for line in write_run_outputs(out, one):
            _out(line)
        _out(f"report: {out / 'report.html'}")
        return EXIT_OK
    except OSError as exc:
        _err(f"gymux: error: {exc}")
        return EXIT_FAILED
