"""Prompt formats: the chat messages a text model gets, and the answer format it is asked for.

gymux follows AgentGym's conventions. An episode's conversation (built by the runtime) is the
env's instruction as the first user turn, ``"OK"`` from the assistant, the first observation,
then alternating model outputs and observations. The env's instruction asks for ReAct
answers::

    Thought:
    <reasoning>

    Action:
    <action>

:attr:`PromptFormat.REACT` (the default) sends that conversation as it is.
:attr:`PromptFormat.FUNCTION_CALL` asks instead for one JSON object per turn, for models tuned
for tool calling: :func:`render_messages` appends :func:`format_instruction` to the first user
message (the env's instruction, which it overrides; a user message rather than a system one so
that chat templates without a system role work too). Pair it with an env whose parser accepts
JSON (:func:`gymux.env_plugins.parsing.parse_json_action` or ``parse_any_action``).

These helpers are pure functions over :class:`~gymux.policies.protocol.Message` lists; the
model-server policies call them to build requests for OpenAI-compatible chat APIs.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence

from gymux.messages import Message
from gymux.react import JSON_FORMAT_HINT, REACT_FORMAT_HINT, format_react

__all__ = [
    "PromptFormat",
    "format_instruction",
    "format_reminder",
    "function_call_example",
    "react_example",
    "render_messages",
]


class PromptFormat(enum.StrEnum):
    """The answer format a model is asked for (usable as a msgspec/TOML config value)."""

    #: AgentGym's ``Thought: ... Action: ...`` (the env's own instruction asks for it).
    REACT = "react"
    #: One JSON object, ``{"thought": "...", "action": "..."}``.
    FUNCTION_CALL = "function_call"


def react_example(thought: str, action: str) -> str:
    """An answer in ReAct format, exactly as :func:`gymux.react.format_react` writes it.

    ``parse_react_action(react_example(t, a)) == a``.
    """
    return format_react(thought, action)


def function_call_example(thought: str, action: str) -> str:
    """An answer in function-call format: ``{"thought": ..., "action": ...}`` on one line.

    ``parse_json_action(function_call_example(t, a)) == a``.
    """
    return json.dumps({"thought": thought, "action": action}, ensure_ascii=False)


def format_reminder(format: PromptFormat | str = PromptFormat.REACT) -> str:
    """The one-line format hint that parse-error observations end with."""
    return REACT_FORMAT_HINT if PromptFormat(format) is PromptFormat.REACT else JSON_FORMAT_HINT


def format_instruction(format: PromptFormat | str = PromptFormat.REACT) -> str | None:
    """The text :func:`render_messages` appends to the env's instruction, if any.

    ``None`` for ReAct: the env's instruction already asks for it.
    """
    if PromptFormat(format) is PromptFormat.REACT:
        return None
    example = function_call_example("<your reasoning>", "<one action, written as shown above>")
    return (
        "Answer format: instead of the Thought/Action format above, reply to every "
        "observation with exactly one JSON object and nothing else:\n"
        f"{example}\n"
        'Use double quotes, write the action exactly as it would appear after "Action:", '
        "and give one action per reply."
    )


def render_messages(
    messages: Sequence[Message],
    format: PromptFormat | str = PromptFormat.REACT,
    *,
    system_prompt: str | None = None,
) -> list[dict[str, str]]:
    """The ``[{"role": ..., "content": ...}]`` list for an OpenAI-compatible chat API.

    ``system_prompt``, when given, comes first as a ``system`` message. For
    :attr:`PromptFormat.FUNCTION_CALL` the :func:`format_instruction` is appended to the first
    user message (or sent as a user message of its own when there is none). ``Message.loss``
    is dropped; the input is not modified.
    """
    extra = format_instruction(format)
    rendered: list[dict[str, str]] = []
    if system_prompt is not None:
        rendered.append({"role": "system", "content": system_prompt})
    for message in messages:
        content = message.content
        if extra is not None and message.role == "user":
            content = f"{content}\n\n{extra}"
            extra = None
        rendered.append({"role": message.role, "content": content})
    if extra is not None:
        rendered.append({"role": "user", "content": extra})
    return rendered
