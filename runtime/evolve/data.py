"""From stored trajectories to training examples: AgentEvol's filter and the token view.

Two kinds of trajectory feed the learn step:

* those that carry token data (``Trajectory.tokens``, written by a token-exact policy such as
  ``hf``): their ids and loss mask are used as stored, so what is trained is exactly what
  was generated;
* text-only ones (the oracle's expert data): the conversation is replayed through the same
  :class:`~gymux.policies.tokens.TokenLedger` the token-exact policies use (the chat template
  applied once, each agent message encoded and closed with EOS, each observation appended as
  its own user turn), so the training sequence has the layout the model sees when it acts;
  the loss mask is 1 exactly on the agent's tokens.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from gymux.eval.metrics import ScoreRange, latest_per_triple, scale_score
from gymux.evolve.config import EnvEntry
from gymux.policies.tokens import ChatTokenizer, TokenLedger
from gymux.trajectory import FinishReason, Trajectory

__all__ = ["Example", "examples_from", "keep", "kept_trajectories"]

#: Episodes whose reward says nothing about the agent: the env or the model server failed.
_UNSCORED = frozenset({FinishReason.ENV_ERROR, FinishReason.POLICY_ERROR, FinishReason.CANCELLED})


class Example(msgspec.Struct, frozen=True, kw_only=True):
    """One training sequence: token ids and a loss mask (1 on tokens to learn)."""

    ids: list[int]
    mask: list[int]
    source: str = ""


def keep(trajectory: Trajectory, env: EnvEntry, score_ranges: Mapping[str, ScoreRange]) -> bool:
    """AgentEvol's filter: a scored episode whose 0-1 scaled reward exceeds the env's
    threshold."""
    if trajectory.finish_reason in _UNSCORED:
        return False
    scaled = scale_score(trajectory.reward, trajectory.env_id, score_ranges)
    return scaled > env.keep_threshold()


def kept_trajectories(
    trajectories: Iterable[Trajectory],
    envs: Sequence[EnvEntry],
    score_ranges: Mapping[str, ScoreRange],
) -> list[Trajectory]:
    """The latest episode of each (env, task, sample) that passes :func:`keep`."""
    by_id = {env.id: env for env in envs}
    latest = latest_per_triple(trajectories)
    return [
        t
        for _, t in sorted(latest.items())
        if t.env_id in by_id and keep(t, by_id[t.env_id], score_ranges)
    ]


def _replayed(trajectory: Trajectory, tokenizer: ChatTokenizer) -> tuple[list[int], list[int]]:
    ledger = TokenLedger(tokenizer)
    closing = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    messages = trajectory.messages
    for index, message in enumerate(messages):
        if message.role != "assistant" or not message.loss:
            continue
        ledger.advance(messages[:index])
        ledger.append_generated(tokenizer.encode(message.content) + closing, None)
    return ledger.ids, ledger.loss_mask  # copies


def _stored(trajectory: Trajectory) -> tuple[list[int], list[int]]:
    assert trajectory.tokens is not None
    ids, mask = array("i"), array("B")
    ids.frombytes(trajectory.tokens.ids)
    mask.frombytes(trajectory.tokens.loss_mask)
    return ids.tolist(), mask.tolist()


def examples_from(
    trajectories: Iterable[Trajectory], tokenizer: ChatTokenizer, *, max_length: int
) -> list[Example]:
    """Training sequences (cut to ``max_length`` tokens, start kept); sequences with no
    token to learn are left out."""
    out: list[Example] = []
    for trajectory in trajectories:
        if trajectory.tokens is not None:  # every checkpoint shares the base's tokenizer
            ids, mask = _stored(trajectory)
        else:
            ids, mask = _replayed(trajectory, tokenizer)
        ids, mask = ids[:max_length], mask[:max_length]
        if any(mask):
            out.append(Example(ids=ids, mask=mask, source=trajectory.episode_id))
    return out
