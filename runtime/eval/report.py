"""``gymux eval`` / ``gymux report``'s text reports: ``report.md`` (Markdown) and
``report.json``, for one run or for a comparison of several runs.

A comparison takes the first run as the baseline ``A`` and reports, for every other run
``B`` and every environment the runs share, the difference ``B - A`` of the success rates
with Newcombe's hybrid score interval and the difference of the mean scores with a
two-sample bootstrap interval (formulas in docs/evaluation.md).
"""

from __future__ import annotations

import json
import math
import random
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from gymux.eval.metrics import (
    AGENTGYM_RULE,
    BOOTSTRAP_RESAMPLES,
    Z95,
    EnvMetrics,
    EvalMetrics,
    compute_metrics,
    scale_score,
    wilson_interval,
)
from gymux.trajectory import Trajectory

__all__ = [
    "METRIC_COLUMNS",
    "Comparison",
    "EnvDiff",
    "RunData",
    "RunInfo",
    "bootstrap_diff_ci",
    "compare_runs",
    "comparison_markdown",
    "identity_of",
    "identity_text",
    "markdown_table",
    "metric_cells",
    "newcombe_interval",
    "report_notes",
    "run_letter",
    "score_ranges_of",
    "score_series",
    "success_note",
    "write_comparison_reports",
    "write_reports",
]


class RunInfo(msgspec.Struct, kw_only=True):
    """Which eval a report is about: its folder, suite and policy."""

    #: ``A``, ``B``, ... in the order the runs were given.
    letter: str
    #: The run folder's name (unique within a comparison).
    name: str
    path: str
    suite: str
    policy: str


class RunData(msgspec.Struct, kw_only=True):
    """One eval run as the reports need it: metrics over its suite and the latest
    finished trajectory of each of its ``(env, task, sample)``, sorted."""

    info: RunInfo
    seed: int
    #: The suite's environments, in suite order.
    envs: list[str]
    metrics: EvalMetrics
    trajectories: list[Trajectory]
    #: Reward range of each env (the overall score maps rewards to 0..1 with them).
    score_ranges: dict[str, tuple[float, float]] = msgspec.field(default_factory=dict)


class EnvDiff(msgspec.Struct, kw_only=True):
    """``B - A`` for one environment (or ``overall``: the envs the runs share, pooled)."""

    env: str
    a: str
    b: str
    episodes_a: int
    episodes_b: int
    success_a: float
    success_b: float
    success_diff: float
    #: Newcombe's hybrid score interval (95%) of ``success_b - success_a``.
    success_diff_ci: tuple[float, float]
    score_a: float
    score_b: float
    score_diff: float
    #: Two-sample percentile bootstrap interval (95%) of ``score_b - score_a``.
    score_diff_ci: tuple[float, float]
    #: Whether both runs cover the same ``(task, sample)`` pairs of the env.
    same_tasks: bool


class Comparison(msgspec.Struct, kw_only=True):
    runs: list[RunInfo]
    #: Environments every run has, in the first run's order.
    shared_envs: list[str]
    #: Environments some runs lack: env -> letters of the runs that have it.
    not_shared: dict[str, list[str]]
    #: Per run: metrics over the shared envs only (``overall`` pools those).
    metrics: list[EvalMetrics]
    #: Per run after the first: its differences from the first, per shared env then overall.
    diffs: list[list[EnvDiff]]


def run_letter(index: int) -> str:
    """``A``, ``B``, ..., ``Z``, ``AA``, ``AB``, ..."""
    letters = string.ascii_uppercase
    text = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        text = letters[rem] + text
    return text


def newcombe_interval(
    successes_a: int, n_a: int, successes_b: int, n_b: int, z: float = Z95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10) for ``p_b - p_a``, built from the
    two Wilson intervals; ``(0, 0)`` when either run has no episodes."""
    if n_a <= 0 or n_b <= 0:
        return (0.0, 0.0)
    pa, pb = successes_a / n_a, successes_b / n_b
    la, ua = wilson_interval(successes_a, n_a, z)
    lb, ub = wilson_interval(successes_b, n_b, z)
    d = pb - pa
    lower = d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    upper = d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return (max(-1.0, lower), min(1.0, upper))


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(b) - mean(a)``, resampling each side
    independently (deterministic for a seed); ``(0, 0)`` when a side is empty."""
    if not a or not b:
        return (0.0, 0.0)
    rng = random.Random(seed)
    na, nb = len(a), len(b)
    diffs = sorted(
        sum(rng.choices(b, k=nb)) / nb - sum(rng.choices(a, k=na)) / na for _ in range(resamples)
    )
    alpha = (1 - level) / 2
    return (
        diffs[math.floor(alpha * (resamples - 1))],
        diffs[math.ceil((1 - alpha) * (resamples - 1))],
    )


def _env_diff(
    env: str,
    a: RunData,
    b: RunData,
    ta: list[Trajectory],
    tb: list[Trajectory],
    seed: int,
    score_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> EnvDiff:
    """One row of differences; with ``score_ranges`` (the ``overall`` row) rewards are
    first mapped to 0..1 by their env's range, as in the overall metrics."""
    ka, kb = sum(t.success for t in ta), sum(t.success for t in tb)
    if score_ranges is None:
        ra, rb = [float(t.reward) for t in ta], [float(t.reward) for t in tb]
    else:
        ra = [scale_score(float(t.reward), t.env_id, score_ranges) for t in ta]
        rb = [scale_score(float(t.reward), t.env_id, score_ranges) for t in tb]
    na, nb = len(ta), len(tb)
    sa, sb = (ka / na if na else 0.0), (kb / nb if nb else 0.0)
    ma, mb = (sum(ra) / na if na else 0.0), (sum(rb) / nb if nb else 0.0)
    pairs_a = {(t.env_id, t.task_id, t.sample) for t in ta}
    pairs_b = {(t.env_id, t.task_id, t.sample) for t in tb}
    return EnvDiff(
        env=env,
        a=a.info.letter,
        b=b.info.letter,
        episodes_a=na,
        episodes_b=nb,
        success_a=sa,
        success_b=sb,
        success_diff=sb - sa,
        success_diff_ci=newcombe_interval(ka, na, kb, nb),
        score_a=ma,
        score_b=mb,
        score_diff=mb - ma,
        score_diff_ci=bootstrap_diff_ci(ra, rb, seed=seed),
        same_tasks=pairs_a == pairs_b,
    )


def compare_runs(runs: Sequence[RunData]) -> Comparison:
    """Compare every run with the first over the environments all of them have."""
    if len(runs) < 2:
        raise ValueError("a comparison needs at least two runs")
    have = [set(r.envs) for r in runs]
    shared = [env for env in runs[0].envs if all(env in h for h in have)]
    every: list[str] = []
    for r in runs:
        every.extend(env for env in r.envs if env not in every)
    not_shared = {
        env: [r.info.letter for r in runs if env in r.envs] for env in every if env not in shared
    }
    metrics = [
        compute_metrics(
            [t for t in r.trajectories if t.env_id in shared],
            envs=shared,
            seed=r.seed,
            score_ranges=r.score_ranges,
        )
        for r in runs
    ]
    base = runs[0]
    ranges = score_ranges_of(runs)
    diffs: list[list[EnvDiff]] = []
    for other in runs[1:]:
        rows = []
        for env in shared:
            ta = [t for t in base.trajectories if t.env_id == env]
            tb = [t for t in other.trajectories if t.env_id == env]
            rows.append(_env_diff(env, base, other, ta, tb, base.seed))
        ta = [t for t in base.trajectories if t.env_id in shared]
        tb = [t for t in other.trajectories if t.env_id in shared]
        rows.append(_env_diff("overall", base, other, ta, tb, base.seed, ranges))
        diffs.append(rows)
    return Comparison(
        runs=[r.info for r in runs],
        shared_envs=shared,
        not_shared=not_shared,
        metrics=metrics,
        diffs=diffs,
    )


def _pct(x: float) -> str:
    return f"{x * 100:.1f}"


def _pp(x: float) -> str:
    """A difference of proportions in percentage points, signed."""
    return f"{x * 100:+.1f}"


#: The columns of a metrics table (Markdown and HTML): see :func:`metric_cells`.
METRIC_COLUMNS = (
    "env",
    "episodes",
    "success [95% CI]",
    "AgentGym success",
    "mean score [95% CI]",
    "Avg@n / Pass@n",
    "mean turns",
    "finish reasons",
)


def metric_cells(m: EnvMetrics) -> list[str]:
    """The cells of one row of a metrics table (:data:`METRIC_COLUMNS`), as plain text. An
    env without episodes (an interrupted eval that never reached it) is "not run", not 0%."""
    if m.episodes == 0:
        return [m.env, "0", "not run", "not run", "not run", "not run", "-", "-"]
    lo, hi = m.success_ci
    slo, shi = m.score_ci
    reasons = ", ".join(f"{k}={v}" for k, v in m.finish_reasons.items()) or "-"
    return [
        m.env,
        str(m.episodes),
        f"{_pct(m.success_rate)}% [{_pct(lo)}, {_pct(hi)}]"
        + (f" ({m.success_rule})" if m.success_rule and m.success_rule != "per env" else ""),
        f"{_pct(m.agentgym_success_rate)}%",
        f"{m.mean_score:.3f} [{slo:.3f}, {shi:.3f}]",
        f"{_pct(m.avg_at_n)}% / {_pct(m.pass_at_n)}% (n={m.samples})",
        f"{m.mean_turns:.2f}",
        reasons,
    ]


def _row(m: EnvMetrics) -> str:
    return "| " + " | ".join(metric_cells(m)) + " |"


def markdown_table(metrics: EvalMetrics) -> list[str]:
    """One row per env and an ``overall`` row (95% intervals in brackets)."""
    lines = ["| " + " | ".join(METRIC_COLUMNS) + " |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    lines.extend(_row(m) for m in metrics.envs)
    lines.append(_row(metrics.overall))
    return lines


def identity_of(folder: str | Path) -> dict[str, Any]:
    """The policy identity pinned in ``folder/eval.json`` (model, sampling options, what the
    server reported); empty when there is none."""
    try:
        doc = json.loads((Path(folder) / "eval.json").read_text())
    except (OSError, ValueError):
        return {}
    identity = doc.get("identity") if isinstance(doc, dict) else None
    return identity if isinstance(identity, dict) else {}


def identity_text(identity: Mapping[str, Any]) -> str:
    """``model `m`, temperature 0.7, ...``: the identity without the policy name."""
    return ", ".join(
        f"{k.replace('_', ' ')} `{v}`" if isinstance(v, str) else f"{k.replace('_', ' ')} {v}"
        for k, v in identity.items()
        if k != "policy"
    )


#: Finish reasons whose episodes a resumed eval runs again (see gymux.eval.run).
_RERUN_NOTE_REASONS = ("env_error", "policy_error")


def success_note(metrics: EvalMetrics) -> str:
    """Which success rule the table used, and AgentGym's beside it."""
    rules = {m.env: m.success_rule for m in metrics.envs if m.episodes}
    if rules and all(rules.values()):
        used = "; ".join(f"{env}: {rule}" for env, rule in rules.items())
    else:
        used = "each env's own rule (its plugin's SuccessRule: reward >= threshold)"
    return (
        f"Success is gymux's rule, per env ({used}). AgentGym success is AgentGym's rule, "
        f"{AGENTGYM_RULE}, as its evaluator counts it."
    )


def report_notes(metrics: EvalMetrics) -> list[str]:
    """What a reader of the metrics must know: the success rules, envs not run, episodes
    that are errors."""
    notes = [success_note(metrics)]
    not_run = [m.env for m in metrics.envs if m.episodes == 0]
    if not_run:
        notes.append(f"Not run (no finished episode yet): {', '.join(not_run)}.")
    errors = {k: metrics.overall.finish_reasons.get(k, 0) for k in _RERUN_NOTE_REASONS}
    if any(errors.values()):
        counts = ", ".join(f"{k}={v}" for k, v in errors.items() if v)
        notes.append(
            f"Episodes that ended in errors ({counts}) count as failures here; running the "
            "same gymux eval again reruns them (--keep-errors keeps them)."
        )
    notes.append("Cancelled episodes (an interrupted eval) are not counted.")
    return notes


def write_reports(out: Path, suite: str, policy: str, metrics: EvalMetrics) -> list[str]:
    """Write ``report.md`` and ``report.json`` under ``out``; returns the table's lines.
    The policy identity comes from ``out/eval.json`` where there is one."""
    table = markdown_table(metrics)
    identity = identity_of(out)
    head = [f"# gymux eval: suite `{suite}`, policy `{policy}`", ""]
    if identity_text(identity):
        head += [f"Policy: `{policy}`, {identity_text(identity)}.", ""]
    notes = report_notes(metrics)
    (out / "report.md").write_text("\n".join(head + table + [""] + notes) + "\n")
    doc = {
        "suite": suite,
        "policy": policy,
        "identity": identity or {"policy": policy},
        "not_run": [m.env for m in metrics.envs if m.episodes == 0],
        "notes": notes,
        **msgspec.to_builtins(metrics),
    }
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    return table


def run_title(info: RunInfo) -> str:
    return f"{info.letter} = {info.name} (suite {info.suite}, policy {info.policy})"


def _diff_row(d: EnvDiff) -> str:
    slo, shi = d.success_diff_ci
    clo, chi = d.score_diff_ci
    note = "" if d.same_tasks else "different tasks"
    diff = f"{_pp(d.success_diff)} pp [{_pp(slo)}, {_pp(shi)}]"
    score = f"{d.score_diff:+.3f} [{clo:+.3f}, {chi:+.3f}]"
    if not (d.episodes_a and d.episodes_b):
        diff = score = "n/a"
        note = "no episodes"
    return (
        f"| {d.env} | {_pct(d.success_a)}% | {_pct(d.success_b)}% | {diff} | {score} "
        f"| {d.episodes_a} / {d.episodes_b} | {note} |"
    )


def comparison_notes(comp: Comparison) -> list[str]:
    """What the comparison covers, in sentences (shared by the Markdown and HTML reports)."""
    notes = [f"Compared over the environments all runs share: {', '.join(comp.shared_envs)}."]
    if not comp.shared_envs:
        notes = ["The runs share no environment: nothing to compare."]
    for env, letters in comp.not_shared.items():
        notes.append(f"Not compared: {env} (only in {', '.join(letters)}).")
    suites = {r.suite for r in comp.runs}
    if len(suites) > 1:
        notes.append(f"The runs use different suites ({', '.join(sorted(suites))}).")
    return notes


def comparison_markdown(comp: Comparison) -> list[str]:
    """The comparison's Markdown: the runs, a success table, then ``B - A`` per run."""
    lines = [f"# gymux report: {len(comp.runs)} runs compared", ""]
    lines.extend(f"- {run_title(r)}: `{r.path}`" for r in comp.runs)
    lines.append("")
    lines.extend(comparison_notes(comp))
    lines += ["", "## Success rate [95% Wilson CI]", ""]
    header = "| env | " + " | ".join(r.letter for r in comp.runs) + " |"
    lines += [header, "|---|" + "---:|" * len(comp.runs)]
    for i in range(len(comp.shared_envs) + 1):
        cells = []
        for m in comp.metrics:
            e = m.envs[i] if i < len(m.envs) else m.overall
            lo, hi = e.success_ci
            cells.append(f"{_pct(e.success_rate)}% [{_pct(lo)}, {_pct(hi)}]")
        name = comp.shared_envs[i] if i < len(comp.shared_envs) else "overall"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for rows in comp.diffs:
        a, b = rows[0].a, rows[0].b
        lines += [
            "",
            f"## {b} - {a} (95% CI: Newcombe for success, bootstrap for score)",
            "",
            f"| env | {a} success | {b} success | difference | score difference "
            f"| episodes {a} / {b} | note |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        lines.extend(_diff_row(d) for d in rows)
    return lines


def write_comparison_reports(out: Path, comp: Comparison) -> list[str]:
    """Write a comparison's ``report.md`` and ``report.json`` under ``out``."""
    lines = comparison_markdown(comp)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    doc = {"comparison": True, **msgspec.to_builtins(comp)}
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    return lines


def score_series(
    label: str, m: EvalMetrics, ranges: Mapping[str, tuple[float, float]]
) -> tuple[str, list[float], list[tuple[float, float]]]:
    """A chart series of mean scores (and intervals) as fractions of each env's reward
    range in ``ranges`` (envs not there count as 0..1)."""
    values = [scale_score(e.mean_score, e.env, ranges) for e in m.envs]
    cis = [
        (scale_score(e.score_ci[0], e.env, ranges), scale_score(e.score_ci[1], e.env, ranges))
        for e in m.envs
    ]
    return label, values, cis


def score_ranges_of(runs: Sequence[RunData]) -> dict[str, tuple[float, float]]:
    """The reward ranges of every env of ``runs`` (each run's ``score_ranges``, merged)."""
    ranges: dict[str, tuple[float, float]] = {}
    for run in runs:
        ranges.update(run.score_ranges)
    return ranges
