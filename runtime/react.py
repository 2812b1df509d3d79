"""The ReAct text grammar, in one place: how an answer's action is written and found.

An agent answers ``Thought: <reasoning>`` then ``Action: <action>`` (AgentGym's format).
:data:`ACTION_MARKER` finds the lines that open an action, in the forms models actually
write ("Action:", "**Action:**", "## action :", "> Action:"); :func:`format_react` writes
an answer. Env parsers (:func:`gymux.env_plugins.parsing.parse_react_action`), the
AgentGym server, the prompt formats, oracles and the HTML report all use these two.
"""

from __future__ import annotations

import re

__all__ = [
    "ACTION_MARKER",
    "JSON_FORMAT_HINT",
    "REACT_FORMAT_HINT",
    "format_react",
    "last_action_marker",
]

#: The ReAct format reminder, as it appears in parse-error messages and prompts.
REACT_FORMAT_HINT = 'Answer as "Thought: <reasoning>\\nAction: <action>".'
#: The function-call (JSON) format reminder, likewise.
JSON_FORMAT_HINT = 'Answer with one JSON object: {"thought": "<reasoning>", "action": "<action>"}.'

#: Start of a line that opens an action; ``match.end()`` is just past its colon.
ACTION_MARKER = re.compile(r"^[\s*_#>]*action[\s*_]*:", re.IGNORECASE | re.MULTILINE)


def format_react(thought: str, action: str) -> str:
    """An answer in AgentGym's ReAct layout."""
    return f"Thought:\n{thought}\n\nAction:\n{action}"


def last_action_marker(text: str) -> re.Match[str] | None:
    """The last action marker in ``text`` (the one that counts), or ``None``."""
    last = None
    for last in ACTION_MARKER.finditer(text):  # noqa: B007 - we want the final match
        pass
    return last
