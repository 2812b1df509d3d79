"""PNG charts of an eval or a comparison, for papers (needs matplotlib: ``gymux[plot]``).

Written under ``OUT/charts/``:

* ``success.png``: success rate per environment with 95% Wilson intervals; in a
  comparison, one bar per run in each environment's group (the shared envs only).
* ``score.png``: mean score per environment with 95% bootstrap intervals, same layout.
* ``diff-<B>.png`` (comparisons): success ``B - A`` per environment in percentage
  points with Newcombe's 95% interval.

Without matplotlib nothing is written and one warning is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from gymux.eval.metrics import EvalMetrics
from gymux.eval.report import Comparison, EnvDiff, RunData, score_ranges_of, score_series

__all__ = ["charts_available", "write_charts"]

_log = structlog.get_logger("gymux.eval.charts")

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"]
DPI = 200


def charts_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _grouped(
    path: Path,
    title: str,
    ylabel: str,
    envs: Sequence[str],
    series: Sequence[tuple[str, list[float], list[tuple[float, float]]]],
    *,
    percent: bool,
) -> None:
    from matplotlib.figure import Figure

    legend_w = 1.6 if len(series) > 1 else 0.0
    size = (max(4.0, 1.1 * len(envs) * max(1, len(series)) ** 0.5 + 1.5) + legend_w, 3.2)
    fig = Figure(figsize=size, layout="constrained")
    ax: Any = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    scale = 100.0 if percent else 1.0
    for i, (label, values, cis) in enumerate(series):
        xs = [g - 0.4 + width * (i + 0.5) for g in range(len(envs))]
        ys = [v * scale for v in values]
        err = [
            [max(0.0, (v - lo) * scale) for v, (lo, _) in zip(values, cis, strict=True)],
            [max(0.0, (hi - v) * scale) for v, (_, hi) in zip(values, cis, strict=True)],
        ]
        ax.bar(
            xs,
            ys,
            width * 0.9,
            yerr=err,
            capsize=3,
            label=label,
            color=PALETTE[i % len(PALETTE)],
            error_kw={"elinewidth": 1},
        )
    ax.set_xticks(range(len(envs)))
    ax.set_xticklabels(list(envs))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if percent:
        ax.set_ylim(0, 105)
        ax.set_yticks([0, 20, 40, 60, 80, 100])
    ax.axhline(0, color="#555", linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=DPI, format="png")


def _diff(path: Path, rows: Sequence[EnvDiff]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 0.45 * len(rows) + 1.2), layout="constrained")
    ax: Any = fig.add_subplot()
    ys = list(range(len(rows)))[::-1]
    xs = [d.success_diff * 100 for d in rows]
    err = [
        [max(0.0, (d.success_diff - d.success_diff_ci[0]) * 100) for d in rows],
        [max(0.0, (d.success_diff_ci[1] - d.success_diff) * 100) for d in rows],
    ]
    ax.errorbar(xs, ys, xerr=err, fmt="o", color="#e15759", capsize=3)
    ax.axvline(0, color="#555", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([d.env for d in rows])
    ax.set_xlim(-100, 100)
    ax.set_xlabel(f"success {rows[0].b} - {rows[0].a} (percentage points, 95% CI)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.savefig(path, dpi=DPI, format="png")


def _series(
    labels: Sequence[str], metrics: Sequence[EvalMetrics]
) -> list[tuple[str, list[float], list[tuple[float, float]]]]:
    return [
        (label, [e.success_rate for e in m.envs], [e.success_ci for e in m.envs])
        for label, m in zip(labels, metrics, strict=True)
    ]


def write_charts(out: Path, runs: Sequence[RunData], comparison: Comparison | None) -> list[Path]:
    """Write the PNGs under ``out/charts``; returns their paths (empty without matplotlib)."""
    if not charts_available():
        _log.warning(
            "charts_skipped", reason="matplotlib is not installed; pip install 'gymux[plot]'"
        )
        return []
    folder = out / "charts"
    folder.mkdir(parents=True, exist_ok=True)
    ranges = score_ranges_of(runs)
    if comparison is None:
        labels = [runs[0].info.letter]
        metrics: list[EvalMetrics] = [runs[0].metrics]
    else:
        labels = [f"{r.letter}: {r.name}" for r in comparison.runs]
        metrics = list(comparison.metrics)
    envs = [e.env for e in metrics[0].envs]
    paths = [folder / "success.png", folder / "score.png"]
    _grouped(
        paths[0],
        "Success rate (95% Wilson CI)",
        "success rate (%)",
        envs,
        _series(labels, metrics),
        percent=True,
    )
    _grouped(
        paths[1],
        "Mean score as a fraction of each env's reward range (95% bootstrap CI)",
        "score / reward range",
        envs,
        [score_series(label, m, ranges) for label, m in zip(labels, metrics, strict=True)],
        percent=False,
    )
    if comparison is not None:
        for rows in comparison.diffs:
            path = folder / f"diff-{rows[0].b}.png"
            _diff(path, rows)
            paths.append(path)
    return paths
