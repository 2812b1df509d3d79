"""``lmrl-wordle``: AgentGym's Wordle (LMRL-Gym's game), task id N = AgentGym's seed N.

The reference is ``lmrl_wordle/upstream_games.json``: fixed guess scripts played on AgentGym's
own wordle server code for every test seed and a sample of train seeds (how it was recorded:
``lmrl_wordle/README.md``). gymux's env must answer every step exactly as upstream did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from gymux.env_plugins import Task
from gymux.env_plugins.builtin.lmrl_wordle.env import (
    LmrlWordleEnv,
    parse_lmrl_wordle_action,
    word_list,
)
from gymux.env_plugins.builtin.lmrl_wordle.game import (
    INVALID_WORD,
    START,
    LmrlWordleGame,
    filter_vocab,
    initial_knowledge,
    knowledge_from_feedback,
    transition,
)
from gymux.env_plugins.builtin.lmrl_wordle.oracle import LmrlWordleOracle, read_knowledge
from gymux.env_plugins.builtin.lmrl_wordle.plugin import LMRL_WORDLE_SPEC, plugin
from gymux.env_plugins.builtin.wordle.plugin import WORDLE_SPEC
from gymux.env_plugins.conformance import check_plugin
from gymux.env_plugins.registry import default_registry
from gymux.errors import ActionParseError, EnvError
from gymux.messages import Message, PolicyRequest

UPSTREAM: dict[str, Any] = json.loads(
    (Path(__file__).parent / "lmrl_wordle" / "upstream_games.json").read_text()
)
GAMES: list[dict[str, Any]] = UPSTREAM["games"]
VOCAB: list[str] = UPSTREAM["vocab"]

pytestmark = pytest.mark.anyio


def _name(game: dict[str, Any]) -> str:
    return f"{game['seed']}-{game['script']}"


# --------------------------------------------------------------------------- upstream table


def test_the_table_covers_every_test_seed_and_some_train_seeds() -> None:
    test_ids = LMRL_WORDLE_SPEC.split("test").ids
    assert UPSTREAM["test_seeds"] == test_ids == list(range(25))
    train = set(LMRL_WORDLE_SPEC.split("train").ids)
    assert UPSTREAM["train_seeds"] and set(UPSTREAM["train_seeds"]) <= train
    seeds = {g["seed"] for g in GAMES}
    assert seeds == set(test_ids) | set(UPSTREAM["train_seeds"])
    scripts = {g["script"] for g in GAMES}
    assert {"valid", "spaced", "invalid", "repeated", "first_candidate"} <= scripts
    assert len(GAMES) == len(seeds) * len(scripts)


def test_vocabulary_is_lmrl_gyms_in_file_order() -> None:
    assert list(word_list()) == VOCAB
    assert len(VOCAB) == 40 and len(set(VOCAB)) == 40


@pytest.mark.parametrize("game", GAMES, ids=_name)
async def test_env_replays_agentgyms_game_exactly(game: dict[str, Any]) -> None:
    env = LmrlWordleEnv()
    obs = await env.reset(Task(id=game["seed"]))
    assert obs.text == START == "Let's start Wordle!"
    over = False
    for step in game["steps"]:
        reply = step["reply"]
        if over:
            # upstream: {"error": "... has finished."}; the env refuses to step on.
            assert set(reply) == {"error"} and reply["error"].endswith("has finished.")
            with pytest.raises(EnvError, match="after the game ended"):
                await env.step(step["action"])
            continue
        result = await env.step(step["action"])
        got = (result.observation.text, result.reward, result.done)
        assert got == (reply["observation"], reply["reward"], reply["done"]), step
        assert result.info["valid"] is isinstance(reply["reward"], int)
        if result.done:
            assert isinstance(step["filtered"], dict)  # upstream: the finished error
        else:
            assert result.info["filtered_vocab"] == [VOCAB[i] for i in step["filtered"]]
        over = result.done
    await env.close()


def test_rewards_and_success_are_agentgyms() -> None:
    solved = [g for g in GAMES if any(s["reply"].get("reward") == 1 for s in g["steps"])]
    assert {g["script"] for g in solved} >= {"first_candidate"}
    for game in GAMES:
        rewards = [s["reply"]["reward"] for s in game["steps"] if "reward" in s["reply"]]
        assert set(rewards) <= {0, 1} and rewards.count(1) <= 1
    assert LMRL_WORDLE_SPEC.success.is_success(1.0)
    assert not LMRL_WORDLE_SPEC.success.is_success(0.0)


async def test_invalid_guesses_use_tries_and_six_end_the_game() -> None:
    env = LmrlWordleEnv()
    await env.reset(Task(id=3))
    for n, action in enumerate(["hello", "SHIRE", "", "sh ire s", "xyzzy"], start=1):
        result = await env.step(action)
        assert (result.observation.text, result.reward, result.done) == (INVALID_WORD, 0.0, False)
        assert result.info["tries"] == n and result.info["valid"] is False
    last = await env.step("x")
    assert last.done and last.observation.text == INVALID_WORD and last.reward == 0.0


async def test_reset_starts_the_same_game_again_and_any_seed_is_a_game() -> None:
    env = LmrlWordleEnv()
    runs = []
    for _ in range(2):
        await env.reset(Task(id=123_456))
        runs.append([(await env.step(w)).observation.text for w in ("panic", "could", "trove")])
    assert runs[0] == runs[1]


async def test_env_misuse_is_an_env_error() -> None:
    env = LmrlWordleEnv()
    with pytest.raises(EnvError, match="before reset"):
        await env.step("panic")
    await env.close()
    with pytest.raises(EnvError, match="closed"):
        await env.reset(Task(id=0))


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("Thought:\nfine\n\nAction:\ns h i r e", "shire"),
        ("Action: shire", "shire"),
        ("Thought: x\nAction:\n  p a n i c  \n", "panic"),
        ("Action: S H I R E", "SHIRE"),  # upstream keeps the case: an invalid word
    ],
)
def test_parse_action_takes_spaced_letters_and_plain_words(text: str, action: str) -> None:
    assert parse_lmrl_wordle_action(text) == action


def test_parse_action_needs_an_action() -> None:
    with pytest.raises(ActionParseError):
        parse_lmrl_wordle_action("I guess shire")


# --------------------------------------------------------------------------- the oracle


def test_feedback_replay_rebuilds_the_games_knowledge() -> None:
    """What the oracle relies on: replaying each guess's feedback letters gives exactly the
    game's knowledge state, so its candidates are the game's filtered vocabulary."""
    for seed in range(40):
        game = LmrlWordleGame()
        game.reset(seed)
        known = initial_knowledge()
        for word in ("knoll", "aroma", "elder", "dodge", "swill"):
            outcome = game.guess(word)
            known = knowledge_from_feedback(known, word, outcome.observation.split())
            assert filter_vocab(known) == game.filtered, (seed, word)
            if outcome.done:
                break


def test_transition_marks_letters_as_upstream() -> None:
    k = transition(initial_knowledge(), "knoll", "light")
    # "l" is in the target but not at 3 or 4; "k", "n", "o" are nowhere.
    assert [w for w in filter_vocab(k) if "l" in w and "k" not in w] == filter_vocab(k)


def _request(seed: int, messages: list[Message]) -> PolicyRequest:
    return PolicyRequest(
        episode_id=f"e{seed}", env_id="lmrl-wordle", task_id=seed, turn=0, messages=messages
    )


async def _oracle_episode(seed: int) -> tuple[float, int]:
    env, oracle = LmrlWordleEnv(), LmrlWordleOracle()
    obs = await env.reset(Task(id=seed))
    messages = [
        Message(role="user", content=LMRL_WORDLE_SPEC.instruction),
        Message(role="assistant", content="OK"),
        Message(role="user", content=obs.text),
    ]
    for turn in range(LMRL_WORDLE_SPEC.max_turns):
        text = await oracle.solve(_request(seed, list(messages)))
        messages.append(Message(role="assistant", content=text))
        result = await env.step(parse_lmrl_wordle_action(text))
        if result.done:
            return result.reward, turn + 1
        messages.append(Message(role="user", content=result.observation.text))
        # the oracle knows what the game knows, from the conversation alone
        known = filter_vocab(read_knowledge(_request(seed, messages)))
        assert known == result.info["filtered_vocab"]
    return 0.0, LMRL_WORDLE_SPEC.max_turns


async def test_oracle_solves_every_test_task_and_the_train_sample() -> None:
    seeds = [*LMRL_WORDLE_SPEC.split("test").ids, *UPSTREAM["train_seeds"]]
    for seed in seeds:
        reward, turns = await _oracle_episode(seed)
        assert reward == 1.0 and turns <= 6, seed


def test_oracle_answers_in_agentgyms_spaced_format() -> None:
    text = anyio.run(LmrlWordleOracle().solve, _request(0, [Message(role="user", content="x")]))
    action = text.rsplit("Action:\n", 1)[1]
    assert len(action) == 9 and action.replace(" ", "") in VOCAB


# --------------------------------------------------------------------------- plugin and spec


def test_plugin_passes_conformance_with_its_oracle_on_every_test_task() -> None:
    tasks = [Task(id=i, split="test") for i in LMRL_WORDLE_SPEC.split("test").ids]
    report = anyio.run(lambda: check_plugin(plugin, oracle_tasks=tasks))
    assert report.ok, report.problems
    assert report.oracle_successes == report.oracle_episodes == 25


def test_entry_point_and_spec() -> None:
    loaded = default_registry().get("lmrl-wordle")
    assert loaded.spec is LMRL_WORDLE_SPEC
    assert LMRL_WORDLE_SPEC.agentgym_ids.split(":")[0] == "same"
    assert LMRL_WORDLE_SPEC.max_turns == 8  # AgentGym's Wordle budget
    assert all(w in LMRL_WORDLE_SPEC.instruction for w in VOCAB)
    # gymux's own wordle stays another game and says where AgentGym's is
    assert WORDLE_SPEC.agentgym_ids.startswith("no:")
    assert "lmrl-wordle" in WORDLE_SPEC.agentgym_ids
