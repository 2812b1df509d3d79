"""A token-exact policy backed by one or more vLLM servers, over ``/v1/completions``.

``VLLMPolicy(urls, tokenizer=...)`` keeps the same per-episode token ledger as the SGLang
policy (:class:`gymux.policies.tokens.EpisodeLedgers`: the chat template is applied once on
turn 0, observations are appended as ids, generated ids are appended as returned, nothing
is re-tokenized) and sends each turn as one ``POST /v1/completions`` whose ``prompt`` is the
ledger's token ids::

    {"model": ..., "prompt": [ids...], "max_tokens": n, "temperature": t, "top_p": p,
     "stop": [...], "logprobs": 0, "return_tokens_as_token_ids": true}

vLLM answers ``choices[0].logprobs.tokens`` as ``"token_id:N"`` strings (the sampled ids,
exactly, whatever their text) with ``token_logprobs`` beside them; the policy answers with
a :class:`PolicyResponse` carrying text, ids, logprobs and token counts, and
:meth:`VLLMPolicy.finish_episode` returns the episode's :class:`TokenData` (ids, logprobs,
loss mask), as the SGLang policy does.

One request per turn: vLLM's own continuous batching coalesces concurrent episodes.

Shared with the SGLang policy (:mod:`gymux.policies.sglang.transport` and
:mod:`~gymux.policies.sglang.routing`): the keep-alive session, POST with failures sorted
into retryable or not, several servers with episode affinity, per-server flow control
(``max_requests_per_server`` sequences and ``max_tokens_per_server`` tokens in flight),
health probes (``GET /health``) that re-admit a server, and retries of safe failures
(connection refused, HTTP 503, a stale keep-alive connection) with the one backoff.

Context limit: the model's context is ``context_length`` or else the smallest
``max_model_len`` that the servers' ``GET /v1/models`` report. A turn whose prompt plus
``max_new_tokens`` would not fit is answered ``context_limit`` without a request, and an
HTTP 400 whose message says the prompt exceeds the context (vLLM: "This model's maximum
context length is N tokens ...") is answered the same way.

Cancellation: vLLM aborts a request when its HTTP connection closes, and a cancelled
``act()`` (the episode was cancelled or timed out, the run was cancelled) closes it, so no
abort call is needed; a request that exceeds ``request_timeout_s`` is cut the same way.

Errors: what cannot be retried (another HTTP error, an answer that does not fit, a
connection dropped mid-answer, a server killed mid-request) fails the turn with
:class:`PolicyError` (the episode ends ``policy_error``), as do retries that run out.

Options: :class:`gymux.policies.options.VLLMOptions` (``options=``) or the same names as
keywords (``urls`` may be positional; ``tokenizer=`` takes a :class:`ChatTokenizer` or a
model folder).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import anyio
import anyio.abc
import msgspec

from gymux.errors import PolicyOptionsError
from gymux.policies.base import BasePolicy
from gymux.policies.options import VLLMOptions, build_server_options
from gymux.policies.protocol import PolicyError, PolicyRequest, PolicyResponse
from gymux.policies.sglang import transport
from gymux.policies.sglang.routing import Router, Server
from gymux.policies.tokens import (
    ChatTokenizer,
    EpisodeLedgers,
    PromptIds,
    context_limit_response,
    load_tokenizer,
)
from gymux.trajectory import TokenData

__all__ = [
    "Completion",
    "ModelList",
    "VLLMOptions",
    "VLLMPolicy",
    "completion_body",
    "is_context_error",
    "parse_token_ids",
]

_LABEL = "vLLM"
_PATH = "/v1/completions"
_TOKEN_PREFIX = "token_id:"

#: Body fields the token ledger relies on: ``extra_body`` may not set them.
RESERVED_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "logprobs",
        "return_tokens_as_token_ids",
        "stream",
        "n",
        "best_of",
        "echo",
        "suffix",
    }
)

# vLLM: "This model's maximum context length is N tokens. However, ...", "'max_tokens' ...
# is too large: ... maximum context length ...", "The decoder prompt (length N) is longer
# than the maximum model length of M."
_CONTEXT_RE = re.compile(
    r"maximum (context|model) length|context[ _-]?(length|window)|longer than the maximum"
    r"|prompt is too long|exceeds? the (available )?context",
    re.IGNORECASE,
)


# -- the wire ------------------------------------------------------------------------------


class _Logprobs(msgspec.Struct):
    tokens: list[str]
    token_logprobs: list[float | None]


class _Choice(msgspec.Struct):
    text: str = ""
    logprobs: _Logprobs | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Completion(msgspec.Struct):
    """The parts of a ``/v1/completions`` answer the policy reads."""

    choices: Annotated[list[_Choice], msgspec.Meta(min_length=1)]
    usage: _Usage | None = None


class _ModelCard(msgspec.Struct):
    id: str
    max_model_len: int | None = None


class ModelList(msgspec.Struct):
    """``GET /v1/models``: the served model names and their context lengths."""

    data: list[_ModelCard]


_COMPLETION = msgspec.json.Decoder(Completion)
_MODELS = msgspec.json.Decoder(ModelList)
_ENCODER = msgspec.json.Encoder()


def completion_body(
    model: str, prompt: list[int], sampling: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """A ``POST /v1/completions`` body for a token-id prompt (see the module docstring)."""
    return {
        **extra,
        **sampling,
        "model": model,
        "prompt": prompt,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }


def parse_token_ids(tokens: Sequence[str]) -> list[int]:
    """``["token_id:12", ...]`` -> ``[12, ...]``; :class:`ValueError` on anything else."""
    cut = len(_TOKEN_PREFIX)
    ids = []
    for token in tokens:
        if not token.startswith(_TOKEN_PREFIX):
            raise ValueError(f"token {token[:40]!r} is not 'token_id:N'")
        ids.append(int(token[cut:]))
    return ids


def is_context_error(error: PolicyError) -> bool:
    """Whether a failed POST says the prompt does not fit the model's context: vLLM's HTTP
    400 (or 413/422) whose error message says so."""
    if not isinstance(error, transport.HTTPStatusError) or error.status not in (400, 413, 422):
        return False
    return bool(_CONTEXT_RE.search(error.body.decode("utf-8", "replace") or str(error)))


# -- the policy ----------------------------------------------------------------------------


class VLLMPolicy(BasePolicy):
    """See the module docstring. ``tokenizer``: a :class:`ChatTokenizer` or a local folder."""

    name = "vllm"
    version = "1"
    Options = VLLMOptions

    def __init__(
        self,
        urls: str | Sequence[str] | None = None,
        *,
        tokenizer: ChatTokenizer | str | Path | None = None,
        options: VLLMOptions | None = None,
        **keywords: Any,
    ) -> None:
        opts = self.options = build_server_options(
            VLLMOptions, urls, options, keywords, who="VLLMPolicy"
        )
        reserved = sorted(RESERVED_FIELDS & set(opts.extra_body))
        if reserved:
            raise PolicyOptionsError(
                f"VLLMPolicy: invalid option: extra_body may not set {', '.join(reserved)} "
                "(the policy sets them) - at `$.extra_body`"
            )
        self.tokenizer = load_tokenizer(tokenizer, opts.tokenizer_path, who="VLLMPolicy")
        self.max_new_tokens = opts.max_new_tokens
        self.sampling: dict[str, Any] = opts.sampling("max_tokens")
        self.context_length = opts.context_length
        self.request_timeout_s = opts.request_timeout_s
        self._router = Router.from_options(opts, label=_LABEL)
        self._ledgers = EpisodeLedgers(self.tokenizer)
        self._models: dict[str, str] = {}  # server url -> served model name
        self._session: transport.Pool | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        # The body's JSON after ``prompt`` (``"k":v,...}``): every field but ``model`` and
        # ``prompt`` is the same for every request, so it is encoded once (see _body).
        rest = completion_body("", [], self.sampling, opts.extra_body)
        del rest["model"], rest["prompt"]
        self._body_tail = _ENCODER.encode(rest)[1:]
        self.http_requests = 0
        #: Requests cut short by cancellation or ``request_timeout_s`` (vLLM aborts them).
        self.requests_cut = 0

    @property
    def servers(self) -> list[Server]:
        return self._router.servers

    @property
    def retried(self) -> int:
        """Requests retried after a safe failure (connection refused, HTTP 503)."""
        return self._router.retried

    # -- lifecycle ----------------------------------------------------------------------

    async def aopen(self) -> None:
        """Open the connection pool, check the servers (``/health``, ``/v1/models``) and start
        the health watcher (owned by the policy's task group)."""
        opts = self.options
        self._session = transport.open_session(
            connections_per_host=opts.connections_per_server,
            request_timeout_s=opts.request_timeout_s,
            connect_timeout_s=opts.connect_timeout_s,
        )
        limits: list[int] = []

        async def probe_with_models(server: Server) -> None:
            await self._probe(server)
            limit = await self._read_models(server)
            if limit is not None:
                limits.append(limit)

        try:
            await self._router.check(probe_with_models, timeout_s=opts.connect_timeout_s + 1)
            tg = anyio.create_task_group()
            await tg.__aenter__()
        except BaseException:
            await self._close_session()
            raise
        self._tg = tg
        if self.context_length is None and limits:
            self.context_length = min(limits)
        if self.context_length is not None and self.max_new_tokens >= self.context_length:
            await self.aclose()
            raise PolicyOptionsError(
                f"VLLMPolicy: invalid option: max_new_tokens {self.max_new_tokens} leaves no "
                f"room for a prompt in the model's context of {self.context_length} tokens"
            )
        tg.start_soon(
            functools.partial(
                self._router.watch_health,
                self._probe,
                interval_s=opts.health_interval_s,
                timeout_s=opts.connect_timeout_s,
            )
        )

    async def aclose(self) -> None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            await self._close_session()

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.close()

    async def _probe(self, server: Server) -> None:
        assert self._session is not None
        await transport.get(self._session, server.url + "/health")

    async def _read_models(self, server: Server) -> int | None:
        """Learn ``server``'s served model name; return its ``max_model_len``."""
        assert self._session is not None
        raw = await transport.get(self._session, server.url + "/v1/models")
        try:
            cards = _MODELS.decode(raw).data
        except msgspec.DecodeError as exc:
            raise PolicyError(
                f"{_LABEL} {server.url}: malformed /v1/models answer: {exc}"
            ) from None
        wanted = self.options.model
        card = next((c for c in cards if c.id == wanted), None) if wanted else None
        if card is None and cards and wanted is None:
            card = cards[0]
        if card is None:
            served = ", ".join(c.id for c in cards) or "none"
            raise PolicyError(
                f"{_LABEL} {server.url} does not serve model {wanted!r} (it serves: {served})"
            )
        self._models[server.url] = card.id
        return card.max_model_len

    # -- the public surface -------------------------------------------------------------

    def finish_episode(self, episode_id: str) -> TokenData | None:
        """Take an episode's token-exact record and forget its state (``None``: unknown).

        Call it once, when the episode has ended (however it ended).
        """
        self._router.forget(episode_id)
        return self._ledgers.finish(episode_id)

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        if self._session is None or self._tg is None:
            raise PolicyError(f"policy {self.name!r} is not running (use 'async with policy')")
        # The prompt travels as its JSON, kept by the ledger as ids come (not re-encoded per
        # turn, and not a list of thousands of ints for the garbage collector to walk while
        # the server generates).
        prompt = self._ledgers.prompt_ids(
            request, max_new_tokens=self.max_new_tokens, context_length=self.context_length
        )
        if isinstance(prompt, PolicyResponse):
            return prompt
        try:
            return await self._router.call(
                request.episode_id, lambda server: self._once(server, request, prompt)
            )
        except PolicyError as exc:
            if is_context_error(exc):
                return context_limit_response(len(prompt))
            raise

    def _body(self, model: str, prompt_json: Sequence[bytes]) -> transport.Parts:
        """:func:`completion_body` as JSON fragments, from the prompt's JSON fragments
        (:meth:`PromptIds.json_parts`) and the fields encoded once at construction."""
        return transport.Parts(
            (
                b'{"model":',
                _ENCODER.encode(model),
                b',"prompt":',
                *prompt_json,
                b",",
                self._body_tail,
            )
        )

    async def _once(
        self, server: Server, request: PolicyRequest, prompt: PromptIds
    ) -> PolicyResponse:
        session = self._session
        assert session is not None
        model = self._models.get(server.url)
        if model is None:  # a server that was down at start and has come back
            await self._read_models(server)
            model = self._models[server.url]
        body = self._body(model, prompt.json_parts())
        tokens = len(prompt) + self.max_new_tokens
        await server.budget.acquire(1, tokens)
        try:
            self.http_requests += 1
            # Bounded by the session's request_timeout_s: TimeoutError, with no cancel
            # scope of our own per request.
            raw = await transport.post_read(session, server.url, _PATH, body, label=_LABEL)
        except (transport.Retryable, PolicyError):
            raise
        except TimeoutError:
            self.requests_cut += 1
            raise PolicyError(
                f"{_LABEL} {server.url}: no answer within {self.request_timeout_s:g}s"
            ) from None
        except anyio.get_cancelled_exc_class():
            self.requests_cut += 1  # the connection closes: vLLM aborts the request
            raise
        except OSError as exc:
            raise PolicyError(
                f"{_LABEL} {server.url}: connection failed mid-answer: {transport.describe(exc)}"
            ) from None
        finally:
            await server.budget.release(1, tokens)
        return self._to_response(server, request, len(prompt), raw)

    def _to_response(
        self, server: Server, request: PolicyRequest, prompt_len: int, raw: bytes
    ) -> PolicyResponse:
        where = f"{_LABEL} {server.url}"
        try:
            answer = _COMPLETION.decode(raw)
        except msgspec.DecodeError as exc:
            raise PolicyError(f"{where}: unexpected answer shape: {exc}") from None
        choice = answer.choices[0]
        if choice.logprobs is None:
            raise PolicyError(f"{where}: unexpected answer shape: no logprobs in the answer")
        try:
            ids = parse_token_ids(choice.logprobs.tokens)
        except ValueError as exc:
            raise PolicyError(f"{where}: unexpected answer shape: {exc}") from None
        logprobs = choice.logprobs.token_logprobs
        if len(logprobs) != len(ids) or any(lp is None for lp in logprobs):
            raise PolicyError(
                f"{where}: unexpected answer shape: {len(ids)} tokens but logprobs "
                f"{len(logprobs)} (or some null)"
            )
        finish: Literal["stop", "length"]
        if choice.finish_reason == "stop":
            finish = "stop"
        elif choice.finish_reason == "length":
            finish = "length"
        else:
            raise PolicyError(f"{where}: generation ended {choice.finish_reason!r}")
        values = cast(list[float], logprobs)  # checked: no None
        self._ledgers.record(request.episode_id, ids, values)
        usage = answer.usage or _Usage()
        return PolicyResponse(
            text=choice.text,
            finish_reason=finish,
            token_ids=ids,
            logprobs=values,
            prompt_tokens=usage.prompt_tokens if usage.prompt_tokens is not None else prompt_len,
            completion_tokens=(
                usage.completion_tokens if usage.completion_tokens is not None else len(ids)
            ),
        )
