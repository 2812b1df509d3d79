"""A policy backed by one or more SGLang servers, speaking SGLang's native HTTP API.

``SGLangPolicy(urls, tokenizer=...)`` sends each turn as ``POST /generate`` with
``input_ids`` built by a per-episode :class:`gymux.policies.tokens.TokenLedger` (token-exact:
the prompt only ever grows, generated ids are appended as returned), reads ``output_ids``,
``meta_info.output_token_logprobs`` and ``meta_info.finish_reason``, and answers with a
:class:`PolicyResponse` carrying text, ids, logprobs and token counts. At episode end call
:meth:`SGLangPolicy.finish_episode` to take the episode's :class:`TokenData`.

Dispatch strategies (``strategy=``):

* ``"single"`` (default): one ``/generate`` per turn over a keep-alive connection pool; the
  coalescing into GPU batches is done by SGLang's own continuous batching. Every turn
  returns as soon as *its* generation finishes.
* ``"batch"``: the :class:`BatchingPolicy` dispatcher coalesces concurrent turns (window
  ``window_s``, at most ``max_batch``) into one ``/generate`` with a list of ``input_ids``
  per server. The HTTP answer comes when the batch's *longest* generation finishes, so short
  turns wait for long ones.
* ``"batch_stream"``: as ``"batch"``, but streamed (SSE); each item's answer is handed to
  its episode as soon as its final chunk arrives.

Why ``"single"`` is the default (measured, ``bench/policy.py``: 2,000 concurrent episodes
against the SGLang test double in a subprocess, B=256, 10 ms/token, 1 ms/request frontend,
16- or 256-token outputs (~20% long), 2-core box; see docs/benchmarks.md "Policy"):
``"single"`` and ``"batch"`` both keep the server saturated (401 vs 400 turns/s, 98.4% vs
98.6% of token capacity; ``"batch_stream"`` 349 turns/s, 85%), but only ``"single"`` lets
short turns return before long ones (short/long mean turn latency 4.5/7.0 s; ``"batch"``
5.0/5.0 s, shorts wait for the batch's longest). Client-side time is 0.3% of a turn's wall
time with ``"single"`` (1.1% ``"batch"``, 39% ``"batch_stream"``, whose cumulative SSE
chunks cost both processes CPU). ``"batch"`` costs the client less CPU per turn (335 vs
816 us), so it is the one to try if the client, not the server, becomes the bottleneck.

Flow control per server: at most ``max_requests_per_server`` sequences and
``max_tokens_per_server`` tokens (prompt + ``max_new_tokens``) in flight.

Several servers: an episode is assigned on its first turn to the healthy server with the
fewest active episodes and stays there (radix/prefix-cache affinity). A connection refused
marks the server unhealthy and moves the episode to another server; a background task
(owned by the policy's task group) polls ``/health`` on unhealthy servers and re-admits
them.

Errors: connection refused (nothing was sent) and HTTP 503 are retried with exponential
backoff and equal jitter (:func:`gymux._backoff.backoff_delay`), at most ``retries`` times.
A stale keep-alive connection -- a reused pooled connection that the server had closed as
idle, so the request fails with ``ServerDisconnectedError``/``ClientOSError`` before any
response byte arrives -- is retried once at once (on another connection; the broken one is
discarded), without counting against ``retries`` and without marking the server unhealthy:
the request never reached a live handler, so nothing was generated (the rule of RFC 9112
section 9.3.1, which aiohttp itself applies only to idempotent methods). A second such
failure in a row counts as an ordinary retryable error. Everything else (timeouts, other
HTTP errors, malformed JSON, a batch answer of the wrong length, a connection dropped mid-
answer) fails only the affected requests with :class:`PolicyError` (the runtime records
``policy_error``). Every HTTP call is bounded by ``request_timeout_s``. When an episode's
``act()`` is cancelled while its generation runs, ``/abort_request`` is sent with its rid.

Options: :class:`gymux.policies.options.SGLangOptions` (``options=``), or the same names as
keywords (``urls`` may be positional; ``tokenizer=`` takes a :class:`ChatTokenizer` or a
folder). The pieces: :mod:`.transport` (HTTP), :mod:`.routing` (servers, affinity, health,
retries), :mod:`.wire` (SGLang's request and answer shapes); this module joins them with
the per-episode :class:`~gymux.policies.tokens.TokenLedger`.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from gymux.errors import PolicyOptionsError
from gymux.policies.batching import BatchingPolicy, OnResult
from gymux.policies.options import SGLangOptions, Strategy, build_options
from gymux.policies.protocol import PolicyError, PolicyRequest, PolicyResponse
from gymux.policies.sglang import transport
from gymux.policies.sglang.routing import Router, Server
from gymux.policies.sglang.wire import (
    FinishReason,
    GenerateAnswer,
    ModelInfo,
    decode_answers,
    decode_chunk,
    decode_model_info,
    generate_body,
)
from gymux.policies.tokens import ChatTokenizer, TokenLedger
from gymux.trajectory import TokenData

__all__ = ["SGLangPolicy", "Strategy"]

_LABEL = "SGLang"
_Result = PolicyResponse | BaseException
_Item = tuple[PolicyRequest, list[int]]


class SGLangPolicy(BatchingPolicy):
    """See the module docstring. ``tokenizer``: a :class:`ChatTokenizer` or a local folder."""

    name = "sglang"
    version = "1"
    Options = SGLangOptions

    def __init__(
        self,
        urls: str | Sequence[str] | None = None,
        *,
        tokenizer: ChatTokenizer | str | Path | None = None,
        options: SGLangOptions | None = None,
        **keywords: Any,
    ) -> None:
        if urls is not None:
            keywords["urls"] = [urls] if isinstance(urls, str) else list(urls)
        opts = self.options = build_options(SGLangOptions, options, keywords, who="SGLangPolicy")
        super().__init__(
            max_batch=opts.max_batch,
            window_s=opts.window_s,
            max_inflight_batches=opts.max_inflight_batches,
        )
        source = tokenizer if tokenizer is not None else opts.tokenizer_path
        if source is None:
            raise PolicyOptionsError(
                "SGLangPolicy needs a tokenizer: tokenizer= (a ChatTokenizer or a model "
                "folder) or the tokenizer_path option"
            )
        self.tokenizer = (
            source if isinstance(source, ChatTokenizer) else ChatTokenizer.from_dir(source)
        )
        self.strategy: Strategy = opts.strategy
        self.max_new_tokens = opts.max_new_tokens
        self.sampling: dict[str, Any] = {
            "max_new_tokens": opts.max_new_tokens,
            "temperature": opts.temperature,
            "top_p": opts.top_p,
        }
        if opts.stop:
            self.sampling["stop"] = list(opts.stop)
        self.context_length = opts.context_length
        self.request_timeout_s = opts.request_timeout_s
        self.connect_timeout_s = opts.connect_timeout_s
        self._router = Router(
            opts.urls,
            label=_LABEL,
            max_requests=opts.max_requests_per_server,
            max_tokens=opts.max_tokens_per_server,
            retries=opts.retries,
            backoff_s=opts.backoff_s,
            backoff_max_s=opts.backoff_max_s,
        )
        self._session: aiohttp.ClientSession | None = None
        self._ledgers: dict[str, TokenLedger] = {}
        self._inflight: dict[str, tuple[Server, str]] = {}  # episode -> (server, rid)
        self._rid_prefix = uuid.uuid4().hex[:12]
        self._rid_seq = itertools.count()
        self.http_requests = 0
        self.aborts_sent = 0
        #: Seconds each answered turn spent at the server (its ``meta_info.e2e_latency``).
        self.server_s = 0.0

    @property
    def servers(self) -> list[Server]:
        return self._router.servers

    @property
    def retried(self) -> int:
        """Requests retried after a safe failure (connection refused, HTTP 503)."""
        return self._router.retried

    @property
    def stale_retries(self) -> int:
        """Requests resent after failing on a stale (server-closed) keep-alive connection."""
        return self._router.stale_retries

    # -- lifecycle ----------------------------------------------------------------------

    async def aopen(self) -> None:
        """Open the connection pool, check the servers, start the dispatcher and the
        health watcher (both owned by the policy's task group)."""
        opts = self.options
        self._session = transport.open_session(
            connections_per_host=opts.connections_per_server,
            request_timeout_s=opts.request_timeout_s,
            connect_timeout_s=opts.connect_timeout_s,
        )
        infos: list[ModelInfo] = []

        async def probe_with_info(server: Server) -> None:
            await self._probe(server)
            infos.append(decode_model_info(await self._get(server, "/get_model_info")))

        try:
            await self._router.check(probe_with_info, timeout_s=self.connect_timeout_s + 1)
            await super().aopen()
        except BaseException:
            await self._close_session()
            raise
        if self.context_length is None:
            limits = [i.max_context_length for i in infos if i.max_context_length is not None]
            self.context_length = min(limits) if limits else None
        assert self._tg is not None
        self._tg.start_soon(
            functools.partial(
                self._router.watch_health,
                self._probe,
                interval_s=opts.health_interval_s,
                timeout_s=self.connect_timeout_s,
            )
        )

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self._close_session()

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _get(self, server: Server, path: str) -> bytes:
        assert self._session is not None
        return await transport.get(self._session, server.url + path)

    async def _probe(self, server: Server) -> None:
        await self._get(server, "/health")

    # -- the public surface -------------------------------------------------------------

    def finish_episode(self, episode_id: str) -> TokenData | None:
        """Take an episode's token-exact record and forget its state.

        Returns the :class:`TokenData` (ids, logprobs, loss mask, tokenizer name) of every
        token the episode's prompts and generations consisted of, or ``None`` when this
        policy never saw the episode. Call it once, when the episode has ended (however it
        ended); afterwards the episode id is unknown to the policy.
        """
        ledger = self._ledgers.pop(episode_id, None)
        self._router.forget(episode_id)
        return ledger.token_data() if ledger is not None else None

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        if self._session is None or self._tg is None:
            raise PolicyError(f"policy {self.name!r} is not running (use 'async with policy')")
        if self.strategy != "single":
            try:
                return await super().act(request)
            except anyio.get_cancelled_exc_class():
                sent = self._inflight.get(request.episode_id)
                if sent is not None:
                    self._abort_later(sent[0], [sent[1]])
                raise
        prepared = self._prepare(request)
        if isinstance(prepared, PolicyResponse):
            return prepared
        results = await self._send(request.episode_id, [(request, prepared)])
        result = results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def act_batch(
        self, requests: Sequence[PolicyRequest], on_result: OnResult | None = None
    ) -> Sequence[_Result]:
        """Answer ``requests`` together (used by the ``batch`` strategies' dispatcher).

        ``on_result(index, result)``, when given, is called as soon as each answer is known
        (with ``batch_stream``, before the rest of its batch has finished).
        """
        out: list[_Result | None] = [None] * len(requests)
        items: list[tuple[int, PolicyRequest, list[int]]] = []
        for i, request in enumerate(requests):
            try:
                prepared = self._prepare(request)
            except PolicyError as exc:
                out[i] = exc
                continue
            if isinstance(prepared, PolicyResponse):
                out[i] = prepared
            else:
                items.append((i, request, prepared))
        groups: dict[int, list[tuple[int, PolicyRequest, list[int]]]] = {}
        for item in items:
            server = self._router.server_for(item[1].episode_id)
            groups.setdefault(id(server), []).append(item)

        async def run(group: list[tuple[int, PolicyRequest, list[int]]]) -> None:
            def early(j: int, res: _Result) -> None:
                if on_result is not None:
                    on_result(group[j][0], res)

            results = await self._send(
                group[0][1].episode_id, [(r, ids) for _, r, ids in group], early
            )
            for (i, _, _), res in zip(group, results, strict=True):
                out[i] = res

        async with anyio.create_task_group() as tg:
            for group in groups.values():
                tg.start_soon(run, group)
        return [r if r is not None else PolicyError("no answer") for r in out]

    async def _answer_batch(
        self, requests: Sequence[PolicyRequest], on_result: OnResult
    ) -> Sequence[_Result]:
        # Each request is answered as soon as it is done (batch_stream hands out items as
        # their final chunk arrives).
        return await self.act_batch(requests, on_result)

    # -- per-request state ----------------------------------------------------------------

    def _prepare(self, request: PolicyRequest) -> list[int] | PolicyResponse:
        ledger = self._ledgers.get(request.episode_id)
        if ledger is None or request.turn == 0:
            ledger = self._ledgers[request.episode_id] = TokenLedger(self.tokenizer)
        ids = ledger.prompt_for(request.messages)
        if self.context_length is not None and not ledger.fits(
            self.max_new_tokens, self.context_length
        ):
            return PolicyResponse(
                text="", finish_reason="context_limit", prompt_tokens=len(ids), completion_tokens=0
            )
        return ids

    def _rid(self) -> str:
        return f"gymux-{self._rid_prefix}-{next(self._rid_seq)}"

    # -- sending ----------------------------------------------------------------------------

    async def _send(
        self, episode_id: str, items: list[_Item], on_result: OnResult | None = None
    ) -> list[_Result]:
        """Send ``items`` (all with the same server affinity) with retries; one result each."""
        try:
            return await self._router.call(
                episode_id, lambda server: self._send_once(server, items, on_result)
            )
        except PolicyError as exc:
            return [exc] * len(items)

    async def _send_once(
        self, server: Server, items: list[_Item], on_result: OnResult | None
    ) -> list[_Result]:
        assert self._session is not None
        rids = [self._rid() for _ in items]
        tokens = sum(len(ids) + self.max_new_tokens for _, ids in items)
        stream = self.strategy == "batch_stream"
        batched = self.strategy != "single"
        body = generate_body(
            [ids for _, ids in items] if batched else items[0][1],
            rids if batched else rids[0],
            self.sampling,
            stream=stream,
        )
        await server.budget.acquire(len(items), tokens)
        for (request, _), rid in zip(items, rids, strict=True):
            self._inflight[request.episode_id] = (server, rid)
        try:
            self.http_requests += 1
            with anyio.fail_after(self.request_timeout_s):
                async with transport.post(
                    self._session, server.url, "/generate", body, label=_LABEL
                ) as resp:
                    if stream:
                        return await self._read_stream(server, resp, items, on_result)
                    return self._read_answers(server, await resp.read(), items)
        except (transport.Retryable, PolicyError):
            raise
        except TimeoutError:
            self._abort_later(server, rids)
            err = PolicyError(f"{_LABEL} {server.url}: no answer within {self.request_timeout_s}s")
            return [err] * len(items)
        except anyio.get_cancelled_exc_class():
            # The request may be generating already (headers come with the answer).
            self._abort_later(server, rids)
            raise
        except (aiohttp.ClientError, OSError) as exc:
            err = PolicyError(
                f"{_LABEL} {server.url}: connection failed mid-answer: {transport.describe(exc)}"
            )
            return [err] * len(items)
        finally:
            for request, _ in items:
                self._inflight.pop(request.episode_id, None)
            await server.budget.release(len(items), tokens)

    def _abort_later(self, server: Server, rids: list[str]) -> None:
        if self._tg is None:
            return
        for rid in rids:
            self._tg.start_soon(self._abort, server, rid)

    async def _abort(self, server: Server, rid: str) -> None:
        assert self._session is not None
        self.aborts_sent += 1
        await transport.post_quietly(
            self._session,
            server.url + "/abort_request",
            {"rid": rid},
            timeout_s=self.connect_timeout_s,
        )

    # -- answers ----------------------------------------------------------------------------

    def _read_answers(self, server: Server, raw: bytes, items: list[_Item]) -> list[_Result]:
        answers = decode_answers(raw, where=f"{_LABEL} {server.url}")
        if len(answers) != len(items):
            raise PolicyError(
                f"{_LABEL} {server.url}: batch of {len(items)} got {len(answers)} answers"
            )
        return [
            answer if isinstance(answer, PolicyError) else self._to_response(server, req, answer)
            for (req, _), answer in zip(items, answers, strict=True)
        ]

    async def _read_stream(
        self,
        server: Server,
        resp: aiohttp.ClientResponse,
        items: list[_Item],
        on_result: OnResult | None,
    ) -> list[_Result]:
        where = f"{_LABEL} {server.url}"
        last: list[GenerateAnswer | None] = [None] * len(items)
        answered: dict[int, _Result] = {}
        events = transport.EventStream(resp)
        async for payload in events:
            chunk = decode_chunk(payload, where=where)
            index = chunk.index
            if not 0 <= index < len(items):
                raise PolicyError(f"{where}: malformed stream chunk (index {index})")
            last[index] = chunk
            if chunk.meta_info.finished and index not in answered:
                result = answered[index] = self._to_response(server, items[index][0], chunk)
                if on_result is not None:
                    on_result(index, result)
        missing = [i for i, c in enumerate(last) if c is None or not c.meta_info.finished]
        if missing or not events.finished:
            raise PolicyError(
                f"{where}: stream ended before {len(missing) or 'all'} of "
                f"{len(items)} answers finished"
            )
        return [answered[i] for i in range(len(items))]

    def _to_response(
        self, server: Server, request: PolicyRequest, answer: GenerateAnswer
    ) -> _Result:
        where = f"{_LABEL} {server.url}"
        ids = answer.output_ids
        meta = answer.meta_info
        entries = meta.output_token_logprobs
        logprobs = None
        if entries is not None:
            if [e.token_id for e in entries] != ids:
                return PolicyError(
                    f"{where}: unexpected answer shape: output_token_logprobs do not match "
                    "output_ids"
                )
            logprobs = [e.logprob for e in entries]
        text = answer.text if answer.text is not None else self.tokenizer.decode(ids)
        self.server_s += meta.e2e_latency
        kind = meta.finish_type
        if kind == "abort":
            finish = meta.finish_reason
            why = finish.message if isinstance(finish, FinishReason) and finish.message else ""
            return PolicyError(f"{where}: generation aborted{': ' + why if why else ''}")
        ledger = self._ledgers.get(request.episode_id)
        if ledger is None:
            return PolicyError(f"episode {request.episode_id} was finished while generating")
        try:
            ledger.append_generated(ids, logprobs)
        except PolicyError as exc:
            return exc
        completion = meta.completion_tokens
        return PolicyResponse(
            text=text,
            finish_reason="length" if kind == "length" else "stop",
            token_ids=ids,
            logprobs=logprobs,
            prompt_tokens=meta.prompt_tokens,
            completion_tokens=completion if completion is not None else len(ids),
        )
