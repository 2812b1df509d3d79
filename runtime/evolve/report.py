"""The evolve run's report: ``OUT/report.md``, ``OUT/report.json``, ``OUT/report.html`` and,
with matplotlib (``gymux[plot]``), ``OUT/charts/evolve-success.png``,
``OUT/charts/evolve-valid-actions.png`` and ``OUT/charts/evolve-loss.png``.

One row per evaluated model (base, BC, each iteration): success rate and mean score per
env on the eval split, and the share of its turns whose output parsed into an action (a
small model learns the action format long before it solves tasks, so this is where BC shows
first); beside it, per iteration, the episodes explored and kept, and per
learn stage its data, steps, loss (first and last step) and wall time. Every stage's own
eval folder (``OUT/eval/<name>``) is an ordinary eval: ``gymux report OUT/eval/bc
OUT/eval/1`` compares two of them with intervals.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from gymux.eval.html import bar_chart_svg
from gymux.eval.run import read_store
from gymux.evolve.pipeline import Journal, StageRecord

__all__ = ["evolve_summary", "write_evolve_report"]


def _label(stage: str) -> str:
    suffix = stage.split("-", 1)[1]
    return suffix if suffix in ("base", "bc") else f"iter {suffix}"


def _valid_actions(out: Path, folder: str) -> dict[str, dict[str, int]]:
    """Per env of the eval folder ``out/folder``: its turns and how many parsed into an
    action (``parse_error`` unset)."""
    counts: dict[str, dict[str, int]] = {}
    for traj in read_store(out / folder):
        row = counts.setdefault(traj.env_id, {"turns": 0, "valid": 0})
        row["turns"] += len(traj.turns)
        row["valid"] += sum(1 for turn in traj.turns if turn.parse_error is None)
    return counts


def evolve_summary(journal: Journal, out: Path | None = None) -> dict[str, Any]:
    """The report's data: evaluated models, iterations and learn stages, from the journal
    (with ``out``, the evolve folder, also each eval's valid-action counts per env)."""
    evals: list[dict[str, Any]] = []
    learns: list[dict[str, Any]] = []
    iterations: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    for record in journal.stages:
        stages.append({"stage": record.name, "wall_s": round(record.wall_s, 3)})
        if record.name.startswith("eval-"):
            row: dict[str, Any] = {
                "model": _label(record.name),
                "envs": record.info.get("envs", {}),
            }
            folder = record.info.get("dir")
            if out is not None and isinstance(folder, str) and (out / folder).is_dir():
                row["valid_actions"] = _valid_actions(out, folder)
            evals.append(row)
        elif record.name.startswith("learn-"):
            losses = record.info.get("losses", [])
            learns.append(
                {
                    "stage": record.name,
                    "trajectories": record.info.get("trajectories"),
                    "examples": record.info.get("examples"),
                    "steps": record.info.get("steps"),
                    "first_loss": losses[0] if losses else None,
                    "last_loss": losses[-1] if losses else None,
                    "losses": losses,
                    "wall_s": round(record.wall_s, 3),
                }
            )
        elif record.name.startswith("filter-"):
            iterations.append(
                {
                    "iteration": int(record.name.split("-")[1]),
                    "explored": record.info.get("explored"),
                    "kept": record.info.get("kept"),
                    "kept_per_env": record.info.get("kept_per_env", {}),
                }
            )
    return {
        "base_model": journal.base_model,
        "evals": evals,
        "iterations": iterations,
        "learn": learns,
        "stages": stages,
    }


def _envs(summary: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for row in summary["evals"]:
        seen.update(dict.fromkeys(row["envs"]))
    return list(seen)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _model_table(
    title: str,
    summary: dict[str, Any],
    envs: list[str],
    cell: Callable[[dict[str, Any], str], str],
) -> list[str]:
    """A section with one row per evaluated model and one ``cell(row, env)`` per env."""
    lines = [f"## {title}", "", "| model | " + " | ".join(envs) + " |"]
    lines.append("|---|" + "---|" * len(envs))
    for row in summary["evals"]:
        lines.append(f"| {row['model']} | " + " | ".join(cell(row, env) for env in envs) + " |")
    lines.append("")
    return lines


def _markdown(summary: dict[str, Any]) -> str:
    envs = _envs(summary)
    lines = [f"# gymux evolve: {summary['base_model']}", ""]
    if summary["evals"]:

        def success(row: dict[str, Any], env: str) -> str:
            m = row["envs"].get(env)
            return "-" if m is None else f"{_pct(m['success_rate'])} ({m['mean_score']:.3f})"

        lines += _model_table("Eval split: success rate (mean score)", summary, envs, success)
    if any("valid_actions" in row for row in summary["evals"]):

        def valid(row: dict[str, Any], env: str) -> str:
            c = row.get("valid_actions", {}).get(env)
            if not c or not c["turns"]:
                return "-"
            return f"{_pct(c['valid'] / c['turns'])} ({c['valid']}/{c['turns']})"

        lines += _model_table(
            "Eval split: turns whose output parsed into an action", summary, envs, valid
        )
    if summary["iterations"]:
        lines += ["## Explore and filter", "", "| iteration | explored | kept | kept per env |"]
        lines.append("|---|---|---|---|")
        for it in summary["iterations"]:
            per_env = ", ".join(f"{k} {v}" for k, v in sorted(it["kept_per_env"].items()))
            lines.append(
                f"| {it['iteration']} | {it['explored']} | {it['kept']} | {per_env or '-'} |"
            )
        lines.append("")
    if summary["learn"]:
        lines += ["## Learn (from the base model each time)", ""]
        lines.append(
            "| stage | trajectories | examples | steps | first loss | last loss | wall s |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for row in summary["learn"]:
            first = "-" if row["first_loss"] is None else f"{row['first_loss']:.4f}"
            last = "-" if row["last_loss"] is None else f"{row['last_loss']:.4f}"
            lines.append(
                f"| {row['stage']} | {row['trajectories']} | {row['examples']} | "
                f"{row['steps']} | {first} | {last} | {row['wall_s']:.1f} |"
            )
        lines.append("")
    lines += ["## Wall time per stage", "", "| stage | wall s |", "|---|---|"]
    lines += [f"| {s['stage']} | {s['wall_s']:.1f} |" for s in summary["stages"]]
    lines.append("")
    return "\n".join(lines)


def _html(summary: dict[str, Any], markdown: str) -> str:
    envs = _envs(summary)
    series = [
        (
            row["model"],
            [row["envs"].get(env, {}).get("success_rate", 0.0) for env in envs],
            [(0.0, 0.0)] * len(envs),
        )
        for row in summary["evals"]
    ]
    chart = (
        bar_chart_svg("evolve-success", "Success rate per env", envs, series, percent=True)
        if envs
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>gymux evolve</title></head>"
        f"<body>{chart}<pre>{html.escape(markdown)}</pre></body></html>\n"
    )


def _charts(out: Path, summary: dict[str, Any]) -> list[Path]:
    from gymux.eval.charts import charts_available

    if not charts_available() or not summary["evals"]:
        return []
    from matplotlib.figure import Figure

    charts = out / "charts"
    charts.mkdir(exist_ok=True)
    envs = _envs(summary)
    fig = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax: Any = fig.add_subplot()
    models = [row["model"] for row in summary["evals"]]
    for env in envs:
        ys = [row["envs"].get(env, {}).get("success_rate", 0.0) * 100 for row in summary["evals"]]
        ax.plot(models, ys, marker="o", label=env)
    ax.set_ylabel("success %")
    ax.set_title("Eval success after each stage")
    ax.legend()
    paths = [charts / "evolve-success.png"]
    fig.savefig(paths[0], dpi=150)
    if any(row.get("valid_actions") for row in summary["evals"]):
        fig = Figure(figsize=(5.0, 3.2), layout="constrained")
        ax = fig.add_subplot()
        for env in envs:
            ys = []
            for row in summary["evals"]:
                c = row.get("valid_actions", {}).get(env)
                ys.append(100 * c["valid"] / c["turns"] if c and c["turns"] else 0.0)
            ax.plot(models, ys, marker="o", label=env)
        ax.set_ylabel("turns with a parsed action %")
        ax.set_title("Eval turns whose output parsed into an action")
        ax.legend()
        paths.append(charts / "evolve-valid-actions.png")
        fig.savefig(paths[-1], dpi=150)
    if any(row["losses"] for row in summary["learn"]):
        fig = Figure(figsize=(5.0, 3.2), layout="constrained")
        ax = fig.add_subplot()
        for row in summary["learn"]:
            if row["losses"]:
                ax.plot(range(1, len(row["losses"]) + 1), row["losses"], label=row["stage"])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title("Training loss per learn stage")
        ax.legend()
        paths.append(charts / "evolve-loss.png")
        fig.savefig(paths[-1], dpi=150)
    return paths


def write_evolve_report(out: Path, journal: Journal | list[StageRecord]) -> list[Path]:
    """Write the report files into ``out``; returns their paths."""
    if isinstance(journal, list):
        journal = Journal(config_digest="", stages=journal)
    summary = evolve_summary(journal, out)
    markdown = _markdown(summary)
    paths = [out / "report.md", out / "report.json", out / "report.html"]
    paths[0].write_text(markdown)
    paths[1].write_bytes(msgspec.json.format(msgspec.json.encode(summary)) + b"\n")
    paths[2].write_text(_html(summary, markdown))
    return paths + _charts(out, summary)
