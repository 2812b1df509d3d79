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
  per server. It asks for a stream with ``sampling_params.stream_interval`` set to
  ``max_new_tokens``, so SGLang sends each item's first token and then only its final
  chunk: about what a non-streamed batch costs, but with each item's own outcome (a
  non-streamed batch has none: SGLang 0.5.23 answers it with one HTTP 503 when one item
  is retracted and aborts the others, so all of them would be generated again). A batch's
  new observations are tokenized in one call before its prompts are built
  (:meth:`EpisodeLedgers.prefetch`). The answers are handed out together when the batch's
  *longest* generation finishes, so short turns wait for long ones, and the batch's
  episodes come back together (the next batches stay large; a group's members keep pace,
  so an over-sampled group rarely has a surplus request left to abort). The strategy for
  rollouts with thousands of episodes: the least client CPU per turn (docs/policies.md).
* ``"batch_stream"``: as ``"batch"``, but streamed at the server's own ``stream_interval``
  (cumulative chunks every few tokens), and each item's answer is handed to its episode as
  soon as its final chunk arrives.

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
Asking for the sparse stream left ``"batch"``'s figures where they were (the same bench,
15 s windows, one busy machine, non-streamed then sparse stream: 353 vs 383 turns/s,
99.6% vs 100.7% util, 201 vs 202 us client CPU per turn, 5.5 vs 5.2 s turn latency);
its ``client%`` now also counts a turn's wait for the batch's longest item, since each
item's server latency ends with its own final chunk.

Flow control per server: at most ``max_requests_per_server`` sequences and
``max_tokens_per_server`` tokens (prompt + ``max_new_tokens``) in flight.

Several servers: an episode is assigned on its first turn to the healthy server with the
fewest active episodes and stays there (radix/prefix-cache affinity). A connection refused
marks the server unhealthy and moves the episode to another server; a background task
(owned by the policy's task group) polls ``/health`` on unhealthy servers and re-admits
them.

Starting: ``async with policy`` waits (at most ``startup_timeout_s``, saying what it waits
for) until a server's ``GET /health`` answers 200 -- SGLang refuses connections while it
loads the weights and answers 503 while it warms up, for minutes -- then reads each
server's limits: the context length from ``GET /v1/models`` (``data[0].max_model_len``),
else ``GET /server_info`` (``max_req_input_len`` + 1), and whether the server streams only
deltas (``/server_info``'s ``incremental_streaming_output``; such chunks are accumulated).

Request ids are prefix-free: ``gymux-<run>-<episode>-<n>.`` (hex numbers, and ``.`` only at
the end), because SGLang aborts by rid *prefix* (its scheduler matches
``req.rid.startswith(rid)``): aborting one rid can never touch another request, and
:meth:`SGLangPolicy.episode_rid_prefix` (``gymux-<run>-<episode>-``) matches exactly one
episode's requests. A cancelled turn sends ``/abort_request`` with its exact rid -- SGLang
0.5.23's tokenizer manager (one tokenizer worker, the default) forwards an abort only for a
rid it is serving and drops any other prefix -- to its server and to every URL in
``worker_urls`` (SGLang's router does not forward ``/abort_request``, so when ``urls`` is a
router, list the workers behind it there).

Context: a prompt that does not fit (prompt + ``max_new_tokens`` > context) is answered
``finish_reason="context_limit"`` before sending when the context length is known; when
the server refuses one anyway (HTTP 400 "Requested token count exceeds the model's maximum
context length of N tokens" or "The input (N tokens) is longer than the model's context
length", or the same as an in-stream error), the turn gets ``context_limit`` too. SGLang
refuses a whole batch for one such item, so the policy learns N from the message, answers
the items that do not fit with ``context_limit`` and resends only the others (one by one
when the message does not tell which).

Errors: connection refused (nothing was sent) and HTTP 503 are retried with exponential
backoff and equal jitter (:func:`gymux._backoff.backoff_delay`), at most ``retries`` times.
A stale keep-alive connection -- a reused pooled connection that the server had closed as
idle, so the connection ends before any response byte arrives -- is retried once at once
(on another connection; the broken one is discarded), without counting against ``retries``
and without marking the server unhealthy: the request never reached a live handler, so
nothing was generated (the rule of RFC 9112 section 9.3.1). A second such
failure in a row counts as an ordinary retryable error. Everything else (timeouts, other
HTTP errors, malformed JSON, a batch answer of the wrong length, a connection dropped mid-
answer) fails only the affected requests with :class:`PolicyError` (the runtime records
``policy_error``). Every HTTP call is bounded by ``request_timeout_s``. In a stream, an
item whose final chunk is an abort with ``status_code`` 503 (SGLang retracted it under
memory pressure, or its queue was full) is resent alone with a fresh rid (the same
bounded retries), while the rest of its batch is answered as it finishes; an in-stream
``{"error": {...}}`` chunk fails the unfinished items with the server's message. Both batch
strategies stream for this reason: SGLang answers a *non-streamed* batch with one HTTP 503
when one item is retracted and aborts the others (its tokenizer manager's
``_collect_batch_responses``), so only a stream lets the other items' answers through.
Each answer's ``meta_info.weight_version`` is returned as
:attr:`PolicyResponse.weight_version` and recorded on the trajectory's turn.

Options: :class:`SGLangClientOptions` (:class:`gymux.policies.options.SGLangOptions` plus
``worker_urls`` and ``startup_timeout_s``; ``options=``), or the same names as
keywords (``urls`` may be positional; ``tokenizer=`` takes a :class:`ChatTokenizer` or a
folder). The pieces: :mod:`.transport` (HTTP), :mod:`.routing` (servers, affinity, health,
retries), :mod:`.wire` (SGLang's request and answer shapes); this module joins them with
the per-episode token ledgers (:class:`~gymux.policies.tokens.EpisodeLedgers`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import anyio
import msgspec

from gymux._backoff import backoff_delay
from gymux.policies.batching import BatchingPolicy, OnResult
from gymux.policies.options import SGLangOptions, Strategy, build_server_options
from gymux.policies.protocol import PolicyError, PolicyRequest, PolicyResponse
from gymux.policies.sglang import transport
from gymux.policies.sglang.routing import Router, Server
from gymux.policies.sglang.wire import (
    FinishReason,
    GenerateAnswer,
    ServerInfo,
    StreamError,
    TokenLogprob,
    context_limit_of,
    decode_answers,
    decode_event,
    decode_model_list,
    decode_server_info,
    error_message,
    generate_batch_body_parts,
    generate_body_parts,
    is_context_error,
)
from gymux.policies.tokens import (
    ChatTokenizer,
    EpisodeLedgers,
    PromptIds,
    context_limit_response,
    load_tokenizer,
    prepare_all,
)
from gymux.trajectory import TokenData

__all__ = ["SGLangClientOptions", "SGLangPolicy", "Strategy"]

_LABEL = "SGLang"
_Result = PolicyResponse | BaseException
_Item = tuple[PolicyRequest, PromptIds]
#: The abort status SGLang gives a request it retracted or could not queue: retry it.
_RETRY_STATUS = 503


#: The old name of :class:`gymux.policies.options.SGLangOptions` (the client's options).
SGLangClientOptions = SGLangOptions


class _Retry:
    """An item the server aborted with status 503: resend it (with a fresh rid)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _ContextRefused(Exception):
    """The server refused the request because a prompt does not fit the context."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.limit = context_limit_of(message)


class _Partial:
    """One item's output so far in an incremental stream (chunks carry only what is new)."""

    __slots__ = ("ids", "logprobs", "text")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = None
        self.text = ""

    def add(self, chunk: GenerateAnswer) -> GenerateAnswer:
        self.ids.extend(chunk.output_ids)
        self.text += chunk.text or ""
        entries = chunk.meta_info.output_token_logprobs
        if entries is not None:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(entries)
        if not chunk.meta_info.finished:
            return chunk
        meta = msgspec.structs.replace(
            chunk.meta_info,
            output_token_logprobs=list(self.logprobs) if self.logprobs is not None else None,
        )
        return GenerateAnswer(
            output_ids=list(self.ids), meta_info=meta, text=self.text, index=chunk.index
        )


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
        opts = self.options = build_server_options(
            SGLangOptions, urls, options, keywords, who="SGLangPolicy"
        )
        super().__init__(
            max_batch=opts.max_batch,
            window_s=opts.window_s,
            max_inflight_batches=opts.max_inflight_batches,
        )
        self.tokenizer = load_tokenizer(tokenizer, opts.tokenizer_path, who="SGLangPolicy")
        self.strategy: Strategy = opts.strategy
        self.max_new_tokens = opts.max_new_tokens
        self.sampling: dict[str, Any] = opts.sampling("max_new_tokens")
        #: ``batch``: one chunk per item besides its first token (SGLang sends the first
        #: token at once, then every ``stream_interval`` tokens, then the final chunk).
        self._batch_sampling = {**self.sampling, "stream_interval": self.max_new_tokens}
        self.context_length = opts.context_length
        self.request_timeout_s = opts.request_timeout_s
        self.connect_timeout_s = opts.connect_timeout_s
        self.worker_urls = [u.rstrip("/") for u in opts.worker_urls or []]
        self._router = Router.from_options(opts, label=_LABEL)
        self._session: transport.Pool | None = None
        self._ledgers = EpisodeLedgers(self.tokenizer)
        self._inflight: dict[str, tuple[Server, str]] = {}  # episode -> (server, rid)
        self._run_key = uuid.uuid4().hex[:12]
        self._episode_keys: dict[str, str] = {}
        self._episode_seq = itertools.count()
        self._rid_seq = itertools.count()
        #: Server URL -> whether it streams deltas (``--incremental-streaming-output``).
        self._incremental: dict[str, bool] = {}
        self.http_requests = 0
        self.aborts_sent = 0
        #: Items resent because the server aborted them with status 503 (in a stream).
        self.items_resent = 0
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
        """Open the connection pool, wait for a server to be ready, read the servers'
        limits, start the dispatcher and the health watcher (both owned by the policy's
        task group)."""
        opts = self.options
        self._session = transport.open_session(
            connections_per_host=opts.connections_per_server,
            request_timeout_s=opts.request_timeout_s,
            connect_timeout_s=opts.connect_timeout_s,
        )
        try:
            await self._router.wait_ready(
                self._probe,
                deadline_s=opts.startup_timeout_s,
                timeout_s=self.connect_timeout_s + 1,
                what="/health to answer 200; SGLang answers 503 while it loads the model",
            )
            limits = [await self._learn(s) for s in self._router.servers if s.healthy]
            await super().aopen()
        except BaseException:
            await self._close_session()
            raise
        if self.context_length is None:
            known = [limit for limit in limits if limit is not None]
            self.context_length = min(known) if known else None
        assert self._tg is not None
        self._tg.start_soon(
            functools.partial(
                self._router.watch_health,
                self._probe_and_learn,
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

    async def _probe_and_learn(self, server: Server) -> None:
        await self._probe(server)
        if server.url not in self._incremental:
            await self._learn(server)

    async def _learn(self, server: Server) -> int | None:
        """Read what the policy needs from ``server`` (best effort): its streaming mode,
        and its context length (``None`` when it reports none)."""
        limit: int | None = None
        info = ServerInfo()
        with anyio.move_on_after(self.connect_timeout_s + 1):
            with contextlib.suppress(PolicyError, OSError):
                limit = decode_model_list(await self._get(server, "/v1/models")).max_model_len
            with contextlib.suppress(PolicyError, OSError):
                info = decode_server_info(await self._get(server, "/server_info"))
        self._incremental[server.url] = info.incremental_streaming_output
        if limit is None and info.max_req_input_len is not None:
            limit = info.max_req_input_len + 1
        return limit

    # -- the public surface -------------------------------------------------------------

    def finish_episode(self, episode_id: str) -> TokenData | None:
        """Take an episode's token-exact record and forget its state.

        Returns the :class:`TokenData` (ids, logprobs, loss mask, tokenizer name) of every
        token the episode's prompts and generations consisted of, or ``None`` when this
        policy never saw the episode. Call it once, when the episode has ended (however it
        ended); afterwards the episode id is unknown to the policy.
        """
        self._episode_keys.pop(episode_id, None)
        self._router.forget(episode_id)
        return self._ledgers.finish(episode_id)

    def episode_rid_prefix(self, episode_id: str) -> str:
        """The prefix of every rid this policy sends for ``episode_id`` (and of no other
        rid): ``gymux-<run>-<episode>-``; an SGLang abort by this prefix matches exactly
        that episode's requests."""
        key = self._episode_keys.get(episode_id)
        if key is None:
            key = self._episode_keys[episode_id] = f"{next(self._episode_seq):x}"
        return f"gymux-{self._run_key}-{key}-"

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
        return await self._act_one(self._session, request, prepared)

    async def act_batch(
        self, requests: Sequence[PolicyRequest], on_result: OnResult | None = None
    ) -> Sequence[_Result]:
        """Answer ``requests`` together (used by the ``batch`` strategies' dispatcher).

        ``on_result(index, result)``, when given, is called as soon as each answer is known
        (with ``batch_stream``, before the rest of its batch has finished).
        """
        # The batch's observation pieces tokenized in one call, then looked up one by one.
        self._ledgers.prefetch(requests)
        out, prompts = prepare_all(requests, self._prepare)
        groups: dict[int, list[tuple[int, PolicyRequest, PromptIds]]] = {}
        for i, ids in prompts:
            server = self._router.server_for(requests[i].episode_id)
            groups.setdefault(id(server), []).append((i, requests[i], ids))

        async def run(group: list[tuple[int, PolicyRequest, PromptIds]]) -> None:
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
        # batch_stream hands out each item as its final chunk arrives; batch answers its
        # batch together (as a non-streamed batch would), its stream only telling each
        # item's outcome.
        return await self.act_batch(
            requests, on_result if self.strategy == "batch_stream" else None
        )

    # -- per-request state ----------------------------------------------------------------

    def _prepare(self, request: PolicyRequest) -> PromptIds | PolicyResponse:
        return self._ledgers.prompt_ids(
            request, max_new_tokens=self.max_new_tokens, context_length=self.context_length
        )

    def _rid(self, episode_id: str) -> str:
        return f"{self.episode_rid_prefix(episode_id)}{next(self._rid_seq):x}."

    # -- sending ----------------------------------------------------------------------------

    async def _send(
        self, episode_id: str, items: list[_Item], on_result: OnResult | None = None
    ) -> list[_Result]:
        """Send ``items`` (all with the same server affinity) with retries; one result each.

        Items the server aborted with status 503 are resent alone (bounded like other
        retries); a context-length refusal is resolved per item (see the module doc).
        """
        results: list[_Result | None] = [None] * len(items)
        pending = list(range(len(items)))
        resent = 0
        while pending:
            batch = [items[i] for i in pending]
            where = list(pending)

            def early(j: int, res: _Result, where: list[int] = where) -> None:
                if on_result is not None:
                    on_result(where[j], res)

            async def once(
                server: Server, batch: list[_Item] = batch, early: OnResult = early
            ) -> list[_Result | _Retry]:
                return await self._send_once(server, batch, early)

            try:
                got = await self._router.call(episode_id, once)
            except _ContextRefused as exc:
                await self._resolve_context(episode_id, items, pending, results, exc, on_result)
                break
            except PolicyError as exc:
                for i in pending:
                    results[i] = exc
                break
            retry: list[int] = []
            reason = ""
            for i, res in zip(where, got, strict=True):
                if isinstance(res, _Retry):
                    retry.append(i)
                    reason = res.reason
                else:
                    results[i] = res
            if retry:
                resent += 1
                try:
                    delay = self._resend_delay(resent, len(retry), reason)
                except PolicyError as err:
                    for i in retry:
                        results[i] = err
                    break
                await anyio.sleep(delay)
            pending = retry
        return [r if r is not None else PolicyError("no answer") for r in results]

    async def _act_one(
        self, session: transport.Pool, request: PolicyRequest, ids: PromptIds
    ) -> PolicyResponse:
        """The ``single`` strategy's turn: what :meth:`_send` (through :meth:`Router.call`)
        and :meth:`_send_once` do for a batch, for one item, without their per-batch lists
        and closures. With thousands of turns in flight, whatever a turn's call holds while
        it waits is alive when the collector runs, and the collector walks all of it."""
        router = self._router
        episode_id = request.episode_id
        tokens = len(ids) + self.max_new_tokens
        attempt = resent = 0
        stale_retried = False
        while True:
            server = router.server_for(episode_id)
            rid = self._rid(episode_id)
            body = transport.Parts(
                generate_body_parts(ids.json_parts(), rid, self.sampling, stream=False)
            )
            await server.budget.acquire(1, tokens)
            self._inflight[episode_id] = (server, rid)
            delay = 0.0
            try:
                self.http_requests += 1
                raw = await transport.post_read(
                    session, server.url, "/generate", body, label=_LABEL
                )
                result = self._read_answers(server, raw, [(request, ids)])[0]
            except transport.Retryable as exc:
                attempt, stale_retried, delay = router.after_failure(
                    server, exc, attempt, stale_retried
                )
                result = None
            except transport.HTTPStatusError as exc:
                if exc.status == 400 and is_context_error(error_message(exc.body)):
                    return context_limit_response(len(ids))
                raise
            except anyio.get_cancelled_exc_class():
                # The request may be generating already (headers come with the answer).
                self._abort_later(server, [rid])
                raise
            except OSError as exc:  # TimeoutError included
                raise self._unanswered(server, [rid], exc) from None
            finally:
                self._inflight.pop(episode_id, None)
                await server.budget.release(1, tokens)
            if isinstance(result, _Retry):
                # Aborted with status 503 in the answer: resent (bounded as in _send), and
                # the connection-level retries start again, as a new Router.call would.
                resent += 1
                delay = self._resend_delay(resent, 1, result.reason)
                attempt, stale_retried = 0, False
            elif isinstance(result, BaseException):
                raise result
            elif result is not None:
                return result
            if delay:
                await anyio.sleep(delay)

    def _resend_delay(self, resent: int, items: int, reason: str) -> float:
        """``items`` aborted with status 503 are resent for the ``resent``-th time: the
        backoff before it; :class:`PolicyError` once the retries are spent."""
        router = self._router
        if resent > router.retries:
            raise PolicyError(f"{_LABEL}: giving up after {resent} attempts: {reason}")
        self.items_resent += items
        router.retried += 1
        return backoff_delay(resent, router.backoff_s, router.backoff_max_s)

    def _unanswered(self, server: Server, rids: list[str], exc: OSError) -> PolicyError:
        """The error of a request that got no complete answer: its deadline passed (its
        rids are aborted: they may still be generating) or the connection failed."""
        if isinstance(exc, TimeoutError):
            self._abort_later(server, rids)
            return PolicyError(f"{_LABEL} {server.url}: no answer within {self.request_timeout_s}s")
        return PolicyError(
            f"{_LABEL} {server.url}: connection failed mid-answer: {transport.describe(exc)}"
        )

    async def _resolve_context(
        self,
        episode_id: str,
        items: list[_Item],
        pending: list[int],
        results: list[_Result | None],
        refused: _ContextRefused,
        on_result: OnResult | None,
    ) -> None:
        """The server refused ``pending`` items for the context: answer the items that do
        not fit with ``context_limit`` and resend the others (one by one when the refusal
        does not tell which item it was about)."""
        if len(pending) == 1:
            results[pending[0]] = context_limit_response(len(items[pending[0]][1]))
            return
        limit = refused.limit
        if limit is not None:
            self.context_length = min(self.context_length or limit, limit)
        rest = []
        for i in pending:
            ids = items[i][1]
            if limit is not None and len(ids) + self.max_new_tokens > limit:
                results[i] = context_limit_response(len(ids))
            else:
                rest.append(i)
        if not rest:
            return
        groups = [rest] if len(rest) < len(pending) else [[i] for i in rest]

        async def resend(group: list[int]) -> None:
            def early(j: int, res: _Result) -> None:
                if on_result is not None:
                    on_result(group[j], res)

            got = await self._send(episode_id, [items[i] for i in group], early)
            for i, res in zip(group, got, strict=True):
                results[i] = res

        async with anyio.create_task_group() as tg:
            for group in groups:
                tg.start_soon(resend, group)

    async def _send_once(
        self, server: Server, items: list[_Item], on_result: OnResult | None
    ) -> list[_Result | _Retry]:
        assert self._session is not None
        rids = [self._rid(request.episode_id) for request, _ in items]
        tokens = sum(len(ids) + self.max_new_tokens for _, ids in items)
        # Both batch strategies stream: only a stream tells each item's outcome (a
        # non-streamed batch is answered 503 as a whole when one item is retracted).
        batched = stream = self.strategy != "single"
        # Written as fragments: the prompts' shared pieces are copied once, by http1.
        if batched:
            body = transport.Parts(
                generate_batch_body_parts(
                    [ids.json_parts() for _, ids in items],
                    rids,
                    self._batch_sampling if self.strategy == "batch" else self.sampling,
                    stream=stream,
                )
            )
        else:
            body = transport.Parts(
                generate_body_parts(items[0][1].json_parts(), rids[0], self.sampling, stream=False)
            )
        await server.budget.acquire(len(items), tokens)
        for (request, _), rid in zip(items, rids, strict=True):
            self._inflight[request.episode_id] = (server, rid)
        try:
            self.http_requests += 1
            # Bounded by the session's request_timeout_s (the whole answer or stream
            # included): TimeoutError, with no cancel scope of our own per request.
            if not stream:
                raw = await transport.post_read(
                    self._session, server.url, "/generate", body, label=_LABEL
                )
                return self._read_answers(server, raw, items)
            async with transport.post(
                self._session, server.url, "/generate", body, label=_LABEL
            ) as resp:
                return await self._read_stream(server, resp, items, on_result)
        except transport.HTTPStatusError as exc:
            if exc.status == 400:
                message = error_message(exc.body)
                if is_context_error(message):
                    raise _ContextRefused(message) from None
            raise
        except (transport.Retryable, PolicyError, _ContextRefused):
            raise
        except anyio.get_cancelled_exc_class():
            # The request may be generating already (headers come with the answer).
            self._abort_later(server, rids)
            raise
        except OSError as exc:  # TimeoutError included
            return [self._unanswered(server, rids, exc)] * len(items)
        finally:
            for request, _ in items:
                self._inflight.pop(request.episode_id, None)
            await server.budget.release(len(items), tokens)

    def _abort_later(self, server: Server, rids: list[str]) -> None:
        """Abort ``rids`` on their server and on every worker URL (best effort, in the
        background). Each rid is exact: rids are prefix-free, so it aborts only itself."""
        if self._tg is None:
            return
        for url in dict.fromkeys([server.url, *self.worker_urls]):
            for rid in rids:
                self._tg.start_soon(self._abort, url, rid)

    async def _abort(self, url: str, rid: str) -> None:
        assert self._session is not None
        self.aborts_sent += 1
        await transport.post_quietly(
            self._session,
            url + "/abort_request",
            {"rid": rid},
            timeout_s=self.connect_timeout_s,
        )

    # -- answers ----------------------------------------------------------------------------

    def _read_answers(
        self, server: Server, raw: bytes, items: list[_Item]
    ) -> list[_Result | _Retry]:
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
        resp: transport.Response,
        items: list[_Item],
        on_result: OnResult | None,
    ) -> list[_Result | _Retry]:
        where = f"{_LABEL} {server.url}"
        partial = [_Partial() for _ in items] if self._incremental.get(server.url, False) else None
        answered: dict[int, _Result | _Retry] = {}
        events = transport.EventStream(resp)
        async for payload in events:
            event = decode_event(payload, where=where)
            if isinstance(event, StreamError):
                self._stream_error(where, event, len(items), answered)
                continue
            index = event.index
            if not 0 <= index < len(items):
                raise PolicyError(f"{where}: malformed stream chunk (index {index})")
            if index in answered:
                continue
            chunk = partial[index].add(event) if partial is not None else event
            if chunk.meta_info.finished:
                result = answered[index] = self._to_response(server, items[index][0], chunk)
                if on_result is not None and not isinstance(result, _Retry):
                    on_result(index, result)
        missing = [i for i in range(len(items)) if i not in answered]
        if missing or not events.finished:
            raise PolicyError(
                f"{where}: stream ended before {len(missing) or 'all'} of "
                f"{len(items)} answers finished"
            )
        return [answered[i] for i in range(len(items))]

    def _stream_error(
        self, where: str, event: StreamError, count: int, answered: dict[int, _Result | _Retry]
    ) -> None:
        """An in-stream ``{"error": ...}`` chunk: a context refusal or a retryable error of
        the whole request raises; otherwise the unfinished items (or the one it names) fail
        with the server's message."""
        message = event.error.message or "(no message)"
        if not answered and event.index is None:
            if is_context_error(message):
                raise _ContextRefused(message)
            if event.error.retryable:
                raise transport.Retryable(f"{where}: error in stream: {message}", refused=False)
        err = PolicyError(f"{where}: error in stream: {message}")
        targets = [event.index] if event.index is not None else range(count)
        for i in targets:
            if 0 <= i < count and i not in answered:
                answered[i] = err

    def _to_response(
        self, server: Server, request: PolicyRequest, answer: GenerateAnswer
    ) -> _Result | _Retry:
        where = f"{_LABEL} {server.url}"
        ids = answer.output_ids
        meta = answer.meta_info
        entries = meta.output_token_logprobs
        self.server_s += meta.e2e_latency or 0.0
        if meta.finish_type == "abort":
            finish = meta.finish_reason
            why = finish.message if isinstance(finish, FinishReason) and finish.message else ""
            if isinstance(finish, FinishReason) and finish.status_code == _RETRY_STATUS:
                return _Retry(f"{where}: generation aborted with status 503: {why}")
            return PolicyError(f"{where}: generation aborted{': ' + why if why else ''}")
        logprobs = None
        if entries is not None:
            if [e.token_id for e in entries] != ids:
                return PolicyError(
                    f"{where}: unexpected answer shape: output_token_logprobs do not match "
                    "output_ids"
                )
            got = [e.logprob for e in entries]
            if None in got:
                return PolicyError(f"{where}: unexpected answer shape: a null output logprob")
            logprobs = cast(list[float], got)
        text = answer.text if answer.text is not None else self.tokenizer.decode(ids)
        try:
            self._ledgers.record(request.episode_id, ids, logprobs)
        except PolicyError as exc:
            return exc
        completion = meta.completion_tokens
        return PolicyResponse(
            text=text,
            finish_reason="length" if meta.finish_type == "length" else "stop",
            token_ids=ids,
            logprobs=logprobs,
            prompt_tokens=meta.prompt_tokens,
            completion_tokens=completion if completion is not None else len(ids),
            weight_version=meta.weight_version,
        )
