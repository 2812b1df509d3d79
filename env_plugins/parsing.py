"""Action parsers shared by environments."""

from __future__ import annotations

import re

from gymux.env_plugins.protocol import ActionParseError

__all__ = ["parse_react_action"]

_ACTION_RE = re.compile(r"^[\s*_#>]*action[\s*_]*:[\s*_]*(.*)$", re.IGNORECASE | re.MULTILINE)


def parse_react_action(text: str) -> str:
    """Extract the action from ReAct output ``Thought: ...\\nAction: ...``.

    The last ``Action:`` wins; the action is the rest of that line or, when that is empty,
    the next non-empty line (AgentGym writes ``Action:\\nmove up``). Surrounding backticks
    and quotes are stripped.
    """
    matches = list(_ACTION_RE.finditer(text))
    if not matches:
        raise ActionParseError(
            'no "Action:" found. Answer as "Thought: <reasoning>\\nAction: <action>".'
        )
    last = matches[-1]
    action = last.group(1).strip()
    if not action:
        rest = text[last.end() :].strip()
        action = rest.splitlines()[0].strip() if rest else ""
    action = action.strip("`'\"*_ \t")
    if not action:
        raise ActionParseError('"Action:" is empty. Write the action after "Action:".')
    return action
