"""The replies of an AgentGym server, decoded into msgspec Structs per dialect.

The families name the same things differently (the instance id is ``id``, ``env_idx`` or
``env_id``; the step's observation ``observation`` or ``state``; the reward ``reward`` or
``score``; the end ``done`` or ``terminated``/``truncated``), so each
:class:`~gymux.env_plugins.agentgym.dialects.Dialect` gets its own reply types
(:func:`reply_types`): fixed attribute names, renamed to the dialect's keys on the wire.
:func:`decode` turns a reply that does not fit into an :class:`AgentGymError` naming the
route, the field and the reply.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, TypeVar

import msgspec

from gymux.env_plugins.agentgym.dialects import GYMUX_ACTIONS_KEY, Dialect
from gymux.env_plugins.protocol import EnvError

__all__ = ["AgentGymError", "ObservationReply", "ReplyTypes", "decode", "reply_types"]

_T = TypeVar("_T")

#: A reward as servers send it: a number, a numeric string, or null (0).
_Reward = float | None | msgspec.UnsetType


class AgentGymError(EnvError):
    """The server refused a call (4xx, or an ``{"error": ...}`` body) or answered nonsense."""

    def __init__(self, message: str, *, status: int | None = None, route: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.route = route


class ObservationReply(msgspec.Struct):
    """``GET /observation`` as an object (else the reply is the text itself)."""

    observation: Any


class ReplyTypes(msgspec.Struct, frozen=True):
    """The reply type of each route of one dialect."""

    create: Any
    reset: Any
    step: Any


def _struct(
    name: str, fields: list[tuple[str, str, Any, Any]], namespace: dict[str, Any] | None = None
) -> Any:
    """A Struct with ``(attribute, wire key, type, default)`` fields (no default: required)."""
    spec: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (attr, kind) if default is ... else (attr, kind, default)
        for attr, _, kind, default in fields
    ]
    rename = {attr: key for attr, key, _, _ in fields}
    return msgspec.defstruct(name, spec, rename=rename, kw_only=True, namespace=namespace)


def _reset_struct(dialect: Dialect, actions: tuple[str, str, Any, Any]) -> Any:
    """The object reply of ``/reset``; its ``text()`` joins the non-empty observation parts."""
    attrs = [
        "observation" if key == "observation" else f"part{i}"
        for i, key in enumerate(dialect.reset_obs_keys)
    ]
    parts: list[tuple[str, str, Any, Any]] = [
        (a, k, Any, None) for a, k in zip(attrs, dialect.reset_obs_keys, strict=True)
    ]

    def text(self: Any) -> str:
        shown = [str(getattr(self, attr) or "") for attr in attrs]
        return "\n".join(part for part in shown if part)

    fields: list[tuple[str, str, Any, Any]] = [("observation", "observation", Any, ...)]
    fields += [p for p in parts if p[0] != "observation"]
    # The instance a reply names (textcraft, wordle): another than ours means sharing.
    fields.append(("instance", dialect.id_field, Any, None))
    return _struct("ResetReply", [*fields, actions], {"text": text})


def _build(dialect: Dialect) -> ReplyTypes:
    actions_key = dialect.actions_key or GYMUX_ACTIONS_KEY
    actions = ("actions", actions_key, list[Any] | None, None)
    if dialect.create_reply == "bare":
        create: Any = int
    else:
        create = _struct("CreateReply", [("id", dialect.id_field, int | str, ...)])
    if dialect.reset_reply == "text":
        reset: Any = Any
    elif dialect.reset_reply == "pair":
        reset = Annotated[list[Any], msgspec.Meta(min_length=1)]
    else:
        reset = _reset_struct(dialect, actions)
    step_fields: list[tuple[str, str, Any, Any]] = [
        ("observation", dialect.step_obs_key, Any, ...),
        ("reward", dialect.reward_key, _Reward, msgspec.UNSET),
        *[(f"done{i}", key, Any, None) for i, key in enumerate(dialect.done_keys)],
        ("info", "info", dict[str, Any] | None, None),
        actions,
    ]
    if dialect.reward_key != "reward":
        step_fields.append(("plain_reward", "reward", _Reward, msgspec.UNSET))
    return ReplyTypes(create=create, reset=reset, step=_struct("StepReply", step_fields))


@functools.cache
def _cached(encoded: bytes) -> ReplyTypes:
    return _build(msgspec.json.decode(encoded, type=Dialect))


def reply_types(dialect: Dialect) -> ReplyTypes:
    """The reply types of ``dialect`` (built once per distinct dialect)."""
    return _cached(msgspec.json.encode(dialect))


def decode(payload: Any, kind: type[_T] | Any, *, env: str, route: str) -> _T:
    """``payload`` (decoded JSON) as ``kind``; :class:`AgentGymError` if it does not fit."""
    try:
        value: _T = msgspec.convert(payload, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise AgentGymError(
            f"agentgym/{env}: {route} answered {str(payload)[:200]!r}: {exc}", route=route
        ) from None
    return value
