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
backoff and jitter, at most ``retries`` times. A stale keep-alive connection -- a reused
pooled connection that the server had closed as idle, so the request fails with
``ServerDisconnectedError``/``ClientOSError`` before any response byte arrives -- is
retried once at once (on another connection; the broken one is discarded), without
counting against ``retries`` and without marking the server unhealthy: the request never
reached a live handler, so nothing was generated (the rule of RFC 9112 section 9.3.1, which
aiohttp itself applies only to idempotent methods). A second such failure in a row counts
as an ordinary retryable error. Everything else (timeouts, other HTTP
errors, malformed JSON, a batch answer of the wrong length, a connection dropped
mid-answer) fails only the affected requests with :class:`PolicyError` (the runtime records
``policy_error``). Every HTTP call is bounded by ``request_timeout_s``. When an episode's
``act()`` is cancelled while its generation runs, ``/abort_request`` is sent with its rid.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
import anyio

from gymux.policies.batching import BatchingPolicy, _Pending
from gymux.policies.protocol import PolicyError, PolicyRequest, PolicyResponse
from gymux.policies.tokens import ChatTokenizer, TokenLedger
from gymux.trajectory import TokenData

__all__ = ["SGLangPolicy", "Strategy"]

Strategy = Literal["single", "batch", "batch_stream"]
_Result = PolicyResponse | BaseException
_OnResult = Callable[[int, _Result], None]


class _Retryable(Exception):
    """Safe to retry: nothing was generated (connection refused, 503)."""

    def __init__(self, message: str, *, refused: bool, stale: bool = False) -> None:
        super().__init__(message)
        self.refused = refused
        self.stale = stale


class _Budget:
    """Counts sequences and tokens in flight on one server; a lone oversize item may pass."""

    def __init__(self, max_requests: int, max_tokens: int) -> None:
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.requests = 0
        self.tokens = 0
        self._cond = anyio.Condition()

    async def acquire(self, requests: int, tokens: int) -> None:
        async with self._cond:
            while self.requests and (
                self.requests + requests > self.max_requests
                or self.tokens + tokens > self.max_tokens
            ):
                await self._cond.wait()
            self.requests += requests
            self.tokens += tokens

    async def release(self, requests: int, tokens: int) -> None:
        with anyio.CancelScope(shield=True):
            async with self._cond:
                self.requests -= requests
                self.tokens -= tokens
                self._cond.notify_all()


class _Server:
    def __init__(self, url: str, max_requests: int, max_tokens: int) -> None:
        self.url = url.rstrip("/")
        self.healthy = True
        self.episodes = 0
        self.budget = _Budget(max_requests, max_tokens)
        self.model_info: dict[str, Any] = {}
        self.last_error = ""


class SGLangPolicy(BatchingPolicy):
    """See the module docstring. ``tokenizer``: a :class:`ChatTokenizer` or a local folder."""

    name = "sglang"
    version = "1"

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        tokenizer: ChatTokenizer | str | Path,
        strategy: Strategy = "single",
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        context_length: int | None = None,
        max_batch: int = 128,
        window_s: float = 0.002,
        max_inflight_batches: int = 64,
        max_requests_per_server: int = 1024,
        max_tokens_per_server: int = 4_000_000,
        request_timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
        retries: int = 4,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
        health_interval_s: float = 1.0,
        connections_per_server: int = 256,
    ) -> None:
        super().__init__(
            max_batch=max_batch, window_s=window_s, max_inflight_batches=max_inflight_batches
        )
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise ValueError("SGLangPolicy needs at least one server URL")
        if strategy not in ("single", "batch", "batch_stream"):
            raise ValueError(f"unknown strategy {strategy!r}")
        self.tokenizer = (
            tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer.from_dir(tokenizer)
        )
        self.strategy: Strategy = strategy
        self.max_new_tokens = max_new_tokens
        self.sampling: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if stop:
            self.sampling["stop"] = list(stop)
        self.context_length = context_length
        self.servers = [_Server(u, max_requests_per_server, max_tokens_per_server) for u in urls]
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.health_interval_s = health_interval_s
        self.connections_per_server = connections_per_server
        self._session: aiohttp.ClientSession | None = None
        self._ledgers: dict[str, TokenLedger] = {}
        self._affinity: dict[str, _Server] = {}
        self._inflight: dict[str, tuple[_Server, str]] = {}  # episode -> (server, rid)
        self._rid_prefix = uuid.uuid4().hex[:12]
        self._rid_seq = itertools.count()
        self.http_requests = 0
        self.retried = 0
        #: Requests resent after failing on a stale (server-closed) keep-alive connection.
        self.stale_retries = 0
        self.aborts_sent = 0
        #: Seconds each answered turn spent at the server (its ``meta_info.e2e_latency``).
        self.server_s = 0.0

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self.connections_per_server, keepalive_timeout=60
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self.request_timeout_s, sock_connect=self.connect_timeout_s
            ),
            json_serialize=json.dumps,
            trace_configs=[_reuse_trace()],
        )
        try:
            await self._check_servers()
            await super().__aenter__()
        except BaseException:
            await self._session.close()
            self._session = None
            raise
        assert self._tg is not None
        self._tg.start_soon(self._health_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            session, self._session = self._session, None
            if session is not None:
                await session.close()

    async def _check_servers(self) -> None:
        problems = []
        for server in self.servers:
            try:
                with anyio.fail_after(self.connect_timeout_s + 1):
                    await self._get(server, "/health")
                    info = await self._get(server, "/get_model_info")
                server.model_info = json.loads(info) if info else {}
                server.healthy = True
            except Exception as exc:
                server.healthy = False
                server.last_error = _describe(exc)
                problems.append(f"{server.url}: {server.last_error}")
        if all(not s.healthy for s in self.servers):
            raise PolicyError("no SGLang server reachable: " + "; ".join(problems))
        if self.context_length is None:
            limits = [
                int(s.model_info["max_context_length"])
                for s in self.servers
                if isinstance(s.model_info.get("max_context_length"), int)
            ]
            self.context_length = min(limits) if limits else None

    async def _get(self, server: _Server, path: str) -> str:
        assert self._session is not None
        async with self._session.get(server.url + path) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise PolicyError(f"GET {server.url}{path}: HTTP {resp.status}")
            return text

    async def _health_loop(self) -> None:
        while True:
            await anyio.sleep(self.health_interval_s)
            for server in self.servers:
                if server.healthy:
                    continue
                try:
                    with anyio.fail_after(self.connect_timeout_s):
                        await self._get(server, "/health")
                except Exception:
                    continue
                server.healthy = True

    # -- the public surface -------------------------------------------------------------

    def finish_episode(self, episode_id: str) -> TokenData | None:
        """Take an episode's token-exact record and forget its state.

        Returns the :class:`TokenData` (ids, logprobs, loss mask, tokenizer name) of every
        token the episode's prompts and generations consisted of, or ``None`` when this
        policy never saw the episode. Call it once, when the episode has ended (however it
        ended); afterwards the episode id is unknown to the policy.
        """
        ledger = self._ledgers.pop(episode_id, None)
        server = self._affinity.pop(episode_id, None)
        if server is not None:
            server.episodes -= 1
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
        self, requests: Sequence[PolicyRequest], on_result: _OnResult | None = None
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
            server = self._server_for(item[1].episode_id)
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

    async def _run_batch(self, batch: list[_Pending]) -> None:
        # Like BatchingPolicy._run_batch, but each request is answered as soon as it is done
        # (batch_stream hands out items as their final chunk arrives).
        try:
            self.batches += 1
            self.batched_requests += len(batch)

            def early(index: int, result: _Result) -> None:
                pending = batch[index]
                if pending.done.is_set():
                    return
                if isinstance(result, PolicyResponse):
                    pending.response = result
                else:
                    pending.error = result
                pending.done.set()

            try:
                results = await self.act_batch([p.request for p in batch], early)
            except Exception as exc:
                err = exc if isinstance(exc, PolicyError) else PolicyError(_describe(exc))
                results = [err] * len(batch)
            for pending, result in zip(batch, results, strict=True):
                if pending.done.is_set():
                    continue
                if isinstance(result, PolicyResponse):
                    pending.response = result
                else:
                    pending.error = result
                pending.done.set()
        finally:
            for pending in batch:
                if not pending.done.is_set():
                    pending.error = PolicyError(f"policy {self.name!r} shut down mid-batch")
                    pending.done.set()
            self._slots.release()

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

    def _server_for(self, episode_id: str) -> _Server:
        server = self._affinity.get(episode_id)
        if server is not None and server.healthy:
            return server
        healthy = [s for s in self.servers if s.healthy] or self.servers
        best = min(healthy, key=lambda s: (s.episodes, s.budget.requests))
        if server is not None:
            server.episodes -= 1
        best.episodes += 1
        self._affinity[episode_id] = best
        return best

    def _rid(self) -> str:
        return f"gymux-{self._rid_prefix}-{next(self._rid_seq)}"

    # -- sending ----------------------------------------------------------------------------

    async def _send(
        self,
        episode_id: str,
        items: list[tuple[PolicyRequest, list[int]]],
        on_result: _OnResult | None = None,
    ) -> list[_Result]:
        """Send ``items`` (all with the same server affinity) with retries; one result each."""
        attempt = 0
        stale_retried = False
        while True:
            server = self._server_for(episode_id)
            try:
                return await self._send_once(server, items, on_result)
            except PolicyError as exc:
                return [exc] * len(items)
            except _Retryable as exc:
                server.last_error = str(exc)
                if exc.stale and not stale_retried:
                    stale_retried = True
                    self.stale_retries += 1
                    continue
                if exc.refused:
                    server.healthy = False
                attempt += 1
                if attempt > self.retries:
                    err = PolicyError(f"SGLang: giving up after {attempt} attempts: {exc}")
                    return [err] * len(items)
                self.retried += 1
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                await anyio.sleep(delay * (0.5 + random.random() / 2))

    async def _send_once(
        self,
        server: _Server,
        items: list[tuple[PolicyRequest, list[int]]],
        on_result: _OnResult | None,
    ) -> list[_Result]:
        assert self._session is not None
        rids = [self._rid() for _ in items]
        tokens = sum(len(ids) + self.max_new_tokens for _, ids in items)
        stream = self.strategy == "batch_stream"
        batched = self.strategy != "single"
        body: dict[str, Any] = {
            "input_ids": [ids for _, ids in items] if batched else items[0][1],
            "sampling_params": self.sampling,
            "return_logprob": True,
            "rid": rids if batched else rids[0],
            "stream": stream,
        }
        await server.budget.acquire(len(items), tokens)
        for (request, _), rid in zip(items, rids, strict=True):
            self._inflight[request.episode_id] = (server, rid)
        try:
            self.http_requests += 1
            with anyio.fail_after(self.request_timeout_s):
                conn: dict[str, bool] = {}
                try:
                    resp_cm = self._session.post(
                        server.url + "/generate", json=body, trace_request_ctx=conn
                    )
                    resp = await resp_cm.__aenter__()
                except aiohttp.ClientConnectorError as exc:
                    raise _Retryable(
                        f"{server.url} refused the connection ({exc.os_error})", refused=True
                    ) from None
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if not conn.get("reused"):
                        raise
                    raise _Retryable(
                        f"{server.url} closed a reused keep-alive connection before answering"
                        f" ({_describe(exc)})",
                        refused=False,
                        stale=True,
                    ) from None
                try:
                    if resp.status == 503:
                        raise _Retryable(f"{server.url}: HTTP 503", refused=False)
                    if resp.status != 200:
                        text = (await resp.text())[:200]
                        raise PolicyError(f"SGLang {server.url}: HTTP {resp.status}: {text}")
                    if stream:
                        return await self._read_stream(server, resp, items, on_result)
                    return self._parse_answer(server, await resp.read(), items, rids, batched)
                finally:
                    await resp_cm.__aexit__(None, None, None)
        except (_Retryable, PolicyError):
            raise
        except TimeoutError:
            self._abort_later(server, rids)
            err = PolicyError(f"SGLang {server.url}: no answer within {self.request_timeout_s}s")
            return [err] * len(items)
        except anyio.get_cancelled_exc_class():
            # The request may be generating already (headers come with the answer).
            self._abort_later(server, rids)
            raise
        except (aiohttp.ClientError, OSError) as exc:
            err = PolicyError(
                f"SGLang {server.url}: connection failed mid-answer: {_describe(exc)}"
            )
            return [err] * len(items)
        finally:
            for request, _ in items:
                self._inflight.pop(request.episode_id, None)
            await server.budget.release(len(items), tokens)

    def _abort_later(self, server: _Server, rids: list[str]) -> None:
        if self._tg is None:
            return
        for rid in rids:
            self._tg.start_soon(self._abort, server, rid)

    async def _abort(self, server: _Server, rid: str) -> None:
        assert self._session is not None
        self.aborts_sent += 1
        try:
            with anyio.fail_after(self.connect_timeout_s):
                async with self._session.post(
                    server.url + "/abort_request", json={"rid": rid}
                ) as resp:
                    await resp.read()
        except Exception:  # best effort
            pass

    def _parse_answer(
        self,
        server: _Server,
        raw: bytes,
        items: list[tuple[PolicyRequest, list[int]]],
        rids: list[str],
        batched: bool,
    ) -> list[_Result]:
        try:
            data = json.loads(raw)
        except ValueError:
            raise PolicyError(
                f"SGLang {server.url}: malformed JSON in /generate answer ({len(raw)} bytes)"
            ) from None
        answers = data if isinstance(data, list) else [data]
        if not batched and isinstance(data, list):
            answers = data
        if len(answers) != len(items):
            raise PolicyError(
                f"SGLang {server.url}: batch of {len(items)} got {len(answers)} answers"
            )
        return [
            self._to_response(server, request, answer)
            for (request, _), answer in zip(items, answers, strict=True)
        ]

    async def _read_stream(
        self,
        server: _Server,
        resp: aiohttp.ClientResponse,
        items: list[tuple[PolicyRequest, list[int]]],
        on_result: _OnResult | None,
    ) -> list[_Result]:
        last: list[dict[str, Any] | None] = [None] * len(items)
        answered: dict[int, _Result] = {}
        done = False
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            try:
                chunk = json.loads(payload)
                index = int(chunk.get("index", 0))
                last[index] = chunk
            except (ValueError, TypeError, AttributeError, IndexError):
                raise PolicyError(f"SGLang {server.url}: malformed stream chunk") from None
            if _finished(chunk) and index not in answered:
                result = answered[index] = self._to_response(server, items[index][0], chunk)
                if on_result is not None:
                    on_result(index, result)
        missing = [i for i, c in enumerate(last) if c is None or not _finished(c)]
        if missing or not done:
            raise PolicyError(
                f"SGLang {server.url}: stream ended before {len(missing) or 'all'} of "
                f"{len(items)} answers finished"
            )
        return [answered[i] for i in range(len(items))]

    def _to_response(self, server: _Server, request: PolicyRequest, answer: Any) -> _Result:
        try:
            ids = [int(t) for t in answer["output_ids"]]
            meta = answer["meta_info"]
            finish = meta["finish_reason"] or {}
            kind = finish.get("type") if isinstance(finish, dict) else str(finish)
            lps_raw = meta.get("output_token_logprobs")
            logprobs = [float(x[0]) for x in lps_raw] if lps_raw is not None else None
            if lps_raw is not None and [int(x[1]) for x in lps_raw] != ids:
                raise ValueError("output_token_logprobs do not match output_ids")
            text = answer.get("text")
            if not isinstance(text, str):
                text = self.tokenizer.decode(ids)
            self.server_s += float(meta.get("e2e_latency", 0.0))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            return PolicyError(f"SGLang {server.url}: unexpected answer shape: {_describe(exc)}")
        if kind == "abort":
            return PolicyError(f"SGLang {server.url}: generation aborted: {finish}")
        ledger = self._ledgers.get(request.episode_id)
        if ledger is None:
            return PolicyError(f"episode {request.episode_id} was finished while generating")
        try:
            ledger.append_generated(ids, logprobs)
        except PolicyError as exc:
            return exc
        return PolicyResponse(
            text=text,
            finish_reason="length" if kind == "length" else "stop",
            token_ids=ids,
            logprobs=logprobs,
            prompt_tokens=int(meta.get("prompt_tokens", 0)),
            completion_tokens=int(meta.get("completion_tokens", len(ids))),
        )


def _reuse_trace() -> aiohttp.TraceConfig:
    """Marks ``trace_request_ctx["reused"]`` when a request goes out on a pooled connection."""

    async def on_reuse(
        session: aiohttp.ClientSession,
        ctx: Any,
        params: aiohttp.TraceConnectionReuseconnParams,
    ) -> None:
        if isinstance(ctx.trace_request_ctx, dict):
            ctx.trace_request_ctx["reused"] = True

    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(on_reuse)
    return trace


def _finished(chunk: dict[str, Any]) -> bool:
    meta = chunk.get("meta_info")
    return isinstance(meta, dict) and bool(meta.get("finish_reason"))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
