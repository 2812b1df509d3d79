"""Turn-level credit and discounted returns-to-go from per-turn rewards (schema 4).

An environment reports a reward per step (``Turn.reward``); the episode's reward
(``Trajectory.reward``) is the last step's. Environments differ in what a step's reward
means, so :func:`turn_credit` reads it one of three ways:

* ``"incremental"``: each step's reward is what that step earned (used as is);
* ``"cumulative"``: each step's reward is the score so far; a turn's credit is the change
  ``r_t - r_{t-1}`` (so the credits sum to the last score);
* ``"final"``: only the episode's reward counts, credited to the last turn.

``"auto"`` (the default) takes the first of these whose credits sum to the episode's
reward: so, with at least one turn, ``sum(turn_credit(t)) == t.reward`` always holds.

:func:`returns_to_go` discounts the credits: ``G_t = c_t + gamma * G_{t+1}``.
:func:`token_values` spreads per-turn values over the tokens of each turn's ``span``;
:func:`check_spans` checks that the spans tile the loss mask exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gymux.trajectory import Trajectory

__all__ = ["CREDIT_MODES", "check_spans", "returns_to_go", "token_values", "turn_credit"]

CREDIT_MODES = ("auto", "incremental", "cumulative", "final")


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def turn_credit(trajectory: Trajectory, mode: str = "auto") -> list[float]:
    """One credit per turn (see the module doc for ``mode``)."""
    if mode not in CREDIT_MODES:
        raise ValueError(f"unknown credit mode {mode!r} (one of {', '.join(CREDIT_MODES)})")
    rewards = [turn.reward for turn in trajectory.turns]
    if not rewards:
        return []
    incremental = list(rewards)
    cumulative = [r - (rewards[i - 1] if i else 0.0) for i, r in enumerate(rewards)]
    final = [0.0] * (len(rewards) - 1) + [trajectory.reward]
    if mode == "incremental":
        return incremental
    if mode == "cumulative":
        return cumulative
    if mode == "final":
        return final
    for credits in (incremental, cumulative):
        if _close(math.fsum(credits), trajectory.reward):
            return credits
    return final


def returns_to_go(trajectory: Trajectory, gamma: float = 1.0, mode: str = "auto") -> list[float]:
    """The discounted return from each turn on: ``G_t = c_t + gamma * G_{t+1}``."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    credits = turn_credit(trajectory, mode)
    out = [0.0] * len(credits)
    running = 0.0
    for t in range(len(credits) - 1, -1, -1):
        running = credits[t] + gamma * running
        out[t] = running
    return out


def check_spans(trajectory: Trajectory) -> None:
    """``ValueError`` unless the turns' spans are in order, disjoint, inside the tokens,
    and cover exactly the tokens whose loss mask is 1 (turns without a span are allowed
    only when no token is generated)."""
    tokens = trajectory.tokens
    if tokens is None:
        if any(turn.span is not None for turn in trajectory.turns):
            raise ValueError("spans without token data")
        return
    mask = tokens.loss_mask
    covered = bytearray(tokens.length)
    end_prev = 0
    for turn in trajectory.turns:
        if turn.span is None:
            continue
        start, end = turn.span
        if not end_prev <= start <= end <= tokens.length:
            raise ValueError(f"turn {turn.index}: span {turn.span} out of order or range")
        covered[start:end] = b"\x01" * (end - start)
        end_prev = end
    if bytes(covered) != bytes(1 if b else 0 for b in mask):
        raise ValueError("the turns' spans do not tile the loss mask")


def token_values(trajectory: Trajectory, per_turn: Sequence[float]) -> list[float]:
    """Per-token values: each turn's value on the tokens of its span, 0 elsewhere."""
    if len(per_turn) != len(trajectory.turns):
        raise ValueError(f"{len(per_turn)} values for {len(trajectory.turns)} turns")
    length = trajectory.tokens.length if trajectory.tokens is not None else 0
    out = [0.0] * length
    for turn, value in zip(trajectory.turns, per_turn, strict=True):
        if turn.span is not None:
            start, end = turn.span
            out[start:end] = [value] * (end - start)
    return out
