"""``gymux serve-env NAME``: any gymux environment behind AgentGym's HTTP protocol.

AgentGym's clients and the RL trainers built on them (AgentGym-RL, verl-agent's AgentGym
adapters) talk to one HTTP server per environment. This module serves a gymux plugin the
same way, so those clients use gymux environments unchanged:

=========================  =====================================================
``POST /create``           a new instance -> ``{"id": n}`` (or the family's shape)
``POST /reset``            ``{id, data_idx}`` -> first observation
``POST /step``             ``{id, action}`` -> ``{observation, reward, done, info}``
``GET  /observation?id=``  the latest observation text
``POST /close``            ``{id}`` -> ``{"closed": true}``
``GET  /health``           ``{status, env, dialect, instances, max_instances}``
``GET  /spec``             the env's :class:`~gymux.env_plugins.EnvSpec` as JSON
=========================  =====================================================

Field names and reply shapes follow the plugin's AgentGym family where one exists (the
table in :mod:`gymux.env_plugins.agentgym.dialects`): ``maze`` and ``wordle`` live under
``/maze/`` and ``/wordle/`` and reset with ``game`` / ``seed``, ``sqlgym`` uses ``env_idx``
and ``item_id`` and answers ``state``, BabyAI and SciWorld also answer ``score``, and so on;
other envs speak the ``gymux`` dialect above. ``--dialect`` picks another family.

What AgentGym's own servers do beyond the wire format -- the answer to an empty action, to
stepping a finished episode, the shape of ``GET /observation`` and ``POST /close``, wordle's
spaced-letter guesses and ``b y g g b`` feedback and its ``GET /wordle/filtered_vocab`` --
is copied per family from :mod:`gymux.env_plugins.agentgym.upstream`, so AgentGym's clients
run unmodified. An env that is the family's LMRL-Gym game itself (``lmrl-wordle``, see
:data:`~gymux.env_plugins.agentgym.upstream.LMRL_GAMES`) is served in that family by default
and only relayed: its actions go to it as received, its observations, rewards and ``done``
are upstream's, ``GET /wordle/filtered_vocab`` lists its real filtered vocabulary, and
``/reset`` takes any seed (``seed``, or ``data_idx``), so seed N is AgentGym's game N.

Otherwise failures use real HTTP status codes with a JSON body ``{"error": "<message>"}``:
400 malformed body or missing field, 404 unknown, reaped or evicted instance, 409 the
instance is busy with another call or was not reset (or, in the ``gymux`` dialect, its
episode is over), 422 a field with a bad value (unknown task id, an action that is not a
string), 500 the env failed, 503 a transient env failure (clients retry) or ``/create``
waited ``--create-wait`` seconds at capacity with every instance in a call, 504 an env call
exceeded ``--call-timeout`` (the instance is discarded), 408 a request body that did not
arrive within ``--read-timeout`` (the connection is closed). A family whose upstream
server answers a finished episode with HTTP 200 ``{"error": ...}`` gets exactly that.

Capacity: at ``--max-instances`` a ``/create`` closes the least recently used instance that
is not in a call (AgentGym's clients never close theirs, so the instances of a finished
evaluator run would otherwise hold every slot); its later calls get 404 saying so. The
default cap is the plugin's, raised to 20: AgentGym's default evaluator runs 20 processes,
one never-closed client each.

Hostile bodies are bad requests, not server errors: a number no field can hold (a
5,000-digit integer, or a numeric string of more than 19 digits) and nesting deeper than the
decoder allows are 400s. A client that disconnects mid-request costs one ``info`` log line.
A port already in use is :class:`ServeError` (``gymux serve-env`` prints one line, exit 1).

The action: AgentGym's clients differ in what they send -- the maze, wordle, BabyAI,
SciWorld and TextCraft clients send the text after ``Action:`` (``""`` when there is none),
WebShop and ALFWorld the action their adapter extracted, SQLGym the bare SQL, the tool,
WebArena and SearchQA clients the model's whole output. The server therefore accepts both:
it runs the plugin's own action parser on the text; if that finds no action it retries with
``"Action: "`` prepended; text without any ``Action:`` marker that still does not parse is
taken as the bare action. An action nobody can read is an ordinary step, never an error:
a parse failure of text with a marker, or the env's own :class:`ActionParseError` (maze's
``"fly to the moon"``), answers ``observation = "Invalid action: <why>"``, reward 0,
``done`` false, ``info.invalid_action`` set; an empty action answers the family's upstream
observation (``"Could not execute "``, ``"No change in state."``, ...) or, in families
without one, goes to the env like any other.

Concurrency: each instance has a lock; a second call while one runs gets 409 (AgentGym
clients drive an instance sequentially). Blocking envs run through gymux's adapters (worker
threads or a worker process), never on the event loop. Instances idle for
``--idle-timeout`` seconds are closed by a reaper, a task in the server's own task group:
:class:`EnvServer` is an async resource, and the reaper runs while it is entered (``async with
server``; :func:`serve` does that). Leaving it, and the app's cleanup, close every instance.
SIGINT/SIGTERM stop accepting requests and close every instance.

The command line half (``gymux serve-env``) is :mod:`gymux.cli.serve_env`.
"""

from __future__ import annotations

import errno
import reprlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import anyio
import msgspec
import structlog
from aiohttp import web

from gymux._lifecycle import AsyncResource
from gymux.env_plugins.adapters import factory_ref, make_instance
from gymux.env_plugins.agentgym.dialects import DIALECTS, GYMUX_ACTIONS_KEY, Dialect
from gymux.env_plugins.agentgym.upstream import (
    EVALUATOR_CLIENTS,
    LMRL_GAMES,
    WORDLE_START,
    Upstream,
    WordleGame,
    available_actions_line,
    finished_error,
    split_task_description,
    upstream_for,
    wordle_guess,
    wordle_vocabulary,
)
from gymux.env_plugins.protocol import (
    ActionParseError,
    Env,
    EnvError,
    EnvPlugin,
    Execution,
    Observation,
    StepResult,
    Task,
    TransientEnvError,
)
from gymux.errors import GymuxError
from gymux.react import ACTION_MARKER

__all__ = [
    "EnvServer",
    "HttpError",
    "ServeError",
    "default_dialect",
    "default_max_instances",
    "serve",
]

_log = structlog.get_logger("gymux.env_plugins.agentgym.server")


#: Longest numeric string accepted for an integer field (int64 has 19 digits).
_MAX_DIGITS = 19
#: How many removed instances' reasons (reaped, evicted, closed) a 404 can still name.
_GONE_KEPT = 10_000


class ServeError(GymuxError):
    """The server cannot start (its address is in use, ...): one line for the user."""


class HttpError(Exception):
    """Ends a request with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Slot:
    __slots__ = (
        "closing",
        "env",
        "filtered",
        "first",
        "goal",
        "last_used",
        "lock",
        "observation",
        "over",
        "reward",
        "task",
        "wordle",
    )

    def __init__(self, env: Env) -> None:
        self.env = env
        self.lock = anyio.Lock()
        self.last_used = time.monotonic()
        self.task: Task | None = None
        self.observation: Observation | None = None
        #: The reset observation's text (SQLGym's ``GET /observation`` answers it).
        self.first = ""
        self.over = False
        self.closing = False
        #: The latest step's reward (BabyAI's ``GET /observation`` reports it).
        self.reward = 0.0
        #: The reset observation's ``Your goal: ...`` line (BabyAI's observation repeats it).
        self.goal = ""
        self.wordle = WordleGame()
        #: An LMRL-Gym game env's filtered vocabulary after the last guess (``None``: the
        #: whole vocabulary, as before any guess).
        self.filtered: list[str] | None = None


def default_max_instances(plugin: EnvPlugin) -> int:
    """The plugin's instance cap, raised to what AgentGym's default evaluator holds (20)."""
    return max(plugin.max_instances, EVALUATOR_CLIENTS)


def default_dialect(plugin: EnvPlugin) -> Dialect:
    """The AgentGym family named like the env (maze, wordle, babyai, ...), else ``gymux``.

    An env that is an AgentGym game under another name (``lmrl-wordle``) gets its family.
    """
    name = plugin.id.rsplit("/", 1)[-1]
    name = LMRL_GAMES.get(name, name)
    if name in DIALECTS and name not in {"tool", "gymux"}:
        return DIALECTS[name]
    return DIALECTS["gymux"]


class EnvServer(AsyncResource):
    """The HTTP app serving one plugin; :meth:`app` builds the aiohttp application.

    Its lifetime: ``async with server`` starts the idle-instance reaper in the server's task
    group; leaving stops it and closes every instance (as the app's cleanup does too).
    """

    def __init__(
        self,
        plugin: EnvPlugin,
        *,
        dialect: Dialect | None = None,
        max_instances: int | None = None,
        idle_timeout_s: float = 600.0,
        call_timeout_s: float = 300.0,
        read_timeout_s: float = 30.0,
        create_wait_s: float = 30.0,
    ) -> None:
        if max_instances is None:
            max_instances = default_max_instances(plugin)
        if max_instances < 1:
            raise ValueError("max_instances must be >= 1")
        self.plugin = plugin
        self.dialect = dialect or default_dialect(plugin)
        upstream = upstream_for(self.dialect.name)
        name = plugin.id.rsplit("/", 1)[-1]
        #: The env *is* the family's LMRL-Gym game (``lmrl-wordle``): actions go to it as
        #: received and its observations are upstream's, so the server only relays.
        self.lmrl_game = LMRL_GAMES.get(name) == self.dialect.name
        if upstream.wordle and name != "wordle" and not self.lmrl_game:
            # LMRL-Gym's guess format only makes sense for a wordle game.
            upstream = msgspec.structs.replace(upstream, wordle=False)
        self.upstream: Upstream = upstream
        self.max_instances = max_instances
        self.idle_timeout_s = idle_timeout_s
        self.call_timeout_s = call_timeout_s
        self.read_timeout_s = read_timeout_s
        self.create_wait_s = create_wait_s
        self._slots: dict[int, _Slot] = {}
        self._reserved = 0
        self._next_id = 0
        self._gone: dict[int, str] = {}
        self._freed = anyio.Event()
        self._limiter = anyio.CapacityLimiter(max_instances)
        self._process_ref = factory_ref(plugin) if plugin.execution is Execution.PROCESS else None
        self._task_split = {tid: s.name for s in plugin.spec.splits.values() for tid in s.ids}
        self._vocabulary: tuple[str, ...] | None = None
        self._vocabulary_frozen: frozenset[str] | None = None
        self._stack: AsyncExitStack | None = None

    # -- application ------------------------------------------------------------------

    def app(self) -> web.Application:
        d = self.dialect
        app = web.Application(middlewares=[_errors])
        routes = [
            web.post(d.path("/create"), self._create),
            web.post(d.path("/reset"), self._reset),
            web.post(d.path("/step"), self._step),
            web.get(d.path("/observation"), self._observation),
            web.post(d.path("/close"), self._close),
            web.get(d.path("/available_actions"), self._available_actions),
            *(
                [web.get(d.path("/filtered_vocab"), self._filtered_vocab)]
                if self.upstream.wordle
                else []
            ),
            web.get("/health", self._health),
            web.get("/spec", self._spec),
            web.get("/", self._hello),
        ]
        if d.prefix:
            routes.append(web.get(d.path("/health"), self._health))
        app.add_routes(routes)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.close_all()

    async def aopen(self) -> None:
        """Start the reaper in the server's task group."""
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._reap_forever)
        stack.callback(tg.cancel_scope.cancel)  # runs first: the reaper stops, then the group
        self._stack = stack

    async def aclose(self) -> None:
        """Stop the reaper and close every instance."""
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            await self.close_all()

    @property
    def instances(self) -> int:
        return len(self._slots)

    async def close_all(self) -> None:
        """Close every instance (shutdown)."""
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            await self._dispose(slot)

    async def _dispose(self, slot: _Slot) -> None:
        slot.closing = True
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(self.call_timeout_s):
                    await slot.env.close()
            except Exception as exc:  # closing must not fail the server
                _log.warning("env close failed", env=self.plugin.id, error=repr(exc))

    # -- reaping ----------------------------------------------------------------------

    async def reap_idle(self, now: float | None = None) -> list[int]:
        """Close instances idle for longer than the idle timeout; their ids."""
        now = time.monotonic() if now is None else now
        stale = [
            i
            for i, s in self._slots.items()
            if not s.lock.locked() and now - s.last_used > self.idle_timeout_s
        ]
        for i in stale:
            await self._remove(i, "was closed after being idle")
            _log.info("idle instance reaped", env=self.plugin.id, id=i)
        return stale

    async def _remove(self, instance: int, why: str) -> None:
        """Drop ``instance`` (its later calls get 404 saying ``why``) and close its env."""
        slot = self._slots.pop(instance, None)
        if slot is None:
            return
        self._gone[instance] = why
        if len(self._gone) > _GONE_KEPT:  # remember the newest only (dicts keep order)
            del self._gone[next(iter(self._gone))]
        self._signal_freed()
        await self._dispose(slot)

    def _signal_freed(self) -> None:
        """Wake ``/create`` calls waiting for room (a slot went idle or away)."""
        self._freed.set()
        self._freed = anyio.Event()

    # -- capacity ---------------------------------------------------------------------

    def _lru_idle(self) -> int | None:
        """The least recently used instance that no call is using, if any."""
        idle = [(s.last_used, i) for i, s in self._slots.items() if not s.lock.locked()]
        return min(idle)[1] if idle else None

    async def _make_room(self) -> None:
        """Wait until one more instance fits under the cap.

        At the cap, the least recently used idle instance is closed to make room (its
        later calls get 404 saying so): AgentGym's clients never close their instances,
        so a new evaluator run would otherwise find the slots of the last one taken. When
        every instance is in a call, wait up to ``create_wait_s`` for one to finish; 503
        after that.
        """
        with anyio.move_on_after(self.create_wait_s):
            while len(self._slots) + self._reserved >= self.max_instances:
                victim = self._lru_idle()
                if victim is not None:
                    _log.info("evicting least recently used instance", id=victim)
                    await self._remove(
                        victim, "was closed to make room (least recently used at the cap)"
                    )
                    continue
                await self._freed.wait()
            return
        raise HttpError(
            503,
            f"at capacity ({self.max_instances} instances, all in a call) for "
            f"{self.create_wait_s:g} s",
        )

    async def _reap_forever(self) -> None:
        period = max(0.05, min(self.idle_timeout_s / 4, 5.0))
        while True:
            await anyio.sleep(period)
            await self.reap_idle()

    # -- request helpers --------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            with anyio.fail_after(self.read_timeout_s):
                raw = await request.read()
        except TimeoutError:
            raise HttpError(
                408, f"request body not received within {self.read_timeout_s:g} s"
            ) from None
        if not raw.strip():
            return {}
        try:
            body = msgspec.json.decode(raw)
        except msgspec.ValidationError as exc:  # e.g. an integer of 5,000 digits
            raise HttpError(400, f"request body has a value out of range: {exc}") from None
        except msgspec.DecodeError as exc:
            raise HttpError(400, f"request body is not JSON: {exc}") from None
        except RecursionError:
            raise HttpError(400, "request body is nested too deeply") from None
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise HttpError(400, "request body must be a JSON object")
        return body

    def _int_field(self, body: dict[str, Any], name: str) -> int:
        if name not in body:
            raise HttpError(400, f"missing field {name!r}")
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, int):
            digits = value.strip().lstrip("-") if isinstance(value, str) else ""
            if digits.isdigit() and len(digits) <= _MAX_DIGITS:
                return int(value)
            raise HttpError(400, f"field {name!r} must be an integer, got {reprlib.repr(value)}")
        return value

    def _slot(self, instance: int) -> _Slot:
        slot = self._slots.get(instance)
        if slot is None or slot.closing:
            why = self._gone.get(instance, "does not exist")
            raise HttpError(404, f"instance {instance} {why}")
        return slot

    async def _locked(self, slot: _Slot, instance: int, call: Callable[[], Awaitable[Any]]) -> Any:
        if slot.lock.locked():
            raise HttpError(409, f"instance {instance} is busy with another call")
        try:
            async with slot.lock:
                slot.last_used = time.monotonic()
                try:
                    with anyio.fail_after(self.call_timeout_s):
                        return await call()
                except TimeoutError:
                    why = f"was discarded after a call past {self.call_timeout_s:g} s"
                    await self._remove(instance, why)
                    raise HttpError(
                        504,
                        f"env call exceeded {self.call_timeout_s:g} s; instance {instance} "
                        "discarded",
                    ) from None
                except TransientEnvError as exc:
                    raise HttpError(503, f"transient env failure: {exc}") from None
                except EnvError as exc:
                    raise HttpError(500, f"env error: {exc}") from None
                finally:
                    slot.last_used = time.monotonic()
        finally:
            self._signal_freed()  # the slot is idle again: a waiting /create may evict it

    def _json(self, payload: Any, status: int = 200) -> web.Response:
        return web.Response(
            body=msgspec.json.encode(payload), status=status, content_type="application/json"
        )

    # -- routes -----------------------------------------------------------------------

    async def _hello(self, request: web.Request) -> web.Response:
        return web.Response(text=f"This is gymux environment {self.plugin.id}.")

    async def _health(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "status": "ok",
                "env": self.plugin.id,
                "version": self.plugin.spec.version,
                "dialect": self.dialect.name,
                "instances": len(self._slots),
                "max_instances": self.max_instances,
            }
        )

    async def _spec(self, request: web.Request) -> web.Response:
        return self._json(self.plugin.spec)

    async def _create(self, request: web.Request) -> web.Response:
        await self._body(request)  # AgentGym families send bodies we do not need
        await self._make_room()
        self._reserved += 1
        try:
            env = await make_instance(self.plugin, self._limiter, self._process_ref)
        except EnvError as exc:
            raise HttpError(500, f"cannot create an instance: {exc}") from None
        finally:
            self._reserved -= 1
        instance = self._next_id
        self._next_id += 1
        self._slots[instance] = _Slot(env)
        d = self.dialect
        if d.create_reply == "bare":
            return self._json(instance)
        reply: dict[str, Any] = {d.id_field: instance}
        if d.create_body is not None and "commands" in d.create_body:
            # textcraft answers {id, observation, done, reward}; reset sets the observation.
            reply.update(observation="", done=False, reward=0)
        return self._json(reply)

    def _vocabulary_words(self) -> tuple[str, ...]:
        if self._vocabulary is None:
            self._vocabulary = wordle_vocabulary(self.plugin.factory)
        return self._vocabulary

    async def _reset(self, request: web.Request) -> web.Response:
        d = self.dialect
        body = await self._body(request)
        instance = self._int_field(body, d.id_field)
        field = d.reset_field
        if self.lmrl_game and field not in body and "data_idx" in body:
            field = "data_idx"  # gymux's own name for the task id
        task_id = self._int_field(body, field)
        slot = self._slot(instance)
        split = self._task_split.get(task_id)
        if split is None and self.lmrl_game:
            split = ""  # every seed is a game, as on AgentGym's server
        if split is None:
            raise HttpError(422, f"env {self.plugin.id!r} has no task {task_id}")
        task = Task(id=task_id, split=split)

        async def call() -> Observation:
            return await slot.env.reset(task)

        obs: Observation = await self._locked(slot, instance, call)
        slot.task, slot.observation, slot.over, slot.reward = task, obs, False, 0.0
        slot.first = obs.text
        slot.goal = obs.text.partition("\n")[0] if obs.text.startswith("Your goal:") else ""
        slot.wordle.reset()
        slot.filtered = None
        if self.upstream.wordle:
            # LMRL-Gym's wordle answers {id, observation: "Let's start Wordle!"}.
            slot.observation = Observation(text=WORDLE_START)
            return self._json({d.id_field: instance, "observation": WORDLE_START})
        if d.reset_reply == "pair":
            return self._json([obs.text, None])
        if d.reset_reply == "text":
            return self._json(obs.text)
        reply: dict[str, Any] = {k: "" for k in d.reset_obs_keys}
        reply.update(observation=obs.text, reward=0.0, score=0.0, done=False)
        if self.upstream.splits_task_description:
            reply["task_description"], reply["observation"] = split_task_description(obs.text)
        reply[d.id_field] = instance
        self._add_actions(reply, obs.admissible_actions)
        return self._json(reply)

    def _add_actions(self, reply: dict[str, Any], actions: list[str] | None) -> None:
        """The admissible actions: under the family's key where it has one; else, when the
        env can list them, under ``available_actions`` -- an extra field AgentGym's clients
        ignore and gymux's client reads, so a bridged env keeps its action list."""
        key = self.dialect.actions_key
        if key:
            reply[key] = actions or []
        elif actions is not None:
            reply[GYMUX_ACTIONS_KEY] = actions

    def _parse(self, text: str) -> str:
        parse = self.plugin.parse_action
        try:
            return parse(text)
        except ActionParseError as first:
            try:
                return parse(f"Action: {text}")
            except ActionParseError:
                if ACTION_MARKER.search(text):
                    raise first from None
                return text.strip()

    async def _step(self, request: web.Request) -> web.Response:
        d = self.dialect
        up = self.upstream
        body = await self._body(request)
        instance = self._int_field(body, d.id_field)
        if "action" not in body:
            raise HttpError(400, "missing field 'action'")
        text = body["action"]
        if not isinstance(text, str):
            raise HttpError(422, f"field 'action' must be a string, got {reprlib.repr(text)}")
        slot = self._slot(instance)
        if slot.lock.locked():
            raise HttpError(409, f"instance {instance} is busy with another call")
        if slot.task is None:
            raise HttpError(409, f"instance {instance} has not been reset")
        if slot.over:
            return self._after_done(slot, instance)
        if self.lmrl_game:
            return await self._lmrl_step(slot, instance, text)
        if up.wordle:
            return await self._wordle_step(slot, instance, text)
        if not text.strip() and up.empty_observation is not None:
            # AgentGym's clients send "" when the output has no "Action:"; the family's
            # server answers its no-op observation.
            message = up.empty_observation
            if up.lists_actions and slot.observation is not None:
                message += available_actions_line(slot.observation.admissible_actions or [])
            return self._feedback(slot, message, {"empty_action": True})
        try:
            action = self._parse(text)
        except ActionParseError as exc:
            return self._feedback(slot, f"Invalid action: {exc}", {"invalid_action": str(exc)})

        async def call() -> Any:
            try:
                return await slot.env.step(action)
            except ActionParseError as exc:  # the env's own verdict (maze: "fly to the moon")
                return exc

        result = await self._locked(slot, instance, call)
        if isinstance(result, ActionParseError):
            why = str(result)
            return self._feedback(slot, f"Invalid action: {why}", {"invalid_action": why})
        slot.observation, slot.over, slot.reward = result.observation, result.done, result.reward
        return self._step_reply(
            result.observation.text,
            result.reward,
            result.done,
            dict(result.info),
            result.observation.admissible_actions,
        )

    def _feedback(self, slot: _Slot, message: str, info: dict[str, Any]) -> web.Response:
        """A step the env did not take (no action, or one it cannot read): reward 0, not
        done; the admissible actions stay those of the last observation."""
        actions = slot.observation.admissible_actions if slot.observation else None
        slot.observation = Observation(text=message, admissible_actions=actions)
        slot.reward = 0.0
        return self._step_reply(message, 0.0, False, info, actions)

    def _after_done(self, slot: _Slot, instance: int) -> web.Response:
        """Stepping a finished episode, as the family's upstream server answers it."""
        mode = self.upstream.after_done
        if mode == "error":
            return self._json(finished_error(instance))
        if mode == "final":
            text = slot.observation.text if slot.observation else ""
            return self._step_reply(text, 0.0, True, {"episode_over": True}, None)
        raise HttpError(409, f"the episode of instance {instance} is over; reset it")

    async def _wordle_step(self, slot: _Slot, instance: int, text: str) -> web.Response:
        """One guess in LMRL-Gym's format: spaced letters in, ``b y g g b`` out."""
        guess = wordle_guess(text, self._vocabulary_set())
        result: Any = None
        if guess is not None:

            async def call() -> Any:
                try:
                    return await slot.env.step(guess)
                except ActionParseError as exc:
                    return exc

            result = await self._locked(slot, instance, call)
        info = result.info if isinstance(result, StepResult) else {}
        pattern = info.get("feedback")
        reward = 0.0
        if guess is None or not isinstance(result, StepResult) or info.get("valid") is False:
            message, done = slot.wordle.invalid()
        elif isinstance(pattern, str) and len(pattern) == len(guess):
            message, done = slot.wordle.scored(guess, pattern, result.done)
            reward = float(result.reward)
        else:  # a wordle env that reports no g/y/b pattern: its own text, one try used
            message, done = slot.wordle.passed(result.observation.text, result.done)
            reward = float(result.reward)
        slot.observation, slot.over, slot.reward = Observation(text=message), done, reward
        return self._json({"observation": message, "reward": reward, "done": done})

    async def _lmrl_step(self, slot: _Slot, instance: int, text: str) -> web.Response:
        """A step of an env that is the LMRL-Gym game itself: the action as received (the
        game reads it as upstream does), the game's own observation, reward and done."""

        async def call() -> StepResult:
            return await slot.env.step(text)

        result: StepResult = await self._locked(slot, instance, call)
        slot.observation, slot.over = result.observation, result.done
        slot.reward = result.reward
        filtered = result.info.get("filtered_vocab")
        if isinstance(filtered, list):
            slot.filtered = [str(w) for w in filtered]
        # Upstream's JSON: LMRL-Gym's integer rewards shifted by 1 for a valid guess (0, 1),
        # the float bad-word reward shifted for an invalid one (0.0).
        reward: float | int = result.reward
        if result.info.get("valid") is True and float(result.reward).is_integer():
            reward = int(result.reward)
        return self._json(
            {"observation": result.observation.text, "reward": reward, "done": result.done}
        )

    def _vocabulary_set(self) -> frozenset[str]:
        if self._vocabulary_frozen is None:
            self._vocabulary_frozen = frozenset(self._vocabulary_words())
        return self._vocabulary_frozen

    async def _filtered_vocab(self, request: web.Request) -> web.Response:
        """``GET /wordle/filtered_vocab?id=``: the words the feedback so far allows."""
        instance = self._query_id(request)
        slot = self._slot(instance)
        if slot.over:
            return self._json(finished_error(instance))
        if self.lmrl_game:
            words = slot.filtered if slot.filtered is not None else self._vocabulary_words()
            return self._json(list(words))
        return self._json(slot.wordle.filtered(self._vocabulary_words()))

    def _step_reply(
        self, text: str, reward: float, done: bool, info: dict[str, Any], actions: list[str] | None
    ) -> web.Response:
        d = self.dialect
        reply: dict[str, Any] = {"observation": text, "reward": reward, "info": info}
        reply[d.step_obs_key] = text
        reply[d.reward_key] = reward
        reply["done"] = done
        if "terminated" in d.done_keys:
            reply.update(terminated=done, truncated=False)
        self._add_actions(reply, actions)
        return self._json(reply)

    def _query_id(self, request: web.Request) -> int:
        name = self.dialect.id_field
        value = request.query.get(name)
        if value is None:
            raise HttpError(400, f"missing query parameter {name!r}")
        try:
            return int(value)
        except ValueError:
            raise HttpError(400, f"query parameter {name!r} must be an integer") from None

    async def _observation(self, request: web.Request) -> web.Response:
        instance = self._query_id(request)
        slot = self._slot(instance)
        if slot.observation is None:
            raise HttpError(409, f"instance {instance} has not been reset")
        slot.last_used = time.monotonic()
        if slot.over and self.upstream.after_done == "error":
            return self._json(finished_error(instance))
        text = slot.observation.text
        if self.upstream.observation_shape == "reset":
            return self._json(slot.first)
        if self.upstream.observation_shape == "babyai":
            # BabyAI's /observation: {observation: "Your goal: ...\n<obs>", reward, score,
            # done, deleted}.
            if slot.goal and not text.startswith(slot.goal):
                text = f"{slot.goal}\n{text}"
            return self._json(
                {
                    "observation": text,
                    "reward": slot.reward,
                    "score": slot.reward,
                    "done": slot.over,
                    "deleted": False,
                }
            )
        return self._json(text)

    async def _available_actions(self, request: web.Request) -> web.Response:
        instance = self._query_id(request)
        slot = self._slot(instance)
        if slot.observation is None:
            raise HttpError(409, f"instance {instance} has not been reset")
        return self._json(slot.observation.admissible_actions or [])

    async def _close(self, request: web.Request) -> web.Response:
        d = self.dialect
        body = await self._body(request)
        instance = self._int_field(body, d.id_field)
        slot = self._slot(instance)
        slot.closing = True
        async with slot.lock:  # let a running call finish first
            await self._remove(instance, "was closed")
        if d.close_reply_text:
            return web.Response(text="closed")
        if self.upstream.close_reply == "true":
            return self._json(True)
        return self._json({"closed": True, d.id_field: instance})


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except HttpError as exc:
        response = web.Response(
            body=msgspec.json.encode({"error": exc.message}),
            status=exc.status,
            content_type="application/json",
        )
        if exc.status == 408:
            response.force_close()
        return response
    except (ConnectionError, aiohttp.ClientConnectionError) as exc:
        # The client went away mid-request: nothing to answer, nothing wrong here.
        _log.info("client disconnected", path=request.path, error=type(exc).__name__)
        raise web.HTTPBadRequest(reason="client disconnected") from None
    except web.HTTPException as exc:
        return web.Response(
            body=msgspec.json.encode({"error": exc.reason}),
            status=exc.status,
            content_type="application/json",
        )
    except Exception as exc:  # a bug must not kill the server
        _log.exception("request failed", path=request.path)
        return web.Response(
            body=msgspec.json.encode({"error": f"internal error: {exc!r}"}),
            status=500,
            content_type="application/json",
        )


async def serve(
    server: EnvServer,
    host: str,
    port: int,
    *,
    out: Callable[[str], None],
) -> None:
    """Serve until cancelled, then close every instance.

    ``gymux serve-env`` runs this inside :func:`gymux.cli.common.cancel_on_signals`, so
    SIGINT/SIGTERM end it.
    """
    try:
        async with server:
            runner = web.AppRunner(server.app(), handle_signals=False)
            await runner.setup()
            try:
                site = web.TCPSite(runner, host, port)
                try:
                    await site.start()
                except OSError as exc:
                    why = "address already in use" if exc.errno == errno.EADDRINUSE else None
                    raise ServeError(
                        f"cannot listen on {host}:{port}: {why or exc.strerror or exc}"
                    ) from None
                bound = [a for a in runner.addresses if isinstance(a, tuple)]
                real_port = bound[0][1] if bound else port
                shown = f"[{host}]" if ":" in host else host
                out(
                    f"gymux serve-env: {server.plugin.id} ({server.dialect.name} dialect) "
                    f"listening on http://{shown}:{real_port}{server.dialect.prefix}"
                )
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await runner.cleanup()
    finally:
        out("gymux serve-env: stopped")
