"""Prompt formats and action parsers: ReAct, function-call JSON, vocabulary checks, end to end."""

from __future__ import annotations

import functools
import json
import re

import anyio
import pytest

from gymux.config import RuntimeConfig, Workload
from gymux.env_plugins.builtin.maze import env as maze
from gymux.env_plugins.builtin.maze.plugin import MAZE_SPEC
from gymux.env_plugins.conformance import check_plugin
from gymux.env_plugins.parsing import (
    JSON_FORMAT_HINT,
    REACT_FORMAT_HINT,
    parse_any_action,
    parse_json_action,
    parse_react_action,
    with_validation,
)
from gymux.env_plugins.protocol import ActionParseError, EnvPlugin
from gymux.env_plugins.registry import Registry
from gymux.messages import Message, PolicyRequest
from gymux.policies.base import react
from gymux.policies.prompting import (
    PromptFormat,
    format_instruction,
    format_reminder,
    function_call_example,
    react_example,
    render_messages,
)
from gymux.policies.scripted import ScriptedPolicy
from gymux.runtime import Runtime
from gymux.trajectory import FinishReason


def rejection(parse, text: str) -> str:
    """The message of the ActionParseError ``parse(text)`` raises."""
    with pytest.raises(ActionParseError) as info:
        parse(text)
    return str(info.value)


# --------------------------------------------------------------------------------------
# parse_json_action
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ('{"action": "move up"}', "move up"),
        ('{"thought": "the goal is above", "action": "  move up "}', "move up"),
        # fenced, with and without a language tag, with prose around
        ('Here is my move:\n```json\n{"action": "move left"}\n```\nGood luck!', "move left"),
        ('```\n{"action": "move left"}\n```', "move left"),
        # after some prose, on the same line
        ('I will go down now. {"action": "move down"} That is all.', "move down"),
        # OpenAI-style function call: name + argument values
        ('{"name": "move", "arguments": {"direction": "up"}}', "move up"),
        ('{"name": "move", "parameters": {"direction": "up"}}', "move up"),
        # arguments as a JSON-encoded string, as the OpenAI API sends them
        ('{"name": "move", "arguments": "{\\"direction\\": \\"right\\"}"}', "move right"),
        # nested wrappers
        ('{"type": "function", "function": {"name": "move", "arguments": {"d": "up"}}}', "move up"),
        (
            '{"tool_calls": [{"function": {"name": "guess", "arguments": {"w": "crane"}}}]}',
            "guess crane",
        ),
        ('{"thought": "t", "action": {"name": "move", "arguments": {"d": "down"}}}', "move down"),
        # several arguments in order; numbers, booleans, lists, nulls
        (
            '{"name": "put", "arguments": {"obj": "mug 1", "in": "cabinet 2", "n": 3}}',
            "put mug 1 cabinet 2 3",
        ),
        (
            '{"name": "f", "arguments": {"a": 2.5, "b": true, "c": null, "d": ["x", 1]}}',
            "f 2.5 true x 1",
        ),
        ('{"name": "look"}', "look"),
        ('{"name": "look", "arguments": ""}', "look"),
        # objects without action keys (prose data) are skipped; the last action object wins
        ('Position {"row": 1}. {"action": "move up"}', "move up"),
        ('{"action": "move up"}\n{"action": "move down"}', "move down"),
        # fenced blocks take precedence over objects in prose
        ('Not {"action": "this"}\n```json\n{"action": "that"}\n```', "that"),
        # prose with stray braces before the real object
        ('I am at {1, 2}. {"action": "move up"}', "move up"),
    ],
)
def test_parse_json_action_accepts(text, action):
    assert parse_json_action(text) == action


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("move up", "no JSON object found"),
        ("", "no JSON object found"),
        ('{"action": "move up"', "malformed JSON"),
        ("{'action': 'move up'}", "malformed JSON (Expecting property name enclosed in double"),
        ('```json\n{"action": "move up",}\n```', "malformed JSON"),
        ('{"thought": "I go up"}', 'has no "action" field'),
        ('{"action": 3}', '"action" must be a string, not int'),
        ('{"action": "   "}', "the JSON action is empty"),
        ('{"name": "", "arguments": {}}', 'no "name"'),
        ('{"name": "move", "arguments": ["up"]}', '"arguments" must be an object, not list'),
        ('{"name": "move", "arguments": "{direction: up}"}', '"arguments" is not valid JSON'),
        ('{"name": "move", "arguments": {"to": {"row": 1}}}', 'argument "to" must be a string'),
        ('{"tool_calls": []}', "exactly one call"),
        ('{"tool_calls": [{"name": "a"}, {"name": "b"}]}', "exactly one call"),
        # the outer object is broken; an inner one without action keys does not rescue it
        ('{"name": "move", "arguments": {"direction": "up"}', "malformed JSON"),
    ],
)
def test_parse_json_action_rejects_with_a_helpful_message(text, reason):
    message = rejection(parse_json_action, text)
    assert reason in message
    assert message.endswith(JSON_FORMAT_HINT)


def test_malformed_json_message_quotes_the_offending_text():
    with pytest.raises(ActionParseError, match=r"in '\{\"action\": \"move up\"'"):
        parse_json_action('{"action": "move up"')


# --------------------------------------------------------------------------------------
# parse_any_action
# --------------------------------------------------------------------------------------


def test_parse_any_action_prefers_react():
    text = 'I considered {"action": "move down"}.\nThought: up is better.\nAction: move up'
    assert parse_any_action(text) == "move up"
    assert parse_any_action(text) == parse_react_action(text)


def test_parse_any_action_falls_back_to_json():
    assert parse_any_action('{"name": "move", "arguments": {"d": "left"}}') == "move left"
    assert parse_any_action('Sure.\n```json\n{"action": "move up"}\n```') == "move up"


def test_parse_any_action_decodes_json_written_after_action():
    assert parse_any_action('Thought: t\nAction: {"name": "move", "arguments": ["x"]}') == (
        '{"name": "move", "arguments": ["x"]}'  # not a valid call: the ReAct reading stands
    )
    assert parse_any_action('Thought: t\nAction: {"name": "move", "arguments": {"d": "up"}}') == (
        "move up"
    )
    assert parse_any_action('Thought: t\nAction:\n```json\n{"action": "move down"}\n```') == (
        "move down"
    )
    # a plain ReAct action that merely mentions braces later is left alone
    assert parse_any_action('Action: move up\n{"action": "move down"}') == "move up"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I refuse to follow the format.", 'no "Action:" found and no JSON object found'),
        ('Thought: hmm {"action": 1}', 'no JSON action: "action" must be a string'),
        ("Thought: I am at {1, 2}", "no JSON action: malformed JSON"),
    ],
)
def test_parse_any_action_rejects_with_both_formats_in_the_hint(text, reason):
    message = rejection(parse_any_action, text)
    assert reason in message
    assert '"Thought: <reasoning>\\nAction: <action>"' in message
    assert '{"thought": "<reasoning>", "action": "<action>"}' in message


def test_parse_react_action_is_unchanged():
    assert parse_react_action("Thought:\nclose.\n\nAction:\nmove up") == "move up"
    assert parse_react_action("**Action:** `move left`") == "move left"
    assert parse_react_action("Action: a\nAction: b") == "b"
    with pytest.raises(
        ActionParseError, match=re.escape(f'no "Action:" found. {REACT_FORMAT_HINT}')
    ):
        parse_react_action("nothing here")
    with pytest.raises(ActionParseError, match='"Action:" is empty'):
        parse_react_action("Thought: x\nAction:")


# --------------------------------------------------------------------------------------
# with_validation
# --------------------------------------------------------------------------------------


def test_with_validation_accepts_and_canonicalises():
    parse = with_validation(parse_any_action, maze.ACTIONS)
    assert parse("Action: move up") == "move up"
    assert parse("Action: Move   Down") == "move down"
    assert parse('{"name": "move", "arguments": {"direction": "LEFT"}}') == "move left"


def test_with_validation_rejects_with_the_hint():
    parse = with_validation(parse_any_action, maze.ACTIONS, "Move up, down, left or right.")
    with pytest.raises(ActionParseError) as info:
        parse('{"name": "jump", "arguments": {"height": 3}}')
    assert str(info.value) == '"jump 3" is not a valid action. Move up, down, left or right.'


def test_with_validation_default_hint_lists_the_actions():
    parse = with_validation(parse_react_action, ["heads", "tails"])
    with pytest.raises(ActionParseError) as info:
        parse("Action: edge")
    assert str(info.value) == '"edge" is not a valid action. Valid actions are "heads", "tails".'
    many = with_validation(parse_react_action, [f"a{i}" for i in range(30)])
    with pytest.raises(ActionParseError, match=r'"a18", "a19" and 10 more\.$'):
        many("Action: b")


def test_with_validation_predicate():
    parse = with_validation(parse_react_action, lambda a: a.startswith("go "), "Say go <place>.")
    assert parse("Action: go home") == "go home"
    with pytest.raises(
        ActionParseError, match=r'^"stay" is not a valid action\. Say go <place>\.$'
    ):
        parse("Action: stay")
    bare = with_validation(parse_react_action, str.isdigit)
    with pytest.raises(ActionParseError, match=r'^"x" is not a valid action\.$'):
        bare("Action: x")


def test_with_validation_passes_parser_errors_through():
    parse = with_validation(parse_react_action, maze.ACTIONS)
    with pytest.raises(ActionParseError, match='no "Action:" found'):
        parse("garbage")


def test_with_validation_rejects_bad_vocabularies():
    with pytest.raises(TypeError):
        with_validation(parse_react_action, "move up")
    with pytest.raises(ValueError):
        with_validation(parse_react_action, [])


# --------------------------------------------------------------------------------------
# Prompting
# --------------------------------------------------------------------------------------

CONVERSATION = [
    Message(role="user", content="You are in a maze. Answer as Thought/Action."),
    Message(role="assistant", content="OK"),
    Message(role="user", content="You are at (1, 1)."),
    Message(role="assistant", content="Thought: x\nAction: move up", loss=True),
    Message(role="user", content="You moved up."),
]


def test_render_messages_react_is_the_conversation():
    assert render_messages(CONVERSATION) == [
        {"role": m.role, "content": m.content} for m in CONVERSATION
    ]
    assert render_messages(CONVERSATION, "react", system_prompt="Be brief.") == [
        {"role": "system", "content": "Be brief."},
        *({"role": m.role, "content": m.content} for m in CONVERSATION),
    ]


def test_render_messages_function_call_appends_the_json_instruction_once():
    rendered = render_messages(CONVERSATION, PromptFormat.FUNCTION_CALL, system_prompt="S")
    instruction = format_instruction(PromptFormat.FUNCTION_CALL)
    assert instruction is not None and '"action"' in instruction
    assert rendered[0] == {"role": "system", "content": "S"}
    assert rendered[1] == {"role": "user", "content": f"{CONVERSATION[0].content}\n\n{instruction}"}
    assert [m["content"] for m in rendered[2:]] == [m.content for m in CONVERSATION[1:]]
    assert sum(instruction in m["content"] for m in rendered) == 1
    assert CONVERSATION[0].content.endswith("Thought/Action.")  # input not modified
    assert all(set(m) == {"role", "content"} for m in rendered)


def test_render_messages_function_call_without_user_message():
    assert render_messages([], "function_call") == [
        {"role": "user", "content": format_instruction("function_call")}
    ]


def test_format_helpers():
    assert PromptFormat("react") is PromptFormat.REACT
    assert format_instruction("react") is None
    assert format_reminder() == REACT_FORMAT_HINT
    assert format_reminder("function_call") == JSON_FORMAT_HINT
    with pytest.raises(ValueError):
        format_reminder("xml")
    # the examples round-trip through their parsers
    assert react_example("close", "move up") == react("close", "move up")
    assert parse_react_action(react_example("close", "move up")) == "move up"
    example = function_call_example('say "hi"', "move up")
    assert json.loads(example) == {"thought": 'say "hi"', "action": "move up"}
    assert parse_json_action(example) == "move up"
    # the example embedded in the instruction is itself parseable JSON
    instruction = format_instruction("function_call")
    assert instruction is not None
    assert parse_json_action(instruction) == "<one action, written as shown above>"


# --------------------------------------------------------------------------------------
# End to end: maze with a JSON-or-ReAct parser, under the runtime
# --------------------------------------------------------------------------------------

_POSITION = re.compile(r"Your current position is at position \((\d+), (\d+)\)")
_STEPS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}

MAZE_ANY = EnvPlugin(
    MAZE_SPEC,
    maze.MazeEnv,
    parse_action=with_validation(
        parse_any_action, maze.ACTIONS, 'Valid actions are "move up", "move down", ...'
    ),
    oracle=maze.MazeOracle,
)


def best_move(request: PolicyRequest) -> str:
    """The shortest-path direction from the position in the latest observation."""
    layout = maze.maze_task(request.task_id).layout
    row, col = map(int, _POSITION.findall(request.messages[-1].content)[-1])
    distance = layout.distances[(row, col)]
    for name, (dr, dc) in _STEPS.items():
        if distance == 0 and (row + dr, col + dc) not in layout.distances:
            return name  # started on the goal (AgentGym's game 25): bump a wall to stay on it
        if layout.distances.get((row + dr, col + dc)) == distance - 1:
            return name
    raise AssertionError("no move gets closer")


def json_reply(request: PolicyRequest) -> str:
    """A 'model' that reads the rendered function-call prompt and answers in JSON."""
    rendered = render_messages(request.messages, PromptFormat.FUNCTION_CALL)
    assert rendered[0]["content"].endswith(format_instruction("function_call") or "")
    direction = best_move(request)
    forms = [
        json.dumps({"name": "move", "arguments": json.dumps({"direction": direction})}),
        function_call_example("closer to the goal", f"move {direction}"),
        f"Calling the tool:\n```json\n"
        f'{{"type": "function", "function": {{"name": "move", '
        f'"arguments": {{"direction": "{direction.upper()}"}}}}}}\n```',
    ]
    return forms[request.turn % len(forms)]


def garbage_reply(request: PolicyRequest) -> str:
    return ["I refuse to follow the format.", '{"name": "jump", "arguments": {"height": 3}}'][
        request.turn % 2
    ]


async def run_maze(policy, **workload):
    reg = Registry(entry_points_group=None)
    reg.register(MAZE_ANY)
    async with Runtime(RuntimeConfig(), registry=reg) as rt:
        return await rt.run(Workload(env="maze", **workload), policy=policy)


def test_plugin_with_json_parser_passes_conformance():
    report = anyio.run(check_plugin, MAZE_ANY)
    assert report.ok, report.problems


def test_function_call_answers_solve_every_test_maze():
    result = anyio.run(run_maze, ScriptedPolicy(json_reply, name="json"))
    trajectories = result.trajectories
    assert len(trajectories) == len(maze.TEST_IDS)
    assert result.summary.success_rate == 1.0
    for traj in trajectories:
        assert traj.finish_reason is FinishReason.DONE
        assert traj.invalid_actions == 0
        # A game that starts on the goal (AgentGym's 25) still takes one move to win.
        assert len(traj.turns) == max(1, maze.maze_task(traj.task_id).shortest_path)
        assert all(t.action in maze.ACTIONS and t.parse_error is None for t in traj.turns)
        assert traj.turns[0].raw_output.startswith('{"name": "move"')


def test_garbage_answers_become_counted_corrective_observations():
    result = anyio.run(
        functools.partial(run_maze, ScriptedPolicy(garbage_reply), tasks=[0, 1], max_turns=4)
    )
    for traj in result.trajectories:
        assert traj.finish_reason is FinishReason.MAX_TURNS
        assert traj.invalid_actions == 4 == len(traj.turns)
        assert all(t.action is None for t in traj.turns)
        first, second = traj.turns[0], traj.turns[1]
        assert 'no "Action:" found and no JSON object found' in first.parse_error
        assert second.parse_error == '"jump 3" is not a valid action. Valid actions are ' + (
            '"move up", "move down", ...'
        )
        # the parser's message is the next user message, and the next turn's observation
        assert second.observation == f"Invalid action: {first.parse_error}"
        assert traj.messages[-1] == Message(
            role="user", content=f"Invalid action: {traj.turns[-1].parse_error}"
        )
    assert result.summary.success_rate == 0.0
