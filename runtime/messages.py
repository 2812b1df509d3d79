"""The messages that cross between episodes, policies and stores.

A policy sees one :class:`PolicyRequest` per episode turn (the conversation so far as
:class:`Message` objects) and answers with a :class:`PolicyResponse`. These are core types:
the env framework, the policies and the stores all speak them, and none of them owns them.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["Message", "PolicyRequest", "PolicyResponse", "Role"]

Role = Literal["system", "user", "assistant"]


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One chat message. ``loss`` marks messages a trainer should learn from."""

    role: Role
    content: str
    loss: bool = False


class PolicyRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One turn's question to a policy."""

    episode_id: str
    env_id: str
    task_id: int
    turn: int
    messages: list[Message]
    #: Actions the env accepts now, when it can enumerate them.
    admissible_actions: list[str] | None = None
    #: Sample index within the task (``0 .. samples-1``); handy for seeding.
    sample: int = 0


class PolicyResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A policy's answer.

    ``finish_reason`` is ``"stop"`` for a normal answer, ``"length"`` when generation hit its
    token limit, and ``"context_limit"`` when the prompt no longer fits the model's context
    (the episode then ends with finish reason ``context_limit``).
    """

    text: str
    finish_reason: Literal["stop", "length", "context_limit"] = "stop"
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: The model weights' version that produced the answer, when the server reports one
    #: (SGLang's ``meta_info.weight_version``).
    weight_version: str | None = None
    #: Only when one answer was generated across a weight update (the policy kept the
    #: prefix and continued under the new weights): ``(offset into this answer's
    #: ``token_ids`` where that version starts, version)``, ascending by offset. The runtime
    #: moves the offsets into the episode's token record (``Turn.weight_versions``).
    weight_versions: list[tuple[int, str]] | None = None
