"""``gymux serve-env`` answers AgentGym's own clients as AgentGym's servers do.

Each test sends exactly what one of AgentGym's env clients sends (WooooDyy/AgentGym,
``agentenv/agentenv/envs/<family>.py``) and checks the reply against what that client reads
and what the family's upstream server (``agentenv-<family>/agentenv_<family>/*.py``) answers.
AgentGym's code is not needed: its requests and replies are written out here, with the file
each one comes from.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web

from gymux.env_plugins.agentgym.dialects import DIALECTS
from gymux.env_plugins.agentgym.server import EnvServer
from gymux.env_plugins.agentgym.upstream import available_actions_line, upstream_for

# (imported as a module: the server finds a wordle env's vocabulary as ``word_list`` in
# the module defining its factory, and PlainWordle below must have none)
from gymux.env_plugins.builtin.wordle import words
from gymux.env_plugins.protocol import (
    EnvPlugin,
    EnvSpec,
    Observation,
    StepResult,
    Task,
    splits_from,
)
from gymux.env_plugins.registry import default_registry
from gymux.errors import ActionParseError, PluginError
from gymux.messages import Message, PolicyRequest
from gymux.policies.oracle import oracle_policy

pytestmark = pytest.mark.anyio

#: What AgentGym's servers answer for a finished episode (``_check_id`` in the maze, wordle,
#: babyai and sciworld servers), with HTTP 200.
FINISHED = "The task with environment {id} has finished."


@asynccontextmanager
async def served(server: EnvServer) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """Serve ``server`` on a free loopback port (its reaper runs)."""
    async with server:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                yield session, url
        finally:
            await runner.cleanup()


async def post(session: aiohttp.ClientSession, url: str, body: Any = None) -> tuple[int, Any]:
    """A ``requests.post(url, json=body)`` as AgentGym's clients make it (no body: none)."""
    kwargs: dict[str, Any] = {} if body is None else {"json": body}
    async with session.post(url, **kwargs) as resp:
        return resp.status, await resp.json()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


def _plugin(env_id: str) -> EnvPlugin:
    try:
        return default_registry().get(env_id)
    except PluginError as exc:
        pytest.skip(f"{env_id} plugin is unavailable: {exc.cause}")


def after_action(text: str) -> str:
    """What the maze/wordle clients send (``envs/lmrlgym.py``: the text after ``Action:``,
    else the whole text, stripped)."""
    parts = text.split("Action:")
    return (parts[1] if len(parts) > 1 else parts[0]).strip()


def textcraft_action(text: str) -> str:
    """What the textcraft and babyai clients send (``envs/textcraft.py``, ``envs/babyai.py``):
    the line after ``Action:`` with everything but letters, digits, commas and spaces
    dropped; ``""`` without an ``Action:``."""
    found = re.findall(r"Action:\s*(.*?)(?=\n|$)", text, re.DOTALL)
    action = re.sub(r"[^A-Za-z0-9, ]+", "", found[-1] if found else "")
    return " ".join(action.split()).strip()


async def _oracle_episode(
    plugin: EnvPlugin,
    session: aiohttp.ClientSession,
    step_url: str,
    instance: dict[str, int],
    task_id: int,
    first: str,
    extract: Any,
    max_turns: int,
) -> dict[str, Any]:
    """Play a task with gymux's oracle as the model, through a client's extraction."""
    messages = [Message(role="user", content=first)]
    reply: dict[str, Any] = {}
    async with oracle_policy(plugin) as oracle:
        for turn in range(max_turns):
            request = PolicyRequest(
                episode_id="e", env_id=plugin.id, task_id=task_id, turn=turn, messages=messages
            )
            text = (await oracle.act(request)).text
            messages = [*messages, Message(role="assistant", content=text)]
            status, reply = await post(session, step_url, {**instance, "action": extract(text)})
            assert status == 200, reply
            if reply["done"]:
                return reply
            messages = [*messages, Message(role="user", content=reply["observation"])]
    raise AssertionError(f"{plugin.id} task {task_id} not solved in {max_turns} turns")


# --------------------------------------------------------------------------------------
# maze (agentenv-lmrlgym, envs/lmrlgym.py MazeEnvClient)
# --------------------------------------------------------------------------------------


async def test_maze_client_full_episode_with_invalid_and_empty_actions() -> None:
    plugin = _plugin("maze")
    async with served(EnvServer(plugin)) as (s, url):
        base = f"{url}/maze"
        # MazeEnvClient.__init__: requests.post(f"{base}/create") without a body; ok["id"].
        assert await post(s, f"{base}/create") == (200, {"id": 0})
        # reset: _post("reset", {"game": idx}) -> reads response["observation"].
        status, reset = await post(s, f"{base}/reset", {"game": 3, "id": 0})
        assert status == 200 and "Your current position" in reset["observation"]
        # step: text after "Action:" or, without one, the whole output; server answers
        # {observation, reward, done} and the client asserts 200. Upstream (LMRL-Gym's
        # MazeEnv.step) leaves the agent in place for anything but a move: reward 0, going on.
        for text in ["I am not sure what to do.", "Thought: x\nAction:\nfly to the moon", ""]:
            status, body = await post(s, f"{base}/step", {"action": after_action(text), "id": 0})
            assert status == 200, body
            assert (body["reward"], body["done"]) == (0.0, False)
            assert body["observation"].startswith("Invalid action:")
        final = await _oracle_episode(
            plugin, s, f"{base}/step", {"id": 0}, 3, reset["observation"], after_action, 30
        )
        assert final["reward"] == 1.0
        # maze/environment.py _check_id: a finished task answers 200 {"error": ...}, on
        # /step and on /observation alike.
        finished = {"error": FINISHED.format(id=0)}
        assert await post(s, f"{base}/step", {"action": "move up", "id": 0}) == (200, finished)
        assert await get(s, f"{base}/observation?id=0") == (200, finished)
        # A reset starts over (the client reuses its instance for every task).
        status, again = await post(s, f"{base}/reset", {"game": 0, "id": 0})
        assert status == 200
        assert await get(s, f"{base}/observation?id=0") == (200, again["observation"])


# --------------------------------------------------------------------------------------
# wordle (agentenv-lmrlgym/wordle/environment.py, LMRL-Gym's wordle env; envs/lmrlgym.py)
# --------------------------------------------------------------------------------------


def spaced(word: str) -> str:
    return " ".join(word)


async def test_wordle_client_speaks_lmrlgym_format() -> None:
    plugin = _plugin("wordle")
    secret = words.target_words()[0]
    other = next(w for w in words.word_list() if not set(w) & set(secret))
    async with served(EnvServer(plugin)) as (s, url):
        base = f"{url}/wordle"
        assert await post(s, f"{base}/create") == (200, {"id": 0})
        # WordleEnvClient.__init__ calls _get("filtered_vocab") and joins it into its prompt.
        status, vocab = await get(s, f"{base}/filtered_vocab?id=0")
        assert status == 200 and vocab == list(words.word_list())
        # reset: _post("reset", {"seed": idx}); the server answers {id, observation}.
        status, body = await post(s, f"{base}/reset", {"seed": 0, "id": 0})
        assert (status, body) == (200, {"id": 0, "observation": "Let's start Wordle!"})
        # Invalid words (not 5 letters a-z from the vocabulary: the spaces are removed, so
        # "guess crane" is "guesscrane"; LMRL-Gym rejects upper case) answer "invalid word",
        # reward 0 (LMRL-Gym's -1, plus the server's 1), and use a try.
        for action in ["", "guess crane", spaced(secret.upper()), "zzzzz"]:
            status, body = await post(s, f"{base}/step", {"action": action, "id": 0})
            assert (status, body) == (
                200,
                {"observation": "invalid word", "reward": 0.0, "done": False},
            )
        # A valid guess, spaced as the prompt asks ("s h i r e"), or not: one letter per
        # position, space-separated, newline-terminated.
        status, body = await post(s, f"{base}/step", {"action": spaced(other), "id": 0})
        pattern = words.wordle_feedback(other, secret)
        assert (status, body) == (
            200,
            {"observation": " ".join(pattern) + "\n", "reward": 0.0, "done": False},
        )
        status, left = await get(s, f"{base}/filtered_vocab?id=0")
        assert secret in left and len(left) < len(vocab)
        assert all(words.wordle_feedback(other, w) == pattern for w in left)
        status, body = await post(s, f"{base}/step", {"action": secret, "id": 0})
        assert (status, body) == (200, {"observation": "g g g g g\n", "reward": 1.0, "done": True})
        finished = {"error": FINISHED.format(id=0)}
        assert await post(s, f"{base}/step", {"action": spaced(secret), "id": 0}) == (
            200,
            finished,
        )
        assert await get(s, f"{base}/observation?id=0") == (200, finished)

        # Six tries, valid or not, end the game (LMRL-Gym's WordleGame.is_terminal).
        await post(s, f"{base}/reset", {"seed": 0, "id": 0})
        for n in range(1, 7):
            status, body = await post(s, f"{base}/step", {"action": "x y z", "id": 0})
            assert (status, body["observation"], body["done"]) == (200, "invalid word", n == 6)


async def test_wordle_format_only_for_wordle_envs() -> None:
    """Serving another env in the wordle family keeps its own actions and feedback."""
    async with served(EnvServer(_plugin("maze"), dialect=DIALECTS["wordle"])) as (s, url):
        await post(s, f"{url}/wordle/create")
        await post(s, f"{url}/wordle/reset", {"seed": 0, "id": 0})
        status, body = await post(s, f"{url}/wordle/step", {"action": "move down", "id": 0})
        assert status == 200 and "invalid word" not in body["observation"]


# --------------------------------------------------------------------------------------
# textcraft (agentenv-textcraft: server.py, env_wrapper.py, environment.py; envs/textcraft.py)
# --------------------------------------------------------------------------------------


async def test_textcraft_client_full_episode() -> None:
    plugin = _plugin("textcraft")
    async with served(EnvServer(plugin)) as (s, url):
        # TextCraftEnvClient.__init__ posts {minecraft_dir, commands, goal}; reads id and
        # observation (the wrapper answers {id, observation, done, reward}).
        status, body = await post(
            s,
            f"{url}/create",
            {"minecraft_dir": "agentenv_textcraft/", "commands": None, "goal": None},
        )
        assert status == 200 and body["id"] == 0 and "observation" in body
        status, reset = await post(s, f"{url}/reset", {"data_idx": 1, "id": 0})
        assert status == 200 and "Goal: craft" in reset["observation"]
        # TextCraftEnv.step: "Could not execute {action}" for anything matching no command.
        for text, want in [
            ("No action here.", "Could not execute "),
            ("Thought: x\nAction: fly to the moon!", "Could not execute fly to the moon"),
        ]:
            status, body = await post(s, f"{url}/step", {"action": textcraft_action(text), "id": 0})
            assert (status, body["observation"], body["reward"], body["done"]) == (
                200,
                want,
                0.0,
                False,
            )
        assert await get(s, f"{url}/observation?id=0") == (200, "Could not execute fly to the moon")
        final = await _oracle_episode(
            plugin, s, f"{url}/step", {"id": 0}, 1, reset["observation"], textcraft_action, 20
        )
        assert final["reward"] == 1.0
        # The wrapper never checks done: a finished episode still answers 200.
        status, body = await post(s, f"{url}/step", {"action": "inventory", "id": 0})
        assert (status, body["observation"], body["done"]) == (200, final["observation"], True)
        # TextCraftEnvClient.close: _post("close", {}); the wrapper answers true.
        assert await post(s, f"{url}/close", {"id": 0}) == (200, True)


# --------------------------------------------------------------------------------------
# babyai (agentenv-babyai/agentenv_babyai/environment.py; envs/babyai.py)
# --------------------------------------------------------------------------------------


async def test_babyai_client_full_episode() -> None:
    plugin = _plugin("babyai")
    async with served(EnvServer(plugin, call_timeout_s=120)) as (s, url):
        assert await post(s, f"{url}/create") == (200, {"id": 0})
        # BabyAIEnvClient.reset: _post("reset", {"data_idx": i}); reads observation, reward,
        # score, done.
        try:
            status, reset = await post(s, f"{url}/reset", {"data_idx": 0, "id": 0})
        except aiohttp.ClientError as exc:  # pragma: no cover - minigrid missing
            pytest.skip(f"babyai cannot start: {exc}")
        if status == 500:
            pytest.skip(f"babyai cannot start here: {reset}")
        assert status == 200 and {"observation", "reward", "score", "done"} <= set(reset)
        assert reset["observation"].startswith("Your goal:")
        actions = re.findall(r'"([^"]+)"', reset["observation"].rsplit("Available actions:", 1)[1])
        # check_action_is_valid: "" -> "No change in state."; the server appends the list.
        status, body = await post(s, f"{url}/step", {"action": "", "id": 0})
        assert status == 200 and (body["reward"], body["score"], body["done"]) == (0.0, 0.0, False)
        assert body["observation"] == "No change in state." + available_actions_line(actions)
        # BabyAIEnv.observe: an object, the goal line first.
        status, seen = await get(s, f"{url}/observation?id=0")
        assert status == 200 and set(seen) == {"observation", "reward", "score", "done", "deleted"}
        assert seen["observation"].startswith("Your goal:")
        assert seen["observation"].endswith(body["observation"])
        final = await _oracle_episode(
            plugin, s, f"{url}/step", {"id": 0}, 0, reset["observation"], textcraft_action, 40
        )
        assert final["score"] > 0
        finished = {"error": FINISHED.format(id=0)}
        assert await post(s, f"{url}/step", {"action": "turn left", "id": 0}) == (200, finished)
        assert await post(s, f"{url}/close", {"id": 0}) == (200, True)


# --------------------------------------------------------------------------------------
# sciworld (agentenv-sciworld/agentenv_sciworld/environment.py; envs/sciworld.py)
# --------------------------------------------------------------------------------------


async def test_sciworld_client_reset_empty_action_and_close() -> None:
    plugin = _plugin("sciworld")
    async with served(EnvServer(plugin, call_timeout_s=120)) as (s, url):
        assert await post(s, f"{url}/create") == (200, {"id": 0})
        status, reset = await post(s, f"{url}/reset", {"data_idx": 0, "id": 0})
        if status != 200:
            pytest.skip(f"sciworld cannot start here: {reset}")
        # SciworldEnvClient.reset shows task_description + "\n" + observation.
        shown = reset["task_description"] + "\n" + reset["observation"]
        assert reset["task_description"].startswith("Your task is")
        assert "\n" not in reset["task_description"] and reset["observation"]
        # The client's ReAct parser sends "" when the output has no "Action:";
        # ScienceWorld answers it like any unknown input.
        status, body = await post(s, f"{url}/step", {"action": "", "id": 0})
        assert status == 200
        assert (body["observation"], body["score"], body["done"]) == (
            "No known action matches that input.",
            0.0,
            False,
        )
        assert await get(s, f"{url}/observation?id=0") == (200, body["observation"])
        assert shown.startswith("Your task is")
        assert await post(s, f"{url}/close", {"id": 0}) == (200, True)


# --------------------------------------------------------------------------------------
# sqlgym (agentenv-sqlgym: server.py, environment.py, the sqlgym package; envs/sqlgym.py)
# --------------------------------------------------------------------------------------


async def test_sqlgym_client_episode_and_after_the_end() -> None:
    plugin = _plugin("sqlgym")
    async with served(EnvServer(plugin)) as (s, url):
        # SqlGymEnvClient: /create answers a bare integer; env_idx; reset with item_id
        # answers [observation, null]; step answers {state, reward, done, info}.
        status, env_idx = await post(s, f"{url}/create")
        assert (status, env_idx) == (200, 0)
        status, pair = await post(s, f"{url}/reset", {"item_id": 0, "env_idx": 0})
        assert status == 200 and isinstance(pair[0], str) and pair[1] is None
        # SqlGymEnvClient.observe: GET /observation?env_idx= -> SqlGymEnv.observation, the
        # item's question (reset sets it; a step does not change it).
        assert await get(s, f"{url}/observation?env_idx=0") == (200, pair[0])
        # The client sends the text after ```sql (all of it when there is no fence).
        status, body = await post(s, f"{url}/step", {"action": "fly to the moon", "env_idx": 0})
        assert status == 200 and set(body) >= {"state", "reward", "done", "info"}
        assert body["done"] is True and body["reward"] == 0.0
        # SqlGymEnv.step never checks for the end: another step still answers 200, done.
        status, again = await post(s, f"{url}/step", {"action": "SELECT 1", "env_idx": 0})
        assert (status, again["state"], again["done"]) == (200, body["state"], True)
        assert await get(s, f"{url}/observation?env_idx=0") == (200, pair[0])


# --------------------------------------------------------------------------------------
# every family: invalid and empty actions, the end of an episode, /close
# --------------------------------------------------------------------------------------


class StrictEnv:
    """``win`` ends the episode; an action that is not a word raises ActionParseError."""

    async def reset(self, task: Task) -> Observation:
        return Observation(text=f"Your goal: win\nround {task.id}", admissible_actions=["win"])

    async def step(self, action: str) -> StepResult:
        if not action.isalpha():
            raise ActionParseError(f"cannot read {action!r}")
        if action == "win":
            return StepResult(observation=Observation(text="won"), reward=1.0, done=True)
        return StepResult(observation=Observation(text=f"did {action}"), reward=0.0, done=False)

    async def close(self) -> None:
        pass


def strict_plugin() -> EnvPlugin:
    spec = EnvSpec(
        id="strict",
        version="1",
        instruction="Win.",
        action_format="Action: <word>",
        splits=splits_from({"test": range(2)}),
        max_turns=5,
    )
    return EnvPlugin(spec, StrictEnv)


def _routes(dialect: str) -> tuple[str, str, dict[str, Any] | None]:
    d = DIALECTS[dialect]
    body = dict(d.create_body) if d.create_body is not None else None
    return d.prefix, d.id_field, body


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
async def test_every_family_answers_unreadable_actions_with_200(dialect: str) -> None:
    d = DIALECTS[dialect]
    prefix, id_field, create_body = _routes(dialect)
    async with served(EnvServer(strict_plugin(), dialect=d)) as (s, url):
        status, created = await post(s, f"{url}{prefix}/create", create_body)
        instance = created if d.create_reply == "bare" else created[id_field]
        reset = {id_field: instance, d.reset_field: 1, **d.reset_extra}
        assert (await post(s, f"{url}{prefix}/reset", reset))[0] == 200
        for action in ["fly to the moon!", "", "   "]:
            status, body = await post(
                s, f"{url}{prefix}/step", {id_field: instance, "action": action}
            )
            assert status == 200, (action, body)
            assert body["done"] is False and body[d.reward_key] == 0.0
            assert body[d.step_obs_key]


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
async def test_every_family_ends_episodes_and_closes_as_upstream(dialect: str) -> None:
    d = DIALECTS[dialect]
    up = upstream_for(dialect)
    prefix, id_field, create_body = _routes(dialect)
    async with served(EnvServer(strict_plugin(), dialect=d)) as (s, url):
        status, created = await post(s, f"{url}{prefix}/create", create_body)
        instance = created if d.create_reply == "bare" else created[id_field]
        reset = {id_field: instance, d.reset_field: 0, **d.reset_extra}
        assert (await post(s, f"{url}{prefix}/reset", reset))[0] == 200
        step = {id_field: instance, "action": "win"}
        status, body = await post(s, f"{url}{prefix}/step", step)
        assert status == 200 and body[d.reward_key] == 1.0
        status, after = await post(s, f"{url}{prefix}/step", step)
        observation = await get(s, f"{url}{prefix}/observation?{id_field}={instance}")
        if up.after_done == "error":  # maze, wordle, babyai, sciworld: _check_id
            assert (status, after) == (200, {"error": FINISHED.format(id=instance)})
            assert observation == (200, {"error": FINISHED.format(id=instance)})
        elif up.after_done == "final":  # textcraft, sqlgym: no check, the step goes on
            assert status == 200 and after["done"] is True and after[d.reward_key] == 0.0
            assert after[d.step_obs_key] == "won"
        else:  # gymux's own dialect
            assert status == 409 and "is over" in after["error"]
        async with s.post(f"{url}{prefix}/close", json={id_field: instance}) as resp:
            assert resp.status == 200
            closed = await resp.read()
        if d.close_reply_text:
            assert closed == b"closed"
        elif up.close_reply == "true":  # textcraft, babyai, sciworld answer a bare true
            assert msgspec.json.decode(closed) is True
        else:
            assert msgspec.json.decode(closed) == {"closed": True, id_field: instance}


async def test_babyai_observation_object_repeats_the_goal() -> None:
    async with served(EnvServer(strict_plugin(), dialect=DIALECTS["babyai"])) as (s, url):
        await post(s, f"{url}/create")
        await post(s, f"{url}/reset", {"data_idx": 0, "id": 0})
        await post(s, f"{url}/step", {"action": "wait", "id": 0})
        status, seen = await get(s, f"{url}/observation?id=0")
        assert (status, seen) == (
            200,
            {
                "observation": "Your goal: win\ndid wait",
                "reward": 0.0,
                "score": 0.0,
                "done": False,
                "deleted": False,
            },
        )


# --------------------------------------------------------------------------------------
# AgentGym's default evaluator: 20 clients at once, never closed
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["maze", "wordle"])
async def test_twenty_clients_at_once_with_the_default_cap(env_id: str) -> None:
    """``examples/basic/openai_eval_multiprocessing.py``: 20 processes, each one client
    built once and reused for every task, never closed; then a second run does the same.
    At a cap of 20 (babyai's and sciworld's default) the second run's clients take the
    first run's slots."""
    plugin = _plugin(env_id)
    prefix = DIALECTS[env_id].prefix
    field = DIALECTS[env_id].reset_field
    server = EnvServer(plugin, max_instances=20)
    async with served(server) as (s, url):
        for run in range(2):
            rewards: list[float] = []

            async def client(n: int, rewards: list[float]) -> None:
                status, created = await post(s, f"{url}{prefix}/create")
                assert status == 200, created
                instance = {"id": created["id"]}
                for task_id in (n % 5, n % 5 + 5):
                    status, reset = await post(
                        s, f"{url}{prefix}/reset", {**instance, field: task_id}
                    )
                    assert status == 200, reset
                    if env_id == "wordle":
                        word = words.target_words()[task_id]
                        status, body = await post(
                            s, f"{url}{prefix}/step", {**instance, "action": spaced(word)}
                        )
                    else:
                        body = await _oracle_episode(
                            plugin,
                            s,
                            f"{url}{prefix}/step",
                            instance,
                            task_id,
                            reset["observation"],
                            after_action,
                            40,
                        )
                    rewards.append(body["reward"])

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for n in range(20):
                        tg.start_soon(client, n, rewards)
            assert rewards == [1.0] * 40, f"run {run}"
            assert server.instances == 20  # the second run's clients took the first run's slots


def test_empty_action_facts_of_each_family() -> None:
    """The texts AgentGym's servers answer for an empty action."""
    # environment.py of each: TextCraftEnv.step ("Could not execute {}".format("")),
    # BabyAI.check_action_is_valid, ScienceWorld's parser.
    assert upstream_for("textcraft").empty_observation == "Could not execute "
    assert upstream_for("babyai").empty_observation == "No change in state."
    assert upstream_for("sciworld").empty_observation == "No known action matches that input."
    assert upstream_for("maze").empty_observation is None  # the env's own feedback
    assert available_actions_line(["turn left", "toggle"]) == (
        '\nAvailable actions: ["turn left", "toggle"]'
    )


class PlainWordle:
    """A wordle env of another make: no ``feedback`` pattern in its info, no word list."""

    async def reset(self, task: Task) -> Observation:
        return Observation(text="new game")

    async def step(self, action: str) -> StepResult:
        solved = action == "apple"
        return StepResult(
            observation=Observation(text=f"judged {action}"), reward=float(solved), done=solved
        )

    async def close(self) -> None:
        pass


async def test_a_wordle_env_without_patterns_keeps_its_own_text() -> None:
    spec = EnvSpec(
        id="wordle",
        version="1",
        instruction="Guess.",
        action_format="Action: <word>",
        splits=splits_from({"test": range(1)}),
        max_turns=8,
    )
    async with served(EnvServer(EnvPlugin(spec, PlainWordle))) as (s, url):
        base = f"{url}/wordle"
        await post(s, f"{base}/create")
        assert await get(s, f"{base}/filtered_vocab?id=0") == (200, [])  # no word list known
        await post(s, f"{base}/reset", {"seed": 0, "id": 0})
        status, body = await post(s, f"{base}/step", {"action": "c r a n e", "id": 0})
        assert (status, body) == (
            200,
            {"observation": "judged crane", "reward": 0.0, "done": False},
        )
        status, body = await post(s, f"{base}/step", {"action": "apple", "id": 0})
        assert (status, body) == (200, {"observation": "judged apple", "reward": 1.0, "done": True})
