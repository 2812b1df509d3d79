"""``gymux.env_plugins.parsing`` reads actions with the ReAct grammar's one owner
(:mod:`gymux.react`); these pin the readings that depend on how markers are found."""

from __future__ import annotations

import pytest

from gymux.env_plugins.parsing import parse_any_action, parse_react_action


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("Thought: t\nAction: move up", "move up"),
        ("Thought:\nt\n\nAction:\nmove up", "move up"),
        ("**Action:** `move up`", "move up"),
        ("## action :\n\n  move up\n", "move up"),
        ("Action: a\nThought: again\n> Action: b", "b"),
        # A marker on the line an earlier empty marker reads its action from is that action.
        ("Action:\nAction: go", "Action: go"),
    ],
)
def test_react_readings(text: str, action: str) -> None:
    assert parse_react_action(text) == action


def test_json_after_the_last_marker() -> None:
    assert parse_any_action('Thought: t\nAction: {"action": "move up"}') == "move up"
    assert parse_any_action('Action:\n```json\n{"action": "go"}\n```') == "go"
