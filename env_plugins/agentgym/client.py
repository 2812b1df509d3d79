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
``reward >= 1.0`` unless ``success_threshold`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import msgspec
import structlog

from gymux._backoff import backoff_delay
from gymux.env_plugins.agentgym.dialects import (
    AGENTGYM_ENVS,
    DIALECTS,
    Dialect,
    dialect_for,
    extract_action,
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
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

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
            raise AgentGymError(
                f"agentgym/{self.env}: {route}: {body.error}", status=status, route=route
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
        reply = self._decode(await self._call("POST", "/create", d.create_body), "create")
        self.instance_id = reply if d.create_reply == "bare" else reply.id

    def _decode(self, payload: Any, route: str) -> Any:
        return decode(payload, getattr(self.replies, route), env=self.env, route=f"/{route}")

    def _body(self, **fields: Any) -> dict[str, Any]:
        return {self.dialect.id_field: self.instance_id, **fields}

    def _reset_body(self, task: Task) -> dict[str, Any]:
        return self._body(**{self.dialect.reset_field: task.id}, **self.dialect.reset_extra)

    @staticmethod
    def _actions(reply: Any) -> list[str] | None:
        actions = getattr(reply, "actions", None)
        return None if actions is None else [str(a) for a in actions]

    async def _observe(self) -> str:
        payload = await self._call(
            "GET", "/observation", params={self.dialect.id_field: str(self.instance_id)}
        )
        reply: ObservationReply | str = decode(
            payload, ObservationReply | str, env=self.env, route="/observation"
        )
        return str(reply.observation if isinstance(reply, ObservationReply) else reply)

    async def reset(self, task: Task) -> Observation:
        d = self.dialect
        if self.instance_id is None:
            await self._create()
        try:
            payload = await self._call("POST", "/reset", self._reset_body(task))
        except AgentGymError as exc:
            if exc.status != 404:
                raise
            # The server forgot the instance (reaped while idle, or restarted): start over.
            await self._create()
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
        return Observation(text=text, admissible_actions=self._actions(reply))

    async def step(self, action: str) -> StepResult:
        d = self.dialect
        if self.instance_id is None:
            raise EnvError(f"agentgym/{self.env}: step before reset")
        payload = await self._call("POST", "/step", self._body(action=action), idempotent=False)
        reply = self._decode(payload, "step")
        reward = reply.reward
        if reward is msgspec.UNSET:
            reward = getattr(reply, "plain_reward", msgspec.UNSET)
        reward = 0.0 if reward is msgspec.UNSET else float(reward or 0.0)
        done = any(bool(getattr(reply, f"done{i}")) for i in range(len(d.done_keys)))
        info = {str(k): v for k, v in (reply.info or {}).items() if _jsonable(v)}
        return StepResult(
            observation=Observation(
                text=str(reply.observation), admissible_actions=self._actions(reply)
            ),
            reward=reward,
            done=done,
            info=info,
        )

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self.instance_id is not None and self._session:
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
    success_threshold: float = 1.0,
    instruction: str | None = None,
    max_instances: int = 16,
    env_id: str | None = None,
) -> EnvPlugin:
    """An :class:`EnvPlugin` whose instances drive the AgentGym server at ``url``.

    Args:
        env: the AgentGym environment name (``webshop``, ``maze``, ``weather``, ...); it
            picks the dialect unless ``dialect`` is given (unknown names speak ``gymux``).
        url: server base URL, without the family prefix (``http://host:36001``).
        tasks: the task ids (AgentGym dataset indices) published as split ``split``.
        timeout_s: bound of every HTTP call; ``retries``/``backoff_s``: transient failures.
    """
    d = dialect_for(env, dialect)
    ids = list(tasks)
    if not ids:
        raise ConfigError(f"agentgym/{env}: no task ids given")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"agentgym/{env}: url must start with http:// or https://, got {url!r}")
    spec = EnvSpec(
        id=env_id or f"{PREFIX}{env}",
        version=f"agentgym-{d.name}",
        instruction=instruction or _instruction(env, d),
        action_format=d.action_format,
        splits=splits_from({split: ids}),
        max_turns=max_turns or d.max_turns,
        reward_range=d.reward_range,
        success=SuccessRule(threshold=success_threshold),
        example_actions=list(d.example_actions),
        description=f"AgentGym {env!r} served at {url} ({d.name} dialect)",
    )
    factory: Callable[[], AgentGymEnv] = lambda: AgentGymEnv(  # noqa: E731
        env, url, d, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s
    )
    return EnvPlugin(
        spec,
        factory,
        execution="async",
        parse_action=lambda text: extract_action(d, text),
        max_instances=max_instances,
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
) -> list[EnvPlugin]:
    """Register an ``agentgym/<env>`` plugin at ``url`` for each such workload
    (``gymux run --env agentgym/<env> --agentgym-url URL --tasks 0-199``)."""
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
        plugin = agentgym_plugin(name, url, tasks=workload.tasks, dialect=dialect)
        made.append(registry.register(plugin, replace=True))
    if not made:
        raise ConfigError("--agentgym-url needs --env agentgym/<name> (an AgentGym env)")
    return made
