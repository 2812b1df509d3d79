"""Tests for the Wordle environment plugin (gymux.env_plugins.builtin.wordle.env)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import anyio
import pytest

from gymux.env_plugins import ActionParseError, EnvError, Execution, SyncEnv, Task
from gymux.env_plugins.builtin.wordle.env import (
    MAX_GUESSES,
    OPENING_GUESS,
    WordleEnv,
    WordleOracle,
    format_feedback,
    parse_wordle_action,
    target_words,
    word_list,
    wordle_feedback,
)
from gymux.env_plugins.builtin.wordle.plugin import WORDLE_SPEC, plugin
from gymux.policies import Message, PolicyError, PolicyRequest
from gymux.policies.oracle import OraclePolicy

from doubles import envs as E
from doubles.trajectories import opening

FEEDBACK_RE = re.compile(r"^Feedback: ", re.MULTILINE)
COLOUR_RE = re.compile(r"\((?:green|yellow|gray)\)")

# --------------------------------------------------------------------------- feedback


@pytest.mark.parametrize(
    ("guess", "secret", "expected"),
    [
        ("crane", "crane", "ggggg"),
        ("crane", "bulky", "bbbbb"),
        ("crane", "hunts", "bbbyb"),
        ("crane", "lager", "byyby"),
        # both b's of the guess find a b in the secret: one green, one yellow
        ("babes", "abbey", "yyggb"),
        # the secret has two l's: both guessed l's are yellow, the o is gray
        ("hello", "llama", "bbyyb"),
        ("llama", "hello", "yybbb"),
        # the green e uses up the only e: the earlier e's are gray
        ("eerie", "crane", "bbybg"),
        # one a in the secret besides the green one: one yellow, the rest gray
        ("xaaax", "aabbb", "bgybb"),
        ("aaaaa", "abcde", "gbbbb"),
        # yellows are assigned left to right
        ("ooxxx", "yyyyo", "ybbbb"),
        ("speed", "abide", "bbyby"),
        ("speed", "erase", "ybyyb"),
    ],
)
def test_feedback(guess: str, secret: str, expected: str) -> None:
    assert wordle_feedback(guess, secret) == expected


def test_feedback_length_mismatch() -> None:
    with pytest.raises(ValueError, match="length"):
        wordle_feedback("abc", "abcd")


def test_format_feedback_and_instruction_example() -> None:
    text = format_feedback("crane", wordle_feedback("crane", "lager"))
    assert text == "c(gray) r(yellow) a(yellow) n(gray) e(yellow)"
    assert text in WORDLE_SPEC.instruction
    # the instruction's example must not look like real feedback to the oracle
    assert not FEEDBACK_RE.search(WORDLE_SPEC.instruction)


# --------------------------------------------------------------------------- tasks


def test_word_list() -> None:
    words = word_list()
    assert len(words) == 3568
    assert list(words) == sorted(set(words))
    assert all(re.fullmatch(r"[a-z]{5}", w) for w in words)


def test_task_order_is_pinned() -> None:
    words = target_words()
    assert words[0] == "hunts"
    assert words[99] == "hello"
    assert words[100] == "bowed"
    assert words[3567] == "peace"
    recomputed = sorted(
        word_list(), key=lambda w: hashlib.sha256(f"gymux-wordle-v1:{w}".encode()).hexdigest()
    )
    assert list(words) == recomputed


def test_spec_and_plugin() -> None:
    spec = WORDLE_SPEC
    assert (spec.id, spec.version) == ("wordle", "1")
    assert spec.split("test").ids == list(range(100))
    assert spec.split("train").ids == list(range(100, 3568))
    assert spec.max_turns == 8
    assert spec.reward_range == (0.0, 1.0)
    assert spec.success.threshold == 1.0
    assert spec.success.is_success(1.0) and not spec.success.is_success(0.0)
    assert "Action:\nguess crane" in spec.instruction
    for action in spec.example_actions:
        assert parse_wordle_action(f"Action: {action}") in word_list()
    assert plugin.spec is spec
    assert plugin.execution is Execution.THREAD
    assert plugin.parse_action is parse_wordle_action
    assert plugin.max_instances == 256
    assert plugin.oracle is not None and isinstance(plugin.oracle(), WordleOracle)
    assert isinstance(plugin.factory(), SyncEnv)


def test_entry_point() -> None:
    assert E.load_entry_point("wordle") is plugin


# --------------------------------------------------------------------------- the env


def test_reset_and_valid_guess() -> None:
    env = WordleEnv()
    obs = env.reset(Task(id=0, split="test"))  # "hunts"
    assert "You have 6 guesses left." in obs.text
    result = env.step("crane")
    assert result.observation.text == (
        "Feedback: c(gray) r(gray) a(gray) n(yellow) e(gray). You have 5 guesses left."
    )
    assert (result.reward, result.done) == (0.0, False)
    assert result.info == {"guesses_left": 5, "feedback": "bbbyb", "valid": True}
    # the env also copes with an un-normalised action
    result = env.step("  Guess [SHUNT] ")
    assert result.info["feedback"] == "yyyyy"
    assert result.info["guesses_left"] == 4


def test_win() -> None:
    env = WordleEnv()
    env.reset(Task(id=0))
    result = env.step("hunts")
    assert (result.reward, result.done) == (1.0, True)
    assert result.info == {"guesses_left": 5, "feedback": "ggggg", "valid": True}
    assert "h(green) u(green) n(green) t(green) s(green)" in result.observation.text
    with pytest.raises(EnvError, match="reset"):
        env.step("crane")


def test_invalid_guesses_do_not_count() -> None:
    env = WordleEnv()
    env.reset(Task(id=0))
    for bad in ["xyzzq", "abc", "cranes", "12345", "guess two words"]:
        result = env.step(bad)
        assert (result.reward, result.done) == (0.0, False)
        assert result.info == {"guesses_left": 6, "valid": False}
        assert "the guess does not count" in result.observation.text
        assert "6 guesses left" in result.observation.text
    result = env.step("xyzzq")
    assert result.observation.text.startswith(
        "'xyzzq' is not a valid 5-letter word in the word list; the guess does not count."
    )
    # all six real guesses are still available
    for i, guess in enumerate(["crane", "slate", "pound", "lymph", "shunt"], start=1):
        result = env.step(guess)
        assert result.info["guesses_left"] == MAX_GUESSES - i
        assert not result.done
    assert env.step("hunts").reward == 1.0


def test_losing_reveals_the_word() -> None:
    env = WordleEnv()
    env.reset(Task(id=0))
    guesses = ["crane", "slate", "pound", "lymph", "shunt", "bulky"]
    for guess in guesses[:-1]:
        assert not env.step(guess).done
    result = env.step(guesses[-1])
    assert (result.reward, result.done) == (0.0, True)
    assert result.info["guesses_left"] == 0
    assert "no guesses left" in result.observation.text
    assert '"hunts"' in result.observation.text
    with pytest.raises(EnvError):
        env.step("hunts")


def test_instance_reuse() -> None:
    env = WordleEnv()
    env.reset(Task(id=0))
    for guess in ["crane", "slate", "pound", "lymph", "shunt", "bulky"]:
        env.step(guess)
    env.reset(Task(id=1))  # "troop"
    result = env.step("hunts")
    assert result.info == {"guesses_left": 5, "feedback": "bbbyb", "valid": True}
    # reset in the middle of a game starts afresh
    env.reset(Task(id=99))  # "hello"
    result = env.step("hello")
    assert (result.reward, result.done, result.info["guesses_left"]) == (1.0, True, 5)
    env.reset(Task(id=0))
    assert env.step("hunts").reward == 1.0


def test_env_errors() -> None:
    env = WordleEnv()
    with pytest.raises(EnvError, match="before reset"):
        env.step("crane")
    for bad_id in (-1, 3568, 10**9):
        with pytest.raises(EnvError, match=r"0\.\.3567"):
            env.reset(Task(id=bad_id))
    env.reset(Task(id=5))
    env.close()
    with pytest.raises(EnvError, match="closed"):
        env.step("crane")
    with pytest.raises(EnvError, match="closed"):
        env.reset(Task(id=0))


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thought:\nstart wide\n\nAction:\nguess crane", "crane"),
        ("Action: crane", "crane"),
        ("Action: [CRANE]", "crane"),
        ("Action: guess [crane]", "crane"),
        ("Action: Guess: Slate", "slate"),
        ("Action: `guess crane`", "crane"),
        ('Action: "crane".', "crane"),
        ("Thought: a\nAction: guess slate\nThought: no\nAction: guess crane", "crane"),
        # a well-formed non-word is not a parse error: the env reports it
        ("Action: guess xyzzq", "xyzzq"),
    ],
)
def test_parse_accepts(text: str, expected: str) -> None:
    assert parse_wordle_action(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("guess crane", "Action"),
        ("Action: guess cranes", "exactly 5 letters"),
        ("Action: abc", "exactly 5 letters"),
        ("Action: guess cr4ne", "a-z"),
        ("Action: guess two words", "could not read a guess"),
        ("Action: guess créme", "a-z"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ActionParseError, match=message):
        parse_wordle_action(text)


# --------------------------------------------------------------------------- the oracle


def request(messages: list[Message], task_id: int = 0, turn: int = 0) -> PolicyRequest:
    return PolicyRequest(
        episode_id=f"ep-{task_id}", env_id="wordle", task_id=task_id, turn=turn, messages=messages
    )


async def play_with_oracle(oracle: OraclePolicy, task_id: int) -> list[str]:
    """Drive one episode as the runtime does; return the (valid) guesses made."""
    env = plugin.factory()
    assert isinstance(env, WordleEnv)
    secret = target_words()[task_id]
    obs = env.reset(Task(id=task_id, split="test"))
    messages = opening(WORDLE_SPEC.instruction, obs.text)
    guesses: list[str] = []
    for turn in range(WORDLE_SPEC.max_turns):
        # the oracle only sees the conversation: the secret is in none of the observations
        for message in [m for m in messages[2:] if m.role == "user"]:
            text = COLOUR_RE.sub("", message.content)  # "r(green)" -> "r", for secret "green"
            assert not re.search(rf"\b{secret}\b", text), (task_id, message)
        response = await oracle.act(request(list(messages), task_id, turn))
        # ... and its answer does not depend on the task id (which would reveal the secret)
        other = await oracle.act(request(list(messages), task_id=(task_id + 1) % 3568))
        assert other.text == response.text
        action = plugin.parse_action(response.text)
        result = env.step(action)
        assert result.info["valid"] is True, (task_id, action)
        guesses.append(action)
        messages.append(Message(role="assistant", content=response.text))
        messages.append(Message(role="user", content=result.observation.text))
        if result.done:
            assert result.reward == 1.0, (task_id, secret, guesses)
            return guesses
    raise AssertionError(f"task {task_id} ({secret}) not solved: {guesses}")


@pytest.mark.anyio
async def test_oracle_solves_every_test_task() -> None:
    oracle = OraclePolicy(WordleOracle())
    assert (oracle.name, oracle.version) == ("oracle", "wordle-solver-1")
    counts: list[int] = []
    for task_id in WORDLE_SPEC.split("test").ids:
        guesses = await play_with_oracle(oracle, task_id)
        assert guesses[0] == OPENING_GUESS
        assert guesses[-1] == target_words()[task_id]
        assert len(guesses) <= MAX_GUESSES
        counts.append(len(guesses))
    assert len(counts) == 100
    assert sum(counts) / len(counts) < 4.0


@pytest.mark.anyio
async def test_oracle_shared_across_concurrent_episodes() -> None:
    oracle = OraclePolicy(WordleOracle())
    ids = [3, 17, 42, 99, 100, 555, 1234, 2718, 3141, 3567]
    results = await E.play_concurrently(lambda task_id: play_with_oracle(oracle, task_id), ids)
    for task_id in ids:
        assert results[task_id][-1] == target_words()[task_id]
        assert len(results[task_id]) <= MAX_GUESSES
    # deterministic: a second, sequential run makes the same guesses
    for task_id in ids[:3]:
        assert await play_with_oracle(OraclePolicy(WordleOracle()), task_id) == results[task_id]


@pytest.mark.anyio
async def test_oracle_reads_only_feedback_lines() -> None:
    oracle = OraclePolicy(WordleOracle())
    base = opening(WORDLE_SPEC.instruction, "A new game has started. You have 6 guesses left.")
    first = await oracle.act(request(base))
    assert parse_wordle_action(first.text) == OPENING_GUESS
    # feedback in an assistant message is ignored; a rejected word adds no constraint
    noise = [
        Message(role="assistant", content="Feedback: " + format_feedback("hunts", "ggggg") + "."),
        Message(role="user", content="'xyzzq' is not a valid 5-letter word in the word list."),
    ]
    assert (await oracle.act(request(base + noise))).text == first.text
    # a single remaining candidate is guessed
    feedback = "Feedback: " + format_feedback("shunt", wordle_feedback("shunt", "hunts")) + "."
    solo = [*base, Message(role="user", content=f"{feedback} You have 5 guesses left.")]
    assert [w for w in word_list() if wordle_feedback("shunt", w) == "yyyyy"] == ["hunts"]
    assert parse_wordle_action((await oracle.act(request(solo))).text) == "hunts"


@pytest.mark.anyio
async def test_oracle_inconsistent_feedback() -> None:
    oracle = OraclePolicy(WordleOracle())
    messages = opening(
        WORDLE_SPEC.instruction,
        "Feedback: " + format_feedback("crane", "bbbbb") + ".",
        "Action: guess crane",
        "Feedback: " + format_feedback("crane", "ggggg") + ".",
    )
    with pytest.raises(PolicyError, match="consistent"):
        await oracle.act(request(messages))


@pytest.mark.anyio
async def test_oracle_runs_heavy_choices_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from gymux.env_plugins.builtin.wordle import oracle as wordle

    calls: list[int] = []
    real_run_sync = anyio.to_thread.run_sync

    async def spy(func: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[0]) if args and isinstance(args[0], tuple) else -1)
        return await real_run_sync(func, *args, **kwargs)

    monkeypatch.setattr(wordle, "_CHOICE_CACHE", {})
    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)
    feedback = "Feedback: " + format_feedback("tries", "bbbgg") + ". You have 5 guesses left."
    messages = opening(
        WORDLE_SPEC.instruction,
        "A new game has started. You have 6 guesses left.",
        "Action: guess tries",
        feedback,
    )
    response = await OraclePolicy(WordleOracle()).act(request(messages))
    assert parse_wordle_action(response.text) in word_list()
    # the choice among the (136) candidates ran in a worker thread
    assert calls and max(calls) > 50
