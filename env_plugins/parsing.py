"""Action parsers shared by environments.

A plugin declares one parser (``EnvPlugin(parse_action=...)``) that turns the model's raw
text into the action string its ``step`` receives. A parser raises
:class:`~gymux.env_plugins.protocol.ActionParseError` with a message written *for the model*:
the runtime shows ``"Invalid action: <message>"`` as the next observation, counts the turn in
``Trajectory.invalid_actions``, and the episode goes on.

The building blocks here:

* :func:`parse_react_action` -- AgentGym's ``Thought: ... Action: ...`` format (the default).
* :func:`parse_json_action` -- function-call style JSON: ``{"action": "move up"}`` or
  ``{"name": "move", "arguments": {"direction": "up"}}`` (see its docstring for the mapping).
* :func:`parse_any_action` -- ReAct first, then JSON; for envs that accept either.
* :func:`with_validation` -- wraps any of them to reject actions outside the env's vocabulary.

:data:`REACT_FORMAT_HINT` and :data:`JSON_FORMAT_HINT` are the one-line format reminders the
parsers end their messages with (``gymux.policies.prompting.format_reminder`` returns them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from typing import Any

from gymux.errors import ActionParseError
from gymux.react import ACTION_MARKER, JSON_FORMAT_HINT, REACT_FORMAT_HINT

__all__ = [
    "JSON_FORMAT_HINT",
    "REACT_FORMAT_HINT",
    "parse_any_action",
    "parse_json_action",
    "parse_react_action",
    "with_validation",
]


# What follows an action marker: emphasis and blank space (across lines), then the action's line.
_ACTION_TAIL = re.compile(r"[\s*_]*(.*)$", re.MULTILINE)


def _last_action(text: str) -> re.Match[str] | None:
    """The tail (group 1: the action's line) after the last :data:`ACTION_MARKER` that is
    not inside an earlier marker's tail, or ``None`` when there is no marker."""
    last = None
    pos = 0
    while (marker := ACTION_MARKER.search(text, pos)) is not None:
        last = _ACTION_TAIL.match(text, marker.end())
        assert last is not None  # ``(.*)$`` always matches
        pos = last.end()
    return last


def parse_react_action(text: str) -> str:
    """Extract the action from ReAct output ``Thought: ...\\nAction: ...``.

    The last ``Action:`` wins; the action is the rest of that line or, when that is empty,
    the next non-empty line (AgentGym writes ``Action:\\nmove up``). Surrounding backticks
    and quotes are stripped.
    """
    last = _last_action(text)
    if last is None:
        raise ActionParseError(f'no "Action:" found. {REACT_FORMAT_HINT}')
    action = last.group(1).strip()
    if not action:
        rest = text[last.end() :].strip()
        action = rest.splitlines()[0].strip() if rest else ""
    action = action.strip("`'\"*_ \t")
    if not action:
        raise ActionParseError('"Action:" is empty. Write the action after "Action:".')
    return action


# --------------------------------------------------------------------------------------
# Function-call (JSON) output
# --------------------------------------------------------------------------------------

# A fenced code block: ```json ... ``` (any or no language tag).
_FENCE_RE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
# Keys that make a JSON object an action (anything else is prose data and is skipped).
_ACTION_KEYS = ("action", "name", "function", "tool_calls")
_DECODER = json.JSONDecoder()


class _NoJsonAction(Exception):
    """Why no JSON action was found (the reason, without the format hint)."""


def _snippet(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _objects(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """Every top-level JSON object in ``text``, and the first decoding error met, if any."""
    found: list[dict[str, Any]] = []
    error: str | None = None
    i = text.find("{")
    while i != -1:
        try:
            value, end = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            if error is None:
                error = f"malformed JSON ({exc.msg}) in {_snippet(text[i:])}"
            i = text.find("{", i + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        i = text.find("{", end)
    return found, error


def _argument_text(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if value is None:
        return ""
    if isinstance(value, list) and not any(isinstance(v, dict | list) for v in value):
        return " ".join(t for t in (_argument_text(key, v) for v in value) if t)
    raise _NoJsonAction(
        f'argument "{key}" must be a string, number, boolean or list of those, '
        f"not {type(value).__name__}"
    )


def _call_action(call: dict[str, Any]) -> str:
    """``{"name": n, "arguments": {...}}`` -> ``"n v1 v2 ..."``."""
    name = call.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _NoJsonAction('the function call has no "name" (a non-empty string)')
    arguments = call.get("arguments", call.get("parameters"))
    if isinstance(arguments, str):  # OpenAI sends arguments as a JSON-encoded string
        if not arguments.strip():
            arguments = None
        else:
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise _NoJsonAction(
                    f'"arguments" is not valid JSON ({exc.msg}): {_snippet(arguments)}'
                ) from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise _NoJsonAction(f'"arguments" must be an object, not {type(arguments).__name__}')
    parts = [name.strip()] + [_argument_text(k, v) for k, v in arguments.items()]
    return " ".join(p for p in parts if p)


def _object_action(obj: dict[str, Any]) -> str:
    if "action" in obj:
        action = obj["action"]
        if isinstance(action, dict):  # {"thought": ..., "action": {"name": ..., ...}}
            return _object_action(action)
        if not isinstance(action, str):
            raise _NoJsonAction(f'"action" must be a string, not {type(action).__name__}')
        return action.strip()
    if "tool_calls" in obj:
        calls = obj["tool_calls"]
        if not isinstance(calls, list) or len(calls) != 1 or not isinstance(calls[0], dict):
            raise _NoJsonAction('"tool_calls" must hold exactly one call (one action per turn)')
        return _object_action(calls[0])
    function = obj.get("function")
    if isinstance(function, dict):  # {"type": "function", "function": {"name": ..., ...}}
        return _call_action(function)
    return _call_action(obj)


def _json_action(text: str) -> str:
    # Prefer fenced blocks that hold an object; otherwise look at the whole text.
    fenced = [m.group(1) for m in _FENCE_RE.finditer(text) if "{" in m.group(1)]
    objects: list[dict[str, Any]] = []
    error: str | None = None
    for source in fenced or [text]:
        found, err = _objects(source)
        objects += found
        error = error or err
    candidates = [o for o in objects if any(k in o for k in _ACTION_KEYS)]
    if not candidates:
        if error is not None:
            raise _NoJsonAction(error)
        if objects:
            raise _NoJsonAction('the JSON object has no "action" field (nor a function "name")')
        raise _NoJsonAction("no JSON object found")
    action = _object_action(candidates[-1])
    if not action:
        raise _NoJsonAction("the JSON action is empty")
    return action


def parse_json_action(text: str) -> str:
    """Extract the action from function-call style JSON output.

    The JSON object may stand alone, sit in a fenced code block (```` ```json ````), or follow
    some prose; when fenced blocks hold objects only those are read. Of several action
    objects, the last wins. The mapping to the env's action string:

    * ``{"action": "move up"}`` -> ``"move up"`` (verbatim, stripped; other keys such as
      ``"thought"`` are ignored). ``"action"`` may also hold a function call object.
    * ``{"name": "move", "arguments": {"direction": "up"}}`` -> ``"move up"``: the name, then
      the argument values in order, joined by single spaces. ``"arguments"`` may be an object
      or a JSON-encoded string (as OpenAI sends it); ``"parameters"`` is accepted as an alias.
      Numbers are written as in JSON (``3``, ``2.5``), booleans ``true``/``false``, lists
      space-joined, ``null`` values skipped; nested objects are rejected.
    * ``{"type": "function", "function": {...}}`` and ``{"tool_calls": [{...}]}`` (exactly
      one call) are unwrapped to the call inside.

    Raises :class:`ActionParseError` (ending with :data:`JSON_FORMAT_HINT`) when there is no
    JSON object, the JSON is malformed, or no ``action``/``name`` field is present.
    """
    try:
        return _json_action(text)
    except _NoJsonAction as exc:
        raise ActionParseError(f"{exc}. {JSON_FORMAT_HINT}") from None


def parse_any_action(text: str) -> str:
    """ReAct first, then JSON: for envs that accept either output format.

    If the text has an ``Action:`` line, it decides (and when what follows ``Action:`` is a
    JSON object or a fenced block, that JSON is decoded as in :func:`parse_json_action`).
    Otherwise the whole text is read as function-call JSON.
    """
    try:
        action = parse_react_action(text)
    except ActionParseError:
        try:
            return _json_action(text)
        except _NoJsonAction as exc:
            reason = "no JSON object found" if "{" not in text else f"no JSON action: {exc}"
            raise ActionParseError(
                f'no "Action:" found and {reason}. {REACT_FORMAT_HINT[:-1]}, '
                f"or {JSON_FORMAT_HINT[0].lower()}{JSON_FORMAT_HINT[1:]}"
            ) from None
    # "Action: {...}" or "Action:\n```json ...": decode the JSON after the last "Action:".
    last = _last_action(text)
    assert last is not None  # parse_react_action found one
    tail = text[last.start(1) :].lstrip(" \t*_\n")
    if tail.startswith(("{", "```")):
        try:
            return _json_action(tail)
        except _NoJsonAction:
            pass  # not JSON after all: the ReAct reading stands
    return action


# --------------------------------------------------------------------------------------
# Vocabulary checks
# --------------------------------------------------------------------------------------


def _normalise(action: str) -> str:
    return " ".join(action.split()).casefold()


def with_validation(
    parser: Callable[[str], str],
    valid: Callable[[str], bool] | Collection[str],
    hint: str | None = None,
) -> Callable[[str], str]:
    """Wrap ``parser`` so that actions outside the env's vocabulary are parse errors.

    ``valid`` is either the collection of valid actions or a predicate. With a collection,
    matching ignores case and runs of whitespace, and the action is returned in the
    collection's spelling (``"Move  Up"`` -> ``"move up"``). With a predicate, the action is
    returned unchanged when ``valid(action)`` is true.

    A rejected action raises :class:`ActionParseError` ``'"<action>" is not a valid action.
    <hint>'``; ``hint`` defaults to listing the collection's actions (nothing for a
    predicate). Errors of ``parser`` itself pass through unchanged.
    """
    if isinstance(valid, str):
        raise TypeError("valid must be a collection of actions or a predicate, not one string")
    check: Callable[[str], str | None]
    if callable(valid):
        predicate = valid
        default_hint = ""

        def check(action: str) -> str | None:
            return action if predicate(action) else None

    else:
        canonical = {_normalise(a): a for a in valid}
        if not canonical:
            raise ValueError("valid must name at least one action")
        shown = ", ".join(f'"{a}"' for a in list(canonical.values())[:20])
        more = f" and {len(canonical) - 20} more" if len(canonical) > 20 else ""
        default_hint = f"Valid actions are {shown}{more}."

        def check(action: str) -> str | None:
            return canonical.get(_normalise(action))

    message_hint = default_hint if hint is None else hint

    def parse(text: str) -> str:
        action = parser(text)
        accepted = check(action)
        if accepted is None:
            shown_action = action if len(action) <= 100 else action[:97] + "..."
            raise ActionParseError(
                f'"{shown_action}" is not a valid action. {message_hint}'.rstrip()
            )
        return accepted

    parse.__doc__ = f"{getattr(parser, '__name__', 'parser')} restricted to the env's actions."
    return parse
