"""``gymux eval``'s reports: ``OUT/report.md`` (Markdown table) and ``OUT/report.json``."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from gymux.eval_metrics import EnvMetrics, EvalMetrics

__all__ = ["markdown_table", "write_reports"]


def _pct(x: float) -> str:
    return f"{x * 100:.1f}"


def _row(m: EnvMetrics) -> str:
    lo, hi = m.success_ci
    slo, shi = m.score_ci
    reasons = ", ".join(f"{k}={v}" for k, v in m.finish_reasons.items()) or "-"
    return (
        f"| {m.env} | {m.episodes} | {_pct(m.success_rate)}% [{_pct(lo)}, {_pct(hi)}] "
        f"| {m.mean_score:.3f} [{slo:.3f}, {shi:.3f}] "
        f"| {_pct(m.avg_at_n)}% / {_pct(m.pass_at_n)}% (n={m.samples}) "
        f"| {m.mean_turns:.2f} | {reasons} |"
    )


def markdown_table(metrics: EvalMetrics) -> list[str]:
    """One row per env and an ``overall`` row (95% intervals in brackets)."""
    lines = [
        "| env | episodes | success [95% CI] | mean score [95% CI] | Avg@n / Pass@n "
        "| mean turns | finish reasons |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    lines.extend(_row(m) for m in metrics.envs)
    lines.append(_row(metrics.overall))
    return lines


def write_reports(out: Path, suite: str, policy: str, metrics: EvalMetrics) -> list[str]:
    """Write ``report.md`` and ``report.json`` under ``out``; returns the table's lines."""
    table = markdown_table(metrics)
    head = [f"# gymux eval: suite `{suite}`, policy `{policy}`", ""]
    (out / "report.md").write_text("\n".join(head + table) + "\n")
    doc = {"suite": suite, "policy": policy, **msgspec.to_builtins(metrics)}
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    return table
