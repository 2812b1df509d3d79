"""``agentgym``: drive any AgentGym environment server over HTTP.

::

    from gymux.env_plugins.agentgym.client import agentgym_plugin

    plugin = agentgym_plugin("webshop", "http://host:36001", tasks=range(200))
    registry.register(plugin)          # id "agentgym/webshop"

or, without code, ``gymux run --env agentgym/webshop --agentgym-url http://host:36001
--tasks 0-199`` and, in a suite, ``[[envs]] id = "agentgym/webshop"  url = "http://..."
tasks = 200``.

Each instance of the env owns one AgentGym instance on the server (``POST /create`` on the
first reset; created again if a reset finds it gone -- HTTP 404, e.g. reaped while idle) and
one :class:`aiohttp.ClientSession`, both released by ``close()`` (``POST /close`` where the
family has one). The wire
format of each server family -- instance field, reset field, route prefix, reply shapes,
whether ``/close`` exists -- is the family's :class:`~gymux.env_plugins.agentgym.dialects.
Dialect` (see that module for the upstream source of every fact). The task id is sent as the
family's reset index (``data_idx``, ``game``, ``seed``, ``session_id``, ``item_id``, ``id``,
``idx`` or ``task_id``), so ``agentgym/<env>`` task ids are AgentGym's dataset indices.

Errors are typed:

* a reply ``{"error": "..."}`` (even with HTTP 200, as LMRL-Gym's servers answer) and any 4xx
  raise :class:`AgentGymError` (an :class:`~gymux.env_plugins.protocol.EnvError`) carrying
  the server's message: the episode ends with ``env_error``;
* a reply that does not have its route's shape in the family's dialect (decoded into the
  msgspec Structs of :mod:`~gymux.env_plugins.agentgym.replies`) raises
  :class:`AgentGymError` naming the route, the field and the reply;
* 5xx, connection failures and timeouts are transient: retried with exponential backoff and
  equal jitter (:func:`gymux._backoff.backoff_delay`), then raised as
  :class:`AgentGymTransientError` (a :class:`~gymux.env_plugins.protocol.TransientEnvError`,
  so the scheduler reruns the episode on a fresh instance). ``/step`` is not idempotent, so a
  step is retried only when the server cannot have applied it (connection refused, HTTP 503);
  a step that timed out is not resent.

Every HTTP call is bounded by ``timeout_s``. Reward and success: the family's reward field
(``score`` for SciWorld and BabyAI, as AgentGym's clients report it); success is
``reward >= threshold``, the family's ``success_threshold`` (babyai 0.05, i.e. gymux's
``reward > 0``; sciworld 100; else 1) unless ``success_threshold`` says otherwise. AgentGym's
own rule (``reward == 1``) is reported beside it by the eval metrics.

One server instance per episode, never two episodes on one instance. The instances of one
plugin share a :class:`ServerLedger`: which server ids this process holds and whether an
episode runs on each. For a family with a ``capacity`` (SQLGym: 8; its server answers ids
still in use past that), or with ``max_instances`` given, at most that many server
instances are created; past it a reset adopts an instance whose episode is over (ended with
``done``, or its holder reset or closed), waits for one, and after ``idle_grace_s`` takes
one whose holder has no call in flight (an episode that ended without ``done``: the bridge
is not told; should that episode go on, its next step fails). Signs that an instance is
shared anyway -- ``/create`` answering an id this process holds, a reset reply naming
another id, ``GET /observation`` showing another task after a step (families with
``verify_observation``) -- raise :class:`AgentGymError`: the episode ends with
``env_error`` and is never scored.

Admissible actions: the family's list key when it has one, else those its observations
name (:func:`~gymux.env_plugins.agentgym.dialects.actions_in`: babyai's ``Available
actions``, textcraft's crafting commands), or for wordle the words of
``GET /wordle/filtered_vocab`` spelled with spaces, so the random policy works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from weakref import ref

import aiohttp
import anyio
import msgspec
import structlog

from gymux._backoff import backoff_delay
from gymux.env_plugins.agentgym.dialects import (
    AGENTGYM_ENVS,
    DIALECTS,
    Dialect,
    actions_in,
    dialect_for,
    extract_action,
    spaced_word,
)
from gymux.env_plugins.agentgym.replies import (
    AgentGymError,
    ObservationReply,
    decode,
    reply_types,
)
from gymux.env_plugins.protocol import (
    EnvPlugin,
    EnvSpec,
    Observation,
    StepResult,
    SuccessRule,
    Task,
    splits_from,
)
from gymux.errors import ConfigError, EnvError, TransientEnvError

__all__ = [
    "AGENTGYM_ENVS",
    "DIALECTS",
    "PREFIX",
    "AgentGymEnv",
    "AgentGymError",
    "AgentGymTransientError",
    "ServerLedger",
    "agentgym_plugin",
    "bridge_name",
    "register_bridges",
]

#: Env ids of bridged envs: ``agentgym/<env>``.
PREFIX = "agentgym/"
_log = structlog.get_logger("gymux.agentgym")

if TYPE_CHECKING:
    from gymux.config import Workload
    from gymux.env_plugins.registry import Registry


#: Seconds ``close()`` waits for ``POST /close``.
_CLOSE_TIMEOUT_S = 5.0
#: Instances per bridged server when the family names no capacity.
DEFAULT_MAX_INSTANCES = 16
#: Seconds a reset waits for a free server instance when the cap is reached.
_ACQUIRE_TIMEOUT_S = 600.0
#: Seconds a reset waits for an episode to end before it takes an instance whose holder
#: has no call in flight (that holder's next step then fails, unscored).
_IDLE_GRACE_S = 5.0


class AgentGymTransientError(TransientEnvError):
    """The server was unreachable, timed out or failed (5xx) on every try."""

    def __init__(self, message: str, *, status: int | None = None, route: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.route = route


class _Retry(Exception):
    """One attempt failed transiently; ``resend_ok``: the request surely was not applied."""

    def __init__(self, message: str, *, status: int | None, resend_ok: bool) -> None:
        super().__init__(message)
        self.status = status
        self.resend_ok = resend_ok


class _ErrorBody(msgspec.Struct):
    """The fields servers put their error message in (FastAPI: ``detail``)."""

    error: Any = msgspec.UNSET
    detail: Any = msgspec.UNSET
    message: Any = msgspec.UNSET


def _error_body(payload: Any) -> _ErrorBody | None:
    try:
        return msgspec.convert(payload, _ErrorBody)
    except msgspec.ValidationError:  # not an object: no error fields
        return None


def _error_message(payload: Any, text: str) -> str:
    body = _error_body(payload)
    if body is not None:
        for value in (body.error, body.detail, body.message):
            if value is not msgspec.UNSET:
                return str(value)
    return text.strip()[:500] or "(empty body)"


class ServerLedger:
    """The server instances one bridged env holds: who holds each id, and whether an
    episode runs on it. Shared by a plugin's instances; plain data, touched only between
    awaits on the event loop, so it needs no lock."""

    def __init__(self, cap: int | None = None) -> None:
        #: Most server instances to create (``None``: no cap).
        self.cap = cap
        #: Server id -> the holder (a weak reference), ``None`` for a free instance the
        #: server still keeps (closed by a family without ``/close``).
        self.holders: dict[Any, ref[AgentGymEnv] | None] = {}
        #: Ids whose episode is running.
        self.busy: set[Any] = set()
        #: ``/create`` calls in flight.
        self.creating = 0
        self._waiters: list[anyio.Event] = []

    def holder(self, instance_id: Any) -> AgentGymEnv | None:
        held = self.holders.get(instance_id)
        return held() if held is not None else None

    def room(self) -> bool:
        """May another server instance be created?"""
        return self.cap is None or len(self.holders) + self.creating < self.cap

    def take_free(self, env: AgentGymEnv) -> Any:
        """Hand ``env`` an instance no episode runs on (``None`` if there is none): a free
        one first, else one whose holder's episode is over (the holder loses it and gets
        another at its next reset)."""
        idle = [i for i in self.holders if i not in self.busy]
        for instance_id in idle:
            if self.holder(instance_id) is None:
                self._give(instance_id, env)
                return instance_id
        for instance_id in idle:
            old = self.holder(instance_id)
            if old is not None and old is not env:
                old.instance_id = None
                self._give(instance_id, env)
                return instance_id
        return None

    def take_quiet(self, env: AgentGymEnv) -> Any:
        """Hand ``env`` an instance whose episode has not ended but whose holder has no call
        in flight (it may be over: the bridge is not told when an episode ends without
        ``done``). The holder is marked so that its next step fails instead of running on
        an instance that is no longer its own."""
        for instance_id in self.busy:
            old = self.holder(instance_id)
            if old is not None and old is not env and not old.in_flight:
                old.instance_id = None
                old.lost = instance_id
                self.busy.discard(instance_id)
                self._give(instance_id, env)
                return instance_id
        return None

    def _give(self, instance_id: Any, env: AgentGymEnv) -> None:
        self.holders[instance_id] = ref(env)

    def claim(self, instance_id: Any, env: AgentGymEnv) -> None:
        """Record that ``/create`` answered ``instance_id`` to ``env``; AgentGymError if
        another holder of this process has it (the server shares instances)."""
        other = self.holder(instance_id)
        if other is not None and other is not env:
            raise AgentGymError(
                f"agentgym/{env.env}: /create answered instance {instance_id!r}, which another "
                "episode of this run still holds: the server hands out instances that are in "
                f"use{_capacity_hint(env.dialect)}. The episode is not scored; lower the "
                "concurrency or max_instances",
                route="/create",
            )
        self._give(instance_id, env)

    def start(self, instance_id: Any) -> None:
        self.busy.add(instance_id)

    def finish(self, instance_id: Any) -> None:
        """The episode on ``instance_id`` is over: its instance may be adopted."""
        self.busy.discard(instance_id)
        self._wake()

    def drop(self, instance_id: Any, *, server_keeps: bool) -> None:
        """The holder let ``instance_id`` go; ``server_keeps``: it still exists (no close)."""
        self.busy.discard(instance_id)
        if server_keeps:
            self.holders[instance_id] = None
        else:
            self.holders.pop(instance_id, None)
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for event in waiters:
            event.set()

    async def wait(self) -> None:
        event = anyio.Event()
        self._waiters.append(event)
        await event.wait()


def _capacity_hint(dialect: Dialect) -> str:
    if dialect.capacity is None:
        return ""
    return f" (the {dialect.name} server holds at most {dialect.capacity})"


class AgentGymEnv:
    """One AgentGym server instance, as an async gymux :class:`~gymux.env_plugins.Env`."""

    def __init__(
        self,
        env: str,
        url: str,
        dialect: Dialect,
        *,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        ledger: ServerLedger | None = None,
        acquire_timeout_s: float = _ACQUIRE_TIMEOUT_S,
        idle_grace_s: float = _IDLE_GRACE_S,
    ) -> None:
        self.env = env
        self.base = url.rstrip("/")
        self.dialect = dialect
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.replies = reply_types(dialect)
        self.instance_id: Any = None
        self.ledger = ledger if ledger is not None else ServerLedger(dialect.capacity)
        self.acquire_timeout_s = acquire_timeout_s
        self.idle_grace_s = idle_grace_s
        #: HTTP calls in flight (an instance is never taken from a holder mid-call).
        self.in_flight = 0
        #: The instance another episode took from this one mid-episode, if any.
        self.lost: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        #: The episode's admissible actions when only its first observation lists them
        #: (textcraft's crafting commands, wordle's vocabulary).
        self._episode_actions: list[str] | None = None
        self._vocab: list[str] | None = None
        #: ``GET /observation`` right after the reset (families with verify_observation).
        self._task_view: str | None = None

    # -- HTTP -------------------------------------------------------------------------

    def _session_now(self) -> aiohttp.ClientSession:
        if self._closed:
            raise EnvError(f"agentgym/{self.env}: instance is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        return self._session

    async def _once(
        self, method: str, route: str, body: Any, params: dict[str, Any] | None, text: bool
    ) -> Any:
        session = self._session_now()
        url = self.base + self.dialect.path(route)
        try:
            async with session.request(method, url, json=body, params=params) as resp:
                raw = await resp.text()
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            raise _Retry(f"cannot connect to {url}: {exc}", status=None, resend_ok=True) from exc
        except TimeoutError as exc:
            raise _Retry(
                f"{method} {url} timed out after {self.timeout_s}s", status=None, resend_ok=False
            ) from exc
        except aiohttp.ClientError as exc:
            raise _Retry(f"{method} {url} failed: {exc!r}", status=None, resend_ok=False) from exc
        payload: Any = None
        if not text or status != 200:
            try:
                payload = msgspec.json.decode(raw) if raw.strip() else None
            except msgspec.DecodeError:
                if status == 200:
                    raise AgentGymError(
                        f"agentgym/{self.env}: {route} answered non-JSON: {raw[:200]!r}",
                        status=status,
                        route=route,
                    ) from None
        if status >= 500:
            raise _Retry(
                f"{method} {url} -> HTTP {status}: {_error_message(payload, raw)}",
                status=status,
                resend_ok=status == 503,
            )
        if status >= 400:
            raise AgentGymError(
                f"agentgym/{self.env}: {route} -> HTTP {status}: {_error_message(payload, raw)}",
                status=status,
                route=route,
            )
        body = _error_body(payload)
        if body is not None and body.error not in (None, msgspec.UNSET):
            message = str(body.error) or "the server answered an error with an empty message"
            raise AgentGymError(
                f"agentgym/{self.env}: {route}: {message}", status=status, route=route
            )
        return raw if text else payload

    async def _call(
        self,
        method: str,
        route: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        idempotent: bool = True,
        text: bool = False,
    ) -> Any:
        self.in_flight += 1
        try:
            return await self._call_retrying(method, route, body, params, idempotent, text)
        finally:
            self.in_flight -= 1

    async def _call_retrying(
        self,
        method: str,
        route: str,
        body: Any,
        params: dict[str, Any] | None,
        idempotent: bool,
        text: bool,
    ) -> Any:
        attempt = 0
        while True:
            try:
                return await self._once(method, route, body, params, text)
            except _Retry as exc:
                attempt += 1
                if attempt > self.retries or not (idempotent or exc.resend_ok):
                    raise AgentGymTransientError(
                        f"agentgym/{self.env}: {exc} (after {attempt} tries)",
                        status=exc.status,
                        route=route,
                    ) from exc
                delay = backoff_delay(attempt, self.backoff_s, self.max_backoff_s)
                _log.info("agentgym call retried", env=self.env, route=route, error=str(exc))
                await anyio.sleep(delay)

    # -- protocol ---------------------------------------------------------------------

    async def _create(self) -> None:
        d = self.dialect
        self.ledger.creating += 1
        try:
            # Shielded (each try is bounded by timeout_s): a reset cancelled mid-create
            # still learns the id, so close() frees the instance instead of leaking it.
            with anyio.CancelScope(shield=True):
                reply = self._decode(await self._call("POST", "/create", d.create_body), "create")
        finally:
            self.ledger.creating -= 1
        instance_id = reply if d.create_reply == "bare" else reply.id
        self.ledger.claim(instance_id, self)
        self.instance_id = instance_id
        self._vocab = None

    async def _acquire(self) -> None:
        """Get a server instance no other episode uses: create one while under the cap,
        else adopt one whose episode is over, else wait for one; past ``idle_grace_s``
        adopt one whose holder is idle (its episode ended without ``done``)."""
        with anyio.move_on_after(self.acquire_timeout_s):
            while True:
                if self.ledger.room():
                    await self._create()
                    return
                instance_id = self.ledger.take_free(self)
                if instance_id is None:
                    with anyio.move_on_after(self.idle_grace_s) as waited:
                        await self.ledger.wait()
                    if not waited.cancelled_caught:
                        continue
                    instance_id = self.ledger.take_quiet(self)
                    if instance_id is None:
                        continue
                self.instance_id = instance_id
                self._vocab = None
                return
        raise AgentGymError(
            f"agentgym/{self.env}: no server instance came free within "
            f"{self.acquire_timeout_s:g}s (at most {self.ledger.cap} per server)",
            route="/create",
        )

    def _forget(self) -> None:
        """Let go of the server instance (reaped by the server, or broken)."""
        if self.instance_id is not None and self.ledger.holder(self.instance_id) is self:
            self.ledger.drop(self.instance_id, server_keeps=False)
        self.instance_id = None

    def _decode(self, payload: Any, route: str) -> Any:
        return decode(payload, getattr(self.replies, route), env=self.env, route=f"/{route}")

    def _body(self, **fields: Any) -> dict[str, Any]:
        return {self.dialect.id_field: self.instance_id, **fields}

    def _reset_body(self, task: Task) -> dict[str, Any]:
        return self._body(**{self.dialect.reset_field: task.id}, **self.dialect.reset_extra)

    def _actions(self, reply: Any, text: str) -> list[str] | None:
        listed = getattr(reply, "actions", None)
        if listed is not None:
            return [str(a) for a in listed]
        found = actions_in(self.dialect, text)
        return found if found is not None else self._episode_actions

    async def _observe(self) -> str:
        payload = await self._call(
            "GET", "/observation", params={self.dialect.id_field: str(self.instance_id)}
        )
        reply: ObservationReply | str = decode(
            payload, ObservationReply | str, env=self.env, route="/observation"
        )
        return str(reply.observation if isinstance(reply, ObservationReply) else reply)

    async def _wordle_vocab(self) -> list[str] | None:
        """The guesses ``GET /wordle/filtered_vocab`` lists, spelled with spaces (``None``:
        the server has no such route)."""
        if self._vocab is None:
            try:
                payload = await self._call(
                    "GET",
                    "/filtered_vocab",
                    params={self.dialect.id_field: str(self.instance_id)},
                )
            except AgentGymError as exc:
                if exc.status != 404:
                    raise
                return None
            words: list[str] = decode(payload, list[str], env=self.env, route="/filtered_vocab")
            self._vocab = [spaced_word(w) for w in words if w.strip()]
        return self._vocab

    def _shared(self, why: str) -> AgentGymError:
        return AgentGymError(
            f"agentgym/{self.env}: instance {self.instance_id!r} is shared with another "
            f"client ({why}){_capacity_hint(self.dialect)}; the episode is not scored",
            route="/step",
        )

    async def reset(self, task: Task) -> Observation:
        d = self.dialect
        if self.instance_id is not None:
            self.ledger.finish(self.instance_id)  # the previous episode is over
        if self.instance_id is None or self.ledger.holder(self.instance_id) is not self:
            await self._acquire()
        self.lost = None
        self.ledger.start(self.instance_id)
        self._episode_actions = None
        self._task_view = None
        try:
            payload = await self._call("POST", "/reset", self._reset_body(task))
        except AgentGymError as exc:
            if exc.status != 404:
                raise
            # The server forgot the instance (reaped while idle, or restarted): start over.
            self._forget()
            await self._acquire()
            self.ledger.start(self.instance_id)
            payload = await self._call("POST", "/reset", self._reset_body(task))
        if d.reset_refetch and d.has_observation:
            reply: Any = payload
            text = await self._observe()
        else:
            reply = self._decode(payload, "reset")
            if d.reset_reply == "text":
                text = str(reply)
            elif d.reset_reply == "pair":
                text = str(reply[0])
            else:
                text = reply.text()
                named = getattr(reply, "instance", None)
                if named is not None and str(named) != str(self.instance_id):
                    raise self._shared(f"/reset answered for instance {named!r}")
        if d.verify_observation and d.has_observation:
            # The instance must show the task just reset (another client's reset since
            # shows its own), and keep showing it: checked again after every step.
            if await self._observe() != text:
                raise self._shared("GET /observation shows another task after the reset")
            self._task_view = text
        if d.actions_from == "wordle":
            self._episode_actions = await self._wordle_vocab()
        actions = self._actions(reply, text)
        if d.actions_from == "textcraft":
            self._episode_actions = actions  # listed once, valid all episode
        return Observation(text=text, admissible_actions=actions)

    async def step(self, action: str) -> StepResult:
        d = self.dialect
        if self.lost is not None:
            raise AgentGymError(
                f"agentgym/{self.env}: instance {self.lost!r} went to another episode while "
                f"this one was idle for {self.idle_grace_s:g}s (more episodes than the "
                f"server's {self.ledger.cap} instances); the episode is not scored",
                route="/step",
            )
        if self.instance_id is None or self.ledger.holder(self.instance_id) is not self:
            raise EnvError(f"agentgym/{self.env}: step before reset")
        payload = await self._call("POST", "/step", self._body(action=action), idempotent=False)
        reply = self._decode(payload, "step")
        text = str(reply.observation)
        if self._task_view is not None:
            # Upstream's /observation still shows the task (sqlgym: the question), gymux's
            # the step's result; anything else is another client's reset in between.
            now = await self._observe()
            if now not in (self._task_view, text):
                raise self._shared("GET /observation shows another task after the step")
        reward = reply.reward
        if reward is msgspec.UNSET:
            reward = getattr(reply, "plain_reward", msgspec.UNSET)
        reward = 0.0 if reward is msgspec.UNSET else float(reward or 0.0)
        done = any(bool(getattr(reply, f"done{i}")) for i in range(len(d.done_keys)))
        info = {str(k): v for k, v in (reply.info or {}).items() if _jsonable(v)}
        if done:
            self.ledger.finish(self.instance_id)
        return StepResult(
            observation=Observation(text=text, admissible_actions=self._actions(reply, text)),
            reward=reward,
            done=done,
            info=info,
        )

    async def close(self) -> None:
        if self._closed:
            return
        mine = self.instance_id is not None and self.ledger.holder(self.instance_id) is self
        try:
            if mine and self._session:
                # ``/close`` is tried even for families documented without one: gymux's
                # own server has it in every dialect, and an upstream server without it
                # answers 404 at once. Bounded, so a hung server cannot stall shutdown.
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT_S):
                    try:
                        await self._call(
                            "POST",
                            "/close",
                            self._body(),
                            text=self.dialect.close_reply_text,
                        )
                    except EnvError as exc:
                        # Reaped already, or no /close in this family: nothing to free.
                        log = _log.info if self.dialect.has_close else _log.debug
                        log("agentgym close failed", env=self.env, error=str(exc))
        finally:
            if mine:
                # A family without /close keeps the instance: another episode may adopt it.
                self.ledger.drop(self.instance_id, server_keeps=not self.dialect.has_close)
            self._closed = True
            if self._session is not None:
                with anyio.CancelScope(shield=True):
                    await self._session.close()
                self._session = None


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | list | dict) or value is None


def _instruction(env: str, dialect: Dialect) -> str:
    return (
        f"You are an agent acting in the AgentGym environment {env!r}. Every round I give you "
        "an observation; answer with your reasoning and exactly one action, in this format:\n"
        f"{dialect.action_format}"
    )


def agentgym_plugin(
    env: str,
    url: str,
    *,
    tasks: range | Sequence[int],
    dialect: str | None = None,
    split: str = "test",
    timeout_s: float = 60.0,
    retries: int = 3,
    backoff_s: float = 0.2,
    max_turns: int | None = None,
    success_threshold: float | None = None,
    instruction: str | None = None,
    max_instances: int | None = None,
    env_id: str | None = None,
) -> EnvPlugin:
    """An :class:`EnvPlugin` whose instances drive the AgentGym server at ``url``.

    Args:
        env: the AgentGym environment name (``webshop``, ``maze``, ``weather``, ...); it
            picks the dialect unless ``dialect`` is given (unknown names speak ``gymux``).
        url: server base URL, without the family prefix (``http://host:36001``).
        tasks: the task ids (AgentGym dataset indices) published as split ``split``.
        timeout_s: bound of every HTTP call; ``retries``/``backoff_s``: transient failures.
        max_instances: the most server instances held at once (default: the family's
            ``capacity``, else 16); episodes past it wait for a free one.
        success_threshold: gymux's success rule ``reward >= threshold`` (default: the
            family's ``success_threshold``).
    """
    d = dialect_for(env, dialect)
    ids = list(tasks)
    if not ids:
        raise ConfigError(f"agentgym/{env}: no task ids given")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"agentgym/{env}: url must start with http:// or https://, got {url!r}")
    if max_instances is not None and max_instances < 1:
        raise ConfigError(f"agentgym/{env}: max_instances must be at least 1, got {max_instances}")
    cap = max_instances or d.capacity or DEFAULT_MAX_INSTANCES
    threshold = d.success_threshold if success_threshold is None else success_threshold
    # The server-side cap: the family's capacity or the caller's; none known, none kept
    # (the runtime's instance cap still bounds the instances).
    ledger = ServerLedger(max_instances or d.capacity)
    spec = EnvSpec(
        id=env_id or f"{PREFIX}{env}",
        version=f"agentgym-{d.name}",
        instruction=instruction or _instruction(env, d),
        action_format=d.action_format,
        splits=splits_from({split: ids}),
        max_turns=max_turns or d.max_turns,
        reward_range=d.reward_range,
        success=SuccessRule(threshold=threshold),
        example_actions=list(d.example_actions),
        description=f"AgentGym {env!r} served at {url} ({d.name} dialect)",
    )
    factory: Callable[[], AgentGymEnv] = lambda: AgentGymEnv(  # noqa: E731
        env, url, d, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, ledger=ledger
    )
    return EnvPlugin(
        spec,
        factory,
        execution="async",
        parse_action=lambda text: extract_action(d, text),
        max_instances=cap,
    )


def bridge_name(env_id: str) -> str | None:
    """``"agentgym/webshop"`` -> ``"webshop"``; ``None`` for other ids."""
    if env_id.startswith(PREFIX) and len(env_id) > len(PREFIX):
        return env_id[len(PREFIX) :]
    return None


def register_bridges(
    registry: Registry,
    workloads: Sequence[Workload],
    url: str,
    *,
    dialect: str | None = None,
    max_instances: int | None = None,
) -> list[EnvPlugin]:
    """Register an ``agentgym/<env>`` plugin at ``url`` for each such workload
    (``gymux run --env agentgym/<env> --agentgym-url URL --tasks 0-199``);
    ``max_instances``: server instances per env (default: the family's capacity, else 16)."""
    made: list[EnvPlugin] = []
    for workload in workloads:
        name = bridge_name(workload.env)
        if name is None:
            continue
        if dialect is None and name not in AGENTGYM_ENVS:
            known = ", ".join(sorted(AGENTGYM_ENVS))
            raise ConfigError(
                f"unknown AgentGym env {name!r} (known: {known}); for an env served by "
                "'gymux serve-env', add --agentgym-dialect gymux"
            )
        if isinstance(workload.tasks, str):
            raise ConfigError(
                f"{workload.env}: give AgentGym task ids, e.g. --tasks 0-199 "
                f"(a bridged env has no split {workload.tasks!r} of its own)"
            )
        plugin = agentgym_plugin(
            name, url, tasks=workload.tasks, dialect=dialect, max_instances=max_instances
        )
        made.append(registry.register(plugin, replace=True))
    if not made:
        raise ConfigError("--agentgym-url needs --env agentgym/<name> (an AgentGym env)")
    return made
