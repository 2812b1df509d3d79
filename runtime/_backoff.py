"""The one retry backoff: exponential, capped, with equal jitter.

Every retry loop in gymux (episode reruns, model-server calls, AgentGym calls) waits
:func:`backoff_delay` seconds before try ``attempt + 1``. "Equal jitter": the delay is drawn
uniformly from ``[cap / 2, cap]`` where ``cap = min(max_s, base_s * 2 ** (attempt - 1))``,
so it never collapses to zero (a herd of clients still spreads out) and never exceeds
``max_s``.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(
    attempt: int, base_s: float, max_s: float, *, rng: random.Random | None = None
) -> float:
    """Seconds to wait after the ``attempt``-th failure (``attempt >= 1``)."""
    exponent = min(max(attempt - 1, 0), 62)  # 2**62 * base is past any cap; avoids overflow
    cap = min(max_s, base_s * 2.0**exponent)
    draw = (rng or random).random()
    return cap * (0.5 + draw / 2)
