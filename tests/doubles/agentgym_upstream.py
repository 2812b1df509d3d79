"""Small stand-ins for AgentGym's own environment servers, for the bridge's tests.

Each reproduces the wire behaviour of one upstream server (WooooDyy/AgentGym, paths below)
over a toy game, so the tests need no AgentGym code:

* :class:`SqlGym` -- ``agentenv-sqlgym/agentenv_sqlgym/{server,environment}.py``:
  ``SqlGymEnvServer`` keeps ``sz = 8`` instances; the ninth ``/create`` and every later one
  answer an id already handed out (``self.ls[self.now]``, round robin); ``/reset`` answers
  ``[question, null]``; ``/step`` answers ``{state, reward, done, info}`` and runs on
  whatever item the instance was last reset to; ``GET /observation?env_idx=`` answers the
  current question (``SqlGymEnv.observation``); no ``/close``; an unknown id is an uncaught
  ``IndexError``: HTTP 500.
* :class:`BabyAI` -- ``agentenv-babyai/agentenv_babyai/{server,environment}.py``: ``{"id"}``;
  observations end with ``\\nAvailable actions: ["...", ...]``; ``score`` is the reward; a
  solved level's reward is below 1 (``1 - 0.9 * steps / max_steps``); stepping a finished
  episode answers ``{"error": "The task with environment N has finished."}`` with HTTP 200;
  ``POST /close {"id"}`` answers ``true`` (``false`` for an unknown id).
* :class:`TextCraft` -- ``agentenv-textcraft/agentenv_textcraft/{server,env_wrapper,
  environment}.py``: ``/create`` takes ``{commands, goal}`` and answers ``{id, observation,
  done, reward}``; the reset observation lists ``Crafting commands:``; actions ``get <n>
  <item>``, ``craft <n> <item> using <n> <item>, ...``, ``inventory``; anything else answers
  ``Could not execute <action>``; ``POST /close`` exists.
* :class:`Lmrlgym` -- ``agentenv-lmrlgym/agentenv_lmrlgym/{server,maze/environment,
  wordle/environment}.py``: routes under ``/maze/`` and ``/wordle/``; errors as HTTP 200
  ``{"error": ...}``; wordle's ``GET /wordle/filtered_vocab?id=`` lists the words; wordle
  feedback ``b y g g b``; **no** ``/close`` (FastAPI answers 404).
* :class:`SciWorld` -- ``agentenv-sciworld/agentenv_sciworld/{server,environment}.py``:
  ``{"id"}``; reset answers ``{task_description, observation, score, ...}``; success is a
  score of 100; ``POST /close`` exists.

Every server counts its live instances (``live``: created and not closed) and keeps a log of
the calls it served.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aiohttp import web

__all__ = [
    "BabyAI",
    "Lmrlgym",
    "SciWorld",
    "SqlGym",
    "TextCraft",
    "Upstream",
    "serving",
    "serving_thread",
]


@asynccontextmanager
async def serving(server: Upstream) -> AsyncIterator[str]:
    """Serve ``server`` on a free loopback port of the running loop; yields its base URL."""
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextmanager
def serving_thread(server: Upstream) -> Iterator[str]:
    """Serve ``server`` on a free loopback port from a thread of its own (so a blocking
    ``gymux`` CLI call can drive it); yields the base URL, stops the server on exit."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(state["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=main, name="agentgym-upstream", daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield str(state["url"])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(payload: Any) -> web.Response:
    return web.json_response(payload)


def _not_found() -> web.Response:
    return web.json_response({"detail": "Not Found"}, status=404)


class Upstream:
    """Shared plumbing: routes, a call log, the live-instance count."""

    prefix = ""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.creates = 0
        self.closes = 0

    @property
    def live(self) -> int:
        raise NotImplementedError

    def routes(self) -> dict[tuple[str, str], Callable[[Any], Any]]:
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body: Any = dict(request.query)
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw.strip() else {}
        self.calls.append((request.method, request.path, body))
        handler = self.routes().get((request.method, request.path))
        if handler is None:
            return _not_found()
        try:
            out = handler(body)
        except (KeyError, IndexError, ValueError) as exc:  # FastAPI: uncaught -> HTTP 500
            return web.Response(text=f"Internal Server Error: {exc}", status=500)
        return out if isinstance(out, web.StreamResponse) else _json(out)

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.calls]


# --------------------------------------------------------------------------------------
# sqlgym
# --------------------------------------------------------------------------------------


class SqlGym(Upstream):
    """``SqlGymEnvServer``: at most ``sz`` instances, then ids still in use, round robin.

    Item ``i``'s question is ``"Q{i}: ..."``; its gold query is ``SELECT {i}``; a step's
    state names the item the instance is on *now* (what a shared instance corrupts)."""

    def __init__(self, sz: int = 8, *, meddle: int = 0) -> None:
        super().__init__()
        self.sz = sz
        #: After answering a reset, move the instance on by ``meddle`` items, as another
        #: client's reset of the same id would (0: never).
        self.meddle = meddle
        self.env: dict[int, int | None] = {}  # id -> item (None: not reset)
        self.ls: list[int] = []
        self.now = -1
        self._ids = itertools.count(1000, 7)

    @property
    def live(self) -> int:
        return len(self.env)

    @staticmethod
    def question(item: int) -> str:
        return f"Q{item}: how many rows does table t{item} have?"

    def create(self, body: Any) -> Any:
        self.creates += 1
        if len(self.env) == self.sz:
            self.now = (self.now + 1) % self.sz
            return self.ls[self.now]
        idx = next(self._ids)
        self.env[idx] = None
        self.ls.append(idx)
        return idx

    def reset(self, body: Any) -> Any:
        idx, item = body["env_idx"], int(body["item_id"])
        if idx not in self.env:
            raise KeyError(idx)
        self.env[idx] = item + self.meddle
        return [self.question(item), None]

    def step(self, body: Any) -> Any:
        item = self.env[body["env_idx"]]
        if item is None:
            raise ValueError("not reset")
        action = str(body["action"]).strip().rstrip(";")
        if action.upper().startswith("SELECT") and "sqlite_master" in action:
            state = f"[('t{item}',)]"
        elif action == f"SELECT {item}":
            state = f"[({item},)]"
        else:
            state = "no such table: x"
        reward = 1.0 if action == f"SELECT {item}" else 0.0
        return {"state": state, "reward": reward, "done": True, "info": {"item": item}}

    def observation(self, query: Any) -> Any:
        item = self.env[int(query["env_idx"])]
        return (
            "Call reset() to initialize the environment." if item is None else (self.question(item))
        )

    def routes(self) -> dict[tuple[str, str], Callable[[Any], Any]]:
        return {
            ("POST", "/create"): self.create,
            ("POST", "/reset"): self.reset,
            ("POST", "/step"): self.step,
            ("GET", "/observation"): self.observation,
        }


# --------------------------------------------------------------------------------------
# babyai
# --------------------------------------------------------------------------------------

_BABYAI_ACTIONS = ["turn left", "turn right", "move forward", "go to red ball 1"]


def _babyai_actions(actions: list[str]) -> str:
    # BabyAIEnv.step: '\nAvailable actions: ["a", "b"]' (each quoted, ", "-joined).
    return "\nAvailable actions: [" + ", ".join(f'"{a}"' for a in actions) + "]"


class BabyAI(Upstream):
    """``BabyAIEnv``: ``go to red ball 1`` solves any level, with reward ``1 - 0.9 * k / 64``
    after ``k`` steps (below 1, as minigrid's); ``check available actions`` lists them."""

    def __init__(self) -> None:
        super().__init__()
        self._max_id = 0
        self.info: dict[int, dict[str, Any]] = {}
        self.env: dict[int, dict[str, Any]] = {}
        self.ls: list[int] = []

    @property
    def live(self) -> int:
        return len(self.ls)

    def create(self, body: Any) -> Any:
        self.creates += 1
        idx = self._max_id
        self._max_id += 1
        self.info[idx] = {"deleted": False, "done": False}
        self.ls.append(idx)
        return {"id": idx}

    def _check(self, idx: int, is_reset: bool = False) -> str | None:
        if idx not in self.info:
            return f"The id {idx} is not valid."
        if not is_reset and self.info[idx]["done"]:
            return f"The task with environment {idx} has finished."
        return None

    def reset(self, body: Any) -> Any:
        idx, data_idx = body["id"], body["data_idx"]
        error = self._check(idx, True)
        if error:
            return {"error": error}
        self.env[idx] = {"level": data_idx % 40 + 1, "seed": data_idx // 40, "steps": 0}
        obs = (
            f"Your goal: go to the red ball (level {data_idx % 40 + 1})\n"
            "In front of you in this room, you can see several objects: There is a red ball 1 "
            "2 steps in front of you." + _babyai_actions(_BABYAI_ACTIONS)
        )
        payload = {"observation": obs, "reward": 0, "score": 0, "deleted": False, "done": False}
        self.info[idx].update(payload)
        return payload

    def step(self, body: Any) -> Any:
        idx, action = body["id"], str(body["action"]).lower().strip()
        error = self._check(idx)
        if error:
            return {"error": error}
        game = self.env[idx]
        game["steps"] += 1
        reward, done = 0.0, False
        if action == "go to red ball 1":
            reward, done = 1 - 0.9 * game["steps"] / 64, True
            obs = "You are next to the red ball.\n The task is completed."
        elif action in _BABYAI_ACTIONS:
            obs = "You see a red ball 1 in front of you."
        elif action == "":
            obs = "No change in state."
        else:
            obs = "The action is not recognized. Please check valid actions."
        payload = {
            "observation": obs + _babyai_actions(_BABYAI_ACTIONS),
            "reward": reward,
            "score": self.info[idx].get("score", 0) + reward,
            "done": done,
        }
        self.info[idx].update(payload)
        return payload

    def observation(self, query: Any) -> Any:
        idx = int(query["id"])
        error = self._check(idx)
        if error:
            return {"error": error}
        return {k: self.info[idx].get(k) for k in ("observation", "reward", "score", "done")}

    def close(self, body: Any) -> Any:
        idx = body["id"]
        if idx not in self.ls:
            return False
        self.ls.remove(idx)
        self.env.pop(idx, None)
        del self.info[idx]
        self.closes += 1
        return True

    def routes(self) -> dict[tuple[str, str], Callable[[Any], Any]]:
        return {
            ("POST", "/create"): self.create,
            ("POST", "/reset"): self.reset,
            ("POST", "/step"): self.step,
            ("GET", "/observation"): self.observation,
            ("POST", "/close"): self.close,
        }


# --------------------------------------------------------------------------------------
# textcraft
# --------------------------------------------------------------------------------------


class TextCraft(Upstream):
    """``TextCraft_Wrapper``: goal ``crafting table`` from ``4 planks`` from ``1 oak log``."""

    COMMANDS = (
        "craft 4 oak planks using 1 oak log\n"
        "craft 1 crafting table using 4 oak planks\n"
        "craft 4 stick using 2 oak planks"
    )

    def __init__(self) -> None:
        super().__init__()
        self._max_id = 0
        self.info: dict[int, dict[str, Any]] = {}
        self.inventory: dict[int, dict[str, int]] = {}
        self.ls: list[int] = []

    @property
    def live(self) -> int:
        return len(self.ls)

    def _obs(self) -> str:
        return f"Crafting commands:\n{self.COMMANDS}\n\nGoal: craft crafting table."

    def create(self, body: Any) -> Any:
        self.creates += 1
        idx = self._max_id
        self._max_id += 1
        self.ls.append(idx)
        self.inventory[idx] = {}
        self.info[idx] = {"observation": self._obs(), "done": False, "reward": 0}
        return {"id": idx, "observation": self._obs(), "done": False, "reward": 0}

    def reset(self, body: Any) -> Any:
        idx = body["id"]
        if idx not in self.info:
            return {"error": f"The id {idx} is not valid."}
        self.inventory[idx] = {}
        return {"id": idx, "observation": self._obs(), "done": False, "reward": 0}

    def step(self, body: Any) -> Any:
        idx, action = body["id"], str(body["action"])
        if idx not in self.info:
            return {"error": f"The id {idx} is not valid."}
        inv = self.inventory[idx]
        reward, done = 0, False
        recipes = {
            "craft 4 oak planks using 1 oak log": ({"oak log": 1}, ("oak planks", 4)),
            "craft 1 crafting table using 4 oak planks": ({"oak planks": 4}, ("crafting table", 1)),
            "craft 4 stick using 2 oak planks": ({"oak planks": 2}, ("stick", 4)),
        }
        if action == "inventory":
            obs = "Inventory: " + (
                " ".join(f"[{k}] ({v})" for k, v in inv.items()) or "You are not carrying anything."
            )
        elif action.startswith("get "):
            parts = action.split(" ", 2)
            if len(parts) == 3 and parts[1].isdigit() and parts[2] == "oak log":
                inv["oak log"] = inv.get("oak log", 0) + int(parts[1])
                obs = f"Got {parts[1]} oak log"
            else:
                obs = f"Could not find {parts[-1]}"
        elif action in recipes:
            need, (item, count) = recipes[action]
            if all(inv.get(k, 0) >= v for k, v in need.items()):
                for k, v in need.items():
                    inv[k] -= v
                inv[item] = inv.get(item, 0) + count
                obs = f"Crafted {count} minecraft:{item.replace(' ', '_')}"
                if item == "crafting table":
                    reward, done = 1, True
            else:
                obs = f"Could not find enough items to craft minecraft:{item.replace(' ', '_')}"
        else:
            obs = f"Could not execute {action}"
        payload = {"observation": obs, "reward": reward, "done": done}
        self.info[idx].update(payload)
        return payload

    def observation(self, query: Any) -> Any:
        idx = int(query["id"])
        return self.info[idx]["observation"] if idx in self.info else {"error": "not valid"}

    def close(self, body: Any) -> Any:
        idx = body["id"]
        if idx not in self.ls:
            return False
        self.ls.remove(idx)
        del self.info[idx]
        self.closes += 1
        return True

    def routes(self) -> dict[tuple[str, str], Callable[[Any], Any]]:
        return {
            ("POST", "/create"): self.create,
            ("POST", "/reset"): self.reset,
            ("POST", "/step"): self.step,
            ("GET", "/observation"): self.observation,
            ("POST", "/close"): self.close,
        }


# --------------------------------------------------------------------------------------
# LMRL-Gym: maze and wordle
# --------------------------------------------------------------------------------------

WORDS = ["shire", "crane", "flown", "panic", "frown"]


def _feedback(guess: str, secret: str) -> str:
    out = []
    for i, ch in enumerate(guess):
        out.append("g" if secret[i] == ch else "y" if ch in secret else "b")
    return " ".join(out)


class Lmrlgym(Upstream):
    """One LMRL-Gym server: ``/maze/...`` (a corridor: ``move right`` twice reaches the
    goal) and ``/wordle/...`` (secret ``WORDS[seed % 5]``, guesses spelled with spaces)."""

    def __init__(self) -> None:
        super().__init__()
        self._max = {"maze": 0, "wordle": 0}
        self.info: dict[str, dict[int, dict[str, Any]]] = {"maze": {}, "wordle": {}}

    @property
    def live(self) -> int:
        return len(self.info["maze"]) + len(self.info["wordle"])

    def _create(self, game: str) -> Any:
        self.creates += 1
        idx = self._max[game]
        self._max[game] += 1
        self.info[game][idx] = {"done": False, "reward": 0, "deleted": False}
        return {"id": idx}

    def _check(self, game: str, idx: int, is_reset: bool = False) -> str | None:
        if idx not in self.info[game]:
            return f"The id {idx} is not valid."
        if not is_reset and self.info[game][idx]["done"]:
            return f"The task with environment {idx} has finished."
        return None

    def maze_reset(self, body: Any) -> Any:
        idx, game = body["id"], int(body["game"])
        error = self._check("maze", idx, True) or (
            f"The game {game} is not valid." if game >= 26 else None
        )
        if error:
            return {"error": error}
        self.info["maze"][idx] = {"done": False, "reward": 0, "pos": 0, "deleted": False}
        return {"observation": f"Your current position is at 0 (game {game}). Goal at 2."}

    def maze_step(self, body: Any) -> Any:
        idx, action = body["id"], str(body["action"]).strip()
        error = self._check("maze", idx)
        if error:
            return {"error": error}
        state = self.info["maze"][idx]
        if action == "move right":
            state["pos"] += 1
        reward = 1.0 if state["pos"] >= 2 else -1.0
        state["done"] = state["pos"] >= 2
        obs = f"Your current position is at {state['pos']}."
        return {"observation": obs, "reward": reward, "done": state["done"]}

    def wordle_reset(self, body: Any) -> Any:
        idx, seed = body["id"], int(body["seed"])
        error = self._check("wordle", idx, True)
        if error:
            return {"error": error}
        self.info["wordle"][idx].update({"seed": seed, "done": False, "tries": 0})
        return {"id": idx, "observation": "Let's start Wordle!"}

    def wordle_step(self, body: Any) -> Any:
        idx, action = body["id"], str(body["action"]).strip()
        error = self._check("wordle", idx)
        if error:
            return {"error": error}
        state = self.info["wordle"][idx]
        secret = WORDS[state["seed"] % len(WORDS)]
        guess = action.replace(" ", "")
        state["tries"] += 1
        if guess not in WORDS:
            obs, reward = "invalid word", 0.0
        else:
            obs = _feedback(guess, secret)
            reward = 1.0 if guess == secret else 0.0
        state["done"] = reward == 1.0 or state["tries"] >= 6
        return {"observation": obs, "reward": reward, "done": state["done"]}

    def wordle_vocab(self, query: Any) -> Any:
        error = self._check("wordle", int(query["id"]))
        return {"error": error} if error else list(WORDS)

    def routes(self) -> dict[tuple[str, str], Callable[[Any], Any]]:
        return {
            ("POST", "/maze/create"): lambda b: self._create("maze"),
            ("POST", "/maze/reset"): self.maze_reset,
            ("POST", "/maze/step"): self.maze_step,
            ("POST", "/wordle/create"): lambda b: self._create("wordle"),
            ("POST", "/wordle/reset"): self.wordle_reset,
            ("POST", "/wordle/step"): self.wordle_step,
            ("GET", "/wordle/filtered_vocab"): self.wordle_vocab,
        }


# --------------------------------------------------------------------------------------
# sciworld
# --------------------------------------------------------------------------------------


class SciWorld(Upstream):
    """``SciWorldEnv``: ``focus on water`` scores 100 and ends the episode."""

    def __init__(self) -> None:
        super().__init__()
        self._max_id = 0
        self.info: dict[int, dict[str, Any]] = {}
        self.ls: list[int] = []

    @property
    def live(self) -> int:
        return len(self.ls)

    def create(self, body: Any) -> Any:
        self.creates += 1
        idx = self._max_id
        self._max_id += 1
        self.info[idx] = {"deleted": False, "done": False}
        self.ls.append(idx)
        return {"id": idx}

    def reset(self, body: Any) -> Any:
        idx = body["id"]
        if idx not in self.info or self.info[idx]["deleted"]:
            return {"error": f"The id {idx} is not valid."}
        self.info[idx].update({"done": False, "score": 0})
        return {
            "task_name": "boil",
            "var_num": body["data_idx"],
            "task_description": "Your task is to boil water.",
            "observation": "This room is called the kitchen.",
            "reward": 0,
            "score": 0,
            "deleted": False,
            "done": False,
        }

    def step(self, body: Any) -> Any:
        idx = body["id"]
        if self.info[idx]["done"]:
            return {"error": f"The task with environment {idx} has finished."}
        hit = str(body["action"]).strip() == "focus on water"
        self.info[idx]["done"] = hit
        score = 100 if hit else 0
        return {"observation": "You focus.", "reward": score, "score": score, "done": hit}

    def close(self, body: Any) -> Any:
        idx = body["id"]
        if self.info[idx]["deleted"]:
            raise ValueError(f"The task with environment {idx} has been deleted.")
        self.info[idx]["deleted"] = True
        self.ls.remove(idx)
        self.closes += 1
        return True

    def routes(self) -> dict[tuple[str, str], Callable[[Any], Any]]:
        return {
            ("POST", "/create"): self.create,
            ("POST", "/reset"): self.reset,
            ("POST", "/step"): self.step,
            ("POST", "/close"): self.close,
        }
