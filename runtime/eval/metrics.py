"""Metrics of an evaluation: success rate, score, Avg@n / Pass@n, with 95% intervals.

Success is each env's own rule (its plugin's ``SuccessRule``: ``reward >= threshold``,
recorded in every trajectory); :func:`success_rules_for` names it per env so the reports
say which rule they used. Beside it, AgentGym's rule: a final reward of exactly 1 (or 100,
SciWorld's score), as AgentGym's ``controller/utils.py`` and its trainers count success
(``rewards == 1 or rewards == 100``) -- under it a solved BabyAI level (reward
``1 - 0.9 * steps / max_steps``) is not a success.

Formulas are in docs/evaluation.md. Everything here is deterministic: the bootstrap uses a
seeded generator, so the same trajectories always give the same numbers.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from gymux.env_plugins.registry import PluginError, Registry
from gymux.trajectory import FinishReason, Trajectory

__all__ = [
    "AGENTGYM_SUCCESS_REWARDS",
    "EnvMetrics",
    "EvalMetrics",
    "agentgym_success",
    "bootstrap_ci",
    "compute_metrics",
    "latest_per_triple",
    "success_rule_text",
    "success_rules_for",
    "summarize",
    "wilson_interval",
]

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000

Triple = tuple[str, int, int]
#: Final rewards AgentGym counts as a success (``controller/utils.py``).
AGENTGYM_SUCCESS_REWARDS = (1.0, 100.0)
#: AgentGym's rule, as the reports write it.
AGENTGYM_RULE = "reward == 1 (sciworld: 100)"


class EnvMetrics(msgspec.Struct, kw_only=True):
    """Metrics of one environment (or of all of them, for ``overall``)."""

    env: str
    episodes: int
    tasks: int
    #: Samples per task: the largest number of samples any task has (``n`` of Avg@n).
    samples: int
    successes: int
    success_rate: float
    success_ci: tuple[float, float]
    mean_score: float
    score_ci: tuple[float, float]
    #: Mean over tasks of the fraction of a task's samples that succeeded.
    avg_at_n: float
    #: Fraction of tasks with at least one successful sample.
    pass_at_n: float
    mean_turns: float
    finish_reasons: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    #: Sum of the episodes' wall times (seconds).
    wall_s: float
    #: The rule ``successes`` counts by (``reward >= 0.05``); ``""``: not known here (each
    #: env's own rule), ``"per env"`` for an overall row of envs with different rules.
    success_rule: str = ""
    #: Episodes that succeed under AgentGym's rule (:data:`AGENTGYM_SUCCESS_REWARDS`).
    agentgym_successes: int = 0
    agentgym_success_rate: float = 0.0


class EvalMetrics(msgspec.Struct, kw_only=True):
    envs: list[EnvMetrics]
    overall: EnvMetrics


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; ``(0, 0)`` when ``n == 0``."""
    if n <= 0:
        return (0.0, 0.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def bootstrap_ci(
    values: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (deterministic for a seed)."""
    n = len(values)
    if n == 0:
        return (0.0, 0.0)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    alpha = (1 - level) / 2
    lo = means[math.floor(alpha * (resamples - 1))]
    hi = means[math.ceil((1 - alpha) * (resamples - 1))]
    return (lo, hi)


def agentgym_success(reward: float) -> bool:
    """AgentGym's success: a final reward of exactly 1 (or 100, SciWorld's score)."""
    return any(math.isclose(reward, r, abs_tol=1e-9) for r in AGENTGYM_SUCCESS_REWARDS)


def success_rule_text(threshold: float) -> str:
    """``reward >= 0.05``: an env's :class:`~gymux.env_plugins.protocol.SuccessRule`."""
    return f"reward >= {threshold:g}"


def success_rules_for(envs: Iterable[str], registry: Registry) -> dict[str, str]:
    """The success rule of each env the registry knows (others are left out)."""
    rules: dict[str, str] = {}
    for env in envs:
        try:
            rules[env] = success_rule_text(registry.get(env).spec.success.threshold)
        except (PluginError, KeyError):
            continue
    return rules


def latest_per_triple(trajectories: Iterable[Trajectory]) -> dict[Triple, Trajectory]:
    """The last trajectory (in the order given, i.e. store order) of each
    ``(env, task, sample)``, ignoring cancelled episodes (they did not finish)."""
    latest: dict[Triple, Trajectory] = {}
    for t in trajectories:
        if t.finish_reason == FinishReason.CANCELLED:
            continue
        latest[(t.env_id, t.task_id, t.sample)] = t
    return latest


#: An env's reward range, ``(low, high)``.
ScoreRange = tuple[float, float]


def scale_score(value: float, env: str, score_ranges: Mapping[str, ScoreRange]) -> float:
    """``value`` (a reward, mean or bound in ``env``'s units) as a fraction of the env's
    reward range in ``score_ranges``; envs not there count as 0..1 (unchanged)."""
    lo, hi = score_ranges.get(env, (0.0, 1.0))
    return (value - lo) / (hi - lo) if hi > lo else value


def summarize(
    env: str,
    trajectories: Sequence[Trajectory],
    *,
    seed: int = 0,
    score_ranges: Mapping[str, ScoreRange] | None = None,
    success_rule: str = "",
) -> EnvMetrics:
    """Metrics of ``trajectories`` (one per ``(env, task, sample)``); ``success_rule`` names
    the rule their ``success`` was judged by.

    With ``score_ranges`` each reward is first mapped to 0..1 by its env's range (the
    ``overall`` row, where sciworld's 0-100 meets everyone else's 0-1)."""
    n = len(trajectories)
    successes = sum(1 for t in trajectories if t.success)
    agentgym = sum(1 for t in trajectories if agentgym_success(float(t.reward)))
    if score_ranges is None:
        scores = [float(t.reward) for t in trajectories]
    else:
        scores = [scale_score(float(t.reward), t.env_id, score_ranges) for t in trajectories]
    by_task: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for t in trajectories:
        by_task[(t.env_id, t.task_id)].append(t.success)
    tasks = len(by_task)
    reasons = Counter(str(t.finish_reason) for t in trajectories)
    prompt = sum(turn.prompt_tokens or 0 for t in trajectories for turn in t.turns)
    completion = sum(turn.completion_tokens or 0 for t in trajectories for turn in t.turns)
    return EnvMetrics(
        env=env,
        episodes=n,
        tasks=tasks,
        samples=max((len(v) for v in by_task.values()), default=0),
        successes=successes,
        success_rate=successes / n if n else 0.0,
        success_ci=wilson_interval(successes, n),
        mean_score=sum(scores) / n if n else 0.0,
        score_ci=bootstrap_ci(scores, seed=seed),
        avg_at_n=sum(sum(v) / len(v) for v in by_task.values()) / tasks if tasks else 0.0,
        pass_at_n=sum(1 for v in by_task.values() if any(v)) / tasks if tasks else 0.0,
        mean_turns=sum(t.num_turns for t in trajectories) / n if n else 0.0,
        finish_reasons=dict(sorted(reasons.items())),
        prompt_tokens=prompt,
        completion_tokens=completion,
        wall_s=sum(t.wall_s for t in trajectories),
        success_rule=success_rule,
        agentgym_successes=agentgym,
        agentgym_success_rate=agentgym / n if n else 0.0,
    )


def compute_metrics(
    trajectories: Iterable[Trajectory],
    *,
    envs: Sequence[str] | None = None,
    seed: int = 0,
    score_ranges: Mapping[str, ScoreRange] | None = None,
    success_rules: Mapping[str, str] | None = None,
) -> EvalMetrics:
    """Per-env and overall metrics over the latest trajectory of each triple.

    ``success_rules`` (:func:`success_rules_for`) names each env's success rule in its row.

    ``envs`` fixes the order (and includes envs without episodes); default: sorted ids.
    Trajectories are sorted by ``(env, task, sample)`` first, so the result does not depend
    on the order episodes finished in. Per-env mean scores are in the env's own units; the
    overall mean score maps each reward to 0..1 by its env's range in ``score_ranges``
    (envs not named there count as 0..1).
    """
    latest = latest_per_triple(trajectories)
    rows = [latest[key] for key in sorted(latest)]
    names = list(envs) if envs is not None else sorted({t.env_id for t in rows})
    rules = success_rules or {}
    per_env = [
        summarize(
            name, [t for t in rows if t.env_id == name], seed=seed, success_rule=rules.get(name, "")
        )
        for name in names
    ]
    distinct = {rules.get(name, "") for name in names}
    overall_rule = distinct.pop() if len(distinct) == 1 else "per env"
    overall = summarize(
        "overall", rows, seed=seed, score_ranges=score_ranges or {}, success_rule=overall_rule
    )
    return EvalMetrics(envs=per_env, overall=overall)


def score_ranges_for(envs: Iterable[str], registry: Registry) -> dict[str, ScoreRange]:
    """The reward ranges of the envs the registry knows (others are left out: 0..1)."""
    ranges: dict[str, ScoreRange] = {}
    for env in envs:
        try:
            lo, hi = registry.get(env).spec.reward_range
        except (PluginError, KeyError):
            continue
        ranges[env] = (float(lo), float(hi))
    return ranges
