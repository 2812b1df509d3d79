"""TEST DOUBLE of an SGLang server (not SGLang, no model): aiohttp.web on loopback.

It implements the parts of SGLang 0.5.23's native HTTP API that gymux uses, as SGLang's
own code does them, and checks itself against SGLang's own schema
(``sglang/api/v1/api_types.py`` from the pinned wheel, see :mod:`doubles.sglang_schema`):
with ``schema=`` (the loaded module; ``"auto"``: the cached copy if there is one) every
``/generate`` body passes SGLang's contract gate (``GenerateRequest.from_json_value``; a
violation is HTTP 400 ``{"error": "<the schema's text>"}``, e.g. an unknown sampling key),
and every answer and stream chunk it sends is checked with ``GenerateResponse`` /
``GenerateStreamError`` (a violation is a bug of the double: HTTP 500, recorded in
:attr:`SGLangDouble.contract_violations`).

* ``POST /generate``: ``text`` or ``input_ids`` (a list, or a list of lists for a batch),
  ``sampling_params``, ``return_logprob``, ``stream``, ``rid`` (a string, or one per item;
  a string with a batch becomes ``rid_0``, ``rid_1``...). Refused as SGLang refuses them
  (HTTP 400 ``{"error": {"message": ...}}``, the whole batch): empty ``input_ids`` ("input_ids
  cannot be empty."), duplicate rids in a batch ("Duplicate request IDs detected within the
  request: [...]"), an unknown sampling key (the gate's text; checked against SGLang's field
  list when no schema is loaded), a prompt that does not fit ``context_length`` (SGLang's two
  texts: "The input (N tokens) is longer than the model's context length (C tokens)." and
  "Requested token count exceeds the model's maximum context length of C tokens. ...";
  in a stream, that error comes as ``data: {"error": {"message", "type", "code",
  "retryable"}}`` then ``data: [DONE]``).
  A single request answers ``{"text", "output_ids", "meta_info": {"id", "prompt_tokens",
  "completion_tokens", "cached_tokens", "weight_version", "finish_reason": {"type":
  "stop"|"length"|"abort", ...}, "output_token_logprobs": [[logprob, token_id, null], ...],
  "e2e_latency"}}``; a batch answers a list of those. Streaming is SSE: ``data: {...}``
  chunks (cumulative text/output_ids/meta_info, with ``index`` in a batch; only the new
  part of each with ``incremental_streaming_output=True``, SGLang's
  ``--incremental-streaming-output``) ending with ``data: [DONE]``.
* ``POST /abort_request`` (``{"rid", "abort_all"}``): aborts every live request whose rid
  *starts with* ``rid`` (SGLang's scheduler rule) -- but, as SGLang's tokenizer manager does
  with one tokenizer worker (``tokenizer_workers=1``, the default), only when ``rid`` is
  itself a live rid; otherwise nothing. An aborted request finishes ``{"type": "abort",
  "message": "Aborted", "status_code": null, "err_type": null}``.
* ``GET /health`` (503 while "loading": for the first ``loading_health_checks`` probes, or
  until ``ready_file`` exists), ``GET /model_info`` (and ``/get_model_info``, its deprecated
  alias; neither has a context length), ``GET /server_info`` (``max_req_input_len``,
  ``incremental_streaming_output``, ...), ``GET /v1/models`` (``data[0].max_model_len``).
* Test-only: ``GET /_double/stats`` and ``POST /_double/reset``.

Generation is scripted: ``model(input_ids) -> output ids`` (deterministic), cut at
``max_new_tokens`` and at the first ``sampling_params.stop`` string (a string or a list)
found in the decoded output, as SGLang does: ``output_ids`` end with the token that
completed the match, ``text`` ends before the stop string, and ``finish_reason`` is
``{"type": "stop", "matched": "<the stop string>"}``. A cost model
charges a serialized per-request and per-sequence overhead (the frontend) and
``per_token_s`` per generated token while the sequence holds one of ``capacity`` (B) decode
slots; extra sequences queue. Failures are injected with :meth:`SGLangDouble.fail_next`
(``stale_keepalive``: close the connection the request arrived on before reading it, as a
server does when it times out an idle keep-alive connection just as the client reuses it;
``retract``: the request's first item is aborted with status 503 as SGLang's scheduler does
under memory pressure -- a non-streamed request then answers HTTP 503 as a whole at once and
its other items are aborted and lost (SGLang's tokenizer manager does so), a stream ends
that item with an abort chunk carrying ``status_code: 503`` and the other items go on;
``stream_error``: a stream ends with an error chunk).
A stream sends an item's first token at once, then a chunk whenever ``stream_interval``
tokens are unsent (the request's ``sampling_params.stream_interval``, else the server's),
and its final chunk, as SGLang's scheduler does.
``keepalive_timeout`` closes idle keep-alive connections after that many seconds.
Run standalone (the benchmark does) with ``python tests/doubles/sglang_double.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web

Model = Callable[[list[int]], list[int]]

FAILURES = (
    "http500",
    "http503",
    "malformed",
    "wrong_count",
    "die_after_headers",
    "die_mid_stream",
    "hang",
    "stale_keepalive",
    "retract",
    "stream_error",
)

#: SGLang 0.5.23's ``SamplingParams`` fields (its schema rejects any other key); used to
#: refuse unknown keys when the schema itself is not loaded.
SAMPLING_KEYS = frozenset(
    [
        "max_new_tokens",
        "stop",
        "stop_token_ids",
        "stop_regex",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
        "min_new_tokens",
        "n",
        "json_schema",
        "regex",
        "ebnf",
        "structural_tag",
        "ignore_eos",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "no_stop_trim",
        "stream_interval",
        "logit_bias",
        "sampling_seed",
        "custom_params",
        "beam_width",
        "watermark",
        "choice",
    ]
)
RETRACTED = "Retracted under decode memory pressure without a KV backup. Retry later."


class ContractViolation(AssertionError):
    """An answer of the double does not fit SGLang's schema (a bug of the double)."""


@dataclass
class CostModel:
    request_overhead_s: float = 0.0  # serialized, per HTTP /generate request
    item_overhead_s: float = 0.0  # serialized, per sequence
    per_token_s: float = 0.0  # per generated token, while holding a decode slot
    capacity: int = 64  # B: sequences decoding at once


@dataclass
class Stats:
    requests: int = 0  # /generate HTTP requests
    batch_requests: int = 0  # of which batched (list input)
    stream_requests: int = 0
    rejected: int = 0  # /generate requests refused with HTTP 400
    sequences: int = 0
    max_batch_items: int = 0
    concurrent: int = 0
    max_concurrent: int = 0
    busy_s: float = 0.0  # slot-seconds spent decoding
    generated_tokens: int = 0
    aborted_rids: list[str] = field(default_factory=list)  # rids /abort_request was sent
    abort_matched: list[str] = field(default_factory=list)  # live rids an abort ended
    abort_requests: int = 0
    health_checks: int = 0
    inputs: dict[str, list[int]] = field(default_factory=dict)  # rid -> input_ids
    rids: list[str] = field(default_factory=list)  # in arrival order
    request_items: list[int] = field(default_factory=list)  # items per accepted request
    stale_closed: int = 0  # connections closed by the stale_keepalive failure
    discarded_items: int = 0  # items of a non-streamed batch lost to another item's 503
    last_sampling_params: dict[str, Any] = field(default_factory=dict)
    last_error: str = ""  # the message of the last 400 answer

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("inputs", "request_items")}
        out["aborted_rids"] = list(self.aborted_rids)
        out["rids"] = len(self.rids)
        return out


def default_logprob(position: int, token: int) -> float:
    return -((token * 7 + position) % 50) / 100.0


class _Seq:
    __slots__ = (
        "aborted", "done", "finish", "input_ids", "logprobs", "out", "retract", "rid", "stop",
    )  # fmt: skip

    def __init__(self, rid: str, input_ids: list[int]) -> None:
        self.rid = rid
        self.input_ids = input_ids
        self.out: list[int] = []
        self.logprobs: list[float] = []
        self.finish: dict[str, Any] | None = None
        self.aborted = False
        self.retract = False  # abort with status 503 (scheduler retraction)
        self.stop: str | None = None  # the stop string that ended the output
        self.done = asyncio.Event()


class _Refused(Exception):
    """A request SGLang refuses before generating: HTTP 400 with ``body``."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.body = body

    @property
    def message(self) -> str:
        error = self.body.get("error")
        return str(error.get("message") if isinstance(error, dict) else error)


class SGLangDouble:
    """A scripted SGLang stand-in. ``await start()``, ``url``, ``await stop()``."""

    def __init__(
        self,
        model: Model,
        *,
        cost: CostModel | None = None,
        decode: Callable[[list[int]], str] | None = None,
        encode: Callable[[str], list[int]] | None = None,
        eos_id: int | None = None,
        logprob: Callable[[int, int], float] = default_logprob,
        model_path: str = "test-double/tiny",
        context_length: int = 4096,
        stream_interval: int = 4,
        hang_s: float = 3600.0,
        keepalive_timeout: float = 75.0,
        port: int = 0,
        schema: ModuleType | str | None = "auto",
        incremental_streaming_output: bool = False,
        loading_health_checks: int = 0,
        ready_file: Path | None = None,
        tokenizer_workers: int = 1,
        weight_version: str = "default",
    ) -> None:
        self.model = model
        self.cost = cost or CostModel()
        self.decode = decode or (lambda ids: " ".join(map(str, ids)))
        self.encode = encode
        self.eos_id = eos_id
        self.logprob = logprob
        self.model_path = model_path
        self.context_length = context_length
        self.stream_interval = max(1, stream_interval)
        self.hang_s = hang_s
        self.keepalive_timeout = keepalive_timeout
        self.port = port
        if schema == "auto":
            from doubles import sglang_schema

            schema = sglang_schema.cached()
        assert schema is None or isinstance(schema, ModuleType)
        self.schema: ModuleType | None = schema
        self.incremental = incremental_streaming_output
        self.loading_health_checks = loading_health_checks
        self.ready_file = ready_file
        self.tokenizer_workers = tokenizer_workers
        self.weight_version = weight_version
        #: Answers of the double that SGLang's schema rejects (must stay empty).
        self.contract_violations: list[str] = []
        #: Stream chunks sent (answers, not errors).
        self.chunks_sent = 0
        self.stats = Stats()
        self._failures: list[str] = []
        self._runner: web.AppRunner | None = None
        self._slots = asyncio.Semaphore(self.cost.capacity)
        self._frontend = asyncio.Lock()
        self._live: dict[str, _Seq] = {}
        self._rid_counter = 0
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/generate", self._generate)
        app.router.add_get("/health", self._health)
        app.router.add_get("/health_generate", self._health)
        app.router.add_get("/model_info", self._model_info)
        app.router.add_get("/get_model_info", self._model_info)
        app.router.add_get("/server_info", self._server_info)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/abort_request", self._abort)
        app.router.add_get("/_double/stats", self._stats)
        app.router.add_post("/_double/reset", self._reset)
        runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=0.05,
            keepalive_timeout=self.keepalive_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, backlog=4096)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and drop every connection (clients then see connection refused)."""
        runner, self._runner = self._runner, None
        for task in list(self._handlers):
            task.cancel()
        for seq in self._live.values():
            seq.aborted = True
        if runner is not None:
            await runner.cleanup()

    def fail_next(self, kind: str, times: int = 1) -> None:
        """Make the next ``times`` /generate requests fail in the way ``kind`` names."""
        if kind not in FAILURES:
            raise ValueError(f"unknown failure {kind!r}; one of {FAILURES}")
        self._failures.extend([kind] * times)

    def reset_stats(self) -> None:
        # `concurrent` is a gauge of sequences decoding right now, not a counter: it
        # survives a reset, or sequences finishing after it would drive it negative.
        running = self.stats.concurrent
        self.stats = Stats(concurrent=running, max_concurrent=running)

    @property
    def loading(self) -> bool:
        """Still "loading the model" (``/health`` answers 503)."""
        if self.ready_file is not None and not self.ready_file.exists():
            return True
        return self.stats.health_checks <= self.loading_health_checks

    # -- SGLang's schema ------------------------------------------------------------------

    def _check(self, type_name: str, value: Any) -> None:
        """Validate an answer of the double with the schema type ``type_name``."""
        if self.schema is None:
            return
        try:
            getattr(self.schema, type_name).from_json_value(value)
        except self.schema.JsonContractError as exc:
            text = f"{type_name}: {exc}: {json.dumps(value)[:300]}"
            self.contract_violations.append(text)
            raise ContractViolation(text) from None

    def _json(self, value: Any, type_name: str | None = None, status: int = 200) -> web.Response:
        if type_name is not None:
            self._check(type_name, value)
        return web.json_response(value, status=status)

    # -- endpoints --------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        self.stats.health_checks += 1
        if self.loading:
            return web.Response(status=503)
        return web.Response(text="")

    async def _model_info(self, request: web.Request) -> web.Response:
        info = {
            "model_path": self.model_path,
            "served_model_name": self.model_path,
            "tokenizer_path": self.model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": self.weight_version,
            "load_format": "auto",
            "reasoning_parser": None,
            "tool_call_parser": None,
            "disaggregation_mode": "null",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
        }
        return self._json(info, "GetModelInfoResponse")

    async def _server_info(self, request: web.Request) -> web.Response:
        info = {
            "model_path": self.model_path,
            "served_model_name": self.model_path,
            "tokenizer_path": self.model_path,
            "context_length": None,  # the server argument: unset unless given
            "max_req_input_len": self.context_length - 1,
            "max_total_num_tokens": self.context_length * self.cost.capacity,
            "stream_interval": self.stream_interval,
            "incremental_streaming_output": self.incremental,
            "version": "0.5.23",
            "internal_states": [{}],
            "host": "127.0.0.1",
            "port": self.port,
            "disaggregation_mode": "null",
            "frontend": "python",
        }
        return self._json(info, "GetServerInfoResponse")

    async def _models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.model_path,
            "object": "model",
            "created": 0,
            "owned_by": "sglang",
            "root": self.model_path,
            "parent": None,
            "max_model_len": self.context_length,
        }
        self._check("ModelCard", card)
        return web.json_response({"object": "list", "data": [card]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_json())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response({"ok": True})

    async def _abort(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.schema is not None:
            try:
                self.schema.AbortRequest.from_json_value(body)
            except self.schema.JsonContractError as exc:
                return web.json_response({"error": {"message": str(exc)}}, status=400)
        rid = str(body.get("rid") or "")
        abort_all = bool(body.get("abort_all", False))
        self.stats.abort_requests += 1
        self.stats.aborted_rids.append(rid)
        if not abort_all and not rid:
            return web.Response()  # SGLang ignores an empty rid (it would match everything)
        if not abort_all and rid not in self._live and self.tokenizer_workers == 1:
            return web.Response()  # the tokenizer manager forwards only rids it serves
        for seq in self._live.values():
            if (abort_all or seq.rid.startswith(rid)) and not seq.aborted:
                seq.aborted = True
                self.stats.abort_matched.append(seq.rid)
        return web.Response()

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._generate_inner(request)
        except ContractViolation as exc:
            return web.json_response({"error": {"message": f"DOUBLE BUG: {exc}"}}, status=500)
        finally:
            self._handlers.discard(task)

    def _refuse(self, exc: _Refused) -> web.Response:
        self.stats.rejected += 1
        self.stats.last_error = exc.message
        return web.json_response(exc.body, status=400)

    def _admit(self, body: Any) -> tuple[bool, list[list[int]], list[str], dict[str, Any]]:
        """SGLang's checks before generating: ``(batched, prompts, rids, sampling)``, or
        :class:`_Refused` with SGLang's error body."""
        if self.schema is not None:
            try:
                self.schema.GenerateRequest.from_json_value(body)
            except self.schema.JsonContractError as exc:
                raise _Refused({"error": str(exc)}) from None
        if not isinstance(body, dict):
            raise _Refused({"error": {"message": "the body must be a JSON object"}})
        batched, prompts = self._prompts(body)
        if prompts is None:
            raise _Refused({"error": {"message": "Either text or input_ids should be provided."}})
        if not prompts or any(not p for p in prompts):
            raise _Refused({"error": {"message": "input_ids cannot be empty."}})
        params = body.get("sampling_params") or {}
        if isinstance(params, list):
            params = params[0] if params else {}
        unknown = sorted(set(params) - SAMPLING_KEYS)
        if unknown:
            raise _Refused({"error": f"unknown field `{unknown[0]}`"})
        rid = body.get("rid")
        if rid is None:
            rids = [self._new_rid() for _ in prompts]
        elif isinstance(rid, str):
            rids = [f"{rid}_{i}" for i in range(len(prompts))] if batched else [rid]
        else:
            rids = [str(r) for r in rid]
        if len(rids) != len(prompts):
            raise _Refused({"error": {"message": "The rid should be a list of the batch size."}})
        duplicates = sorted({r for r in rids if rids.count(r) > 1})
        if duplicates:
            message = f"Duplicate request IDs detected within the request: {duplicates}"
            raise _Refused({"error": {"message": message}})
        max_new = int(params.get("max_new_tokens") or 128)
        for ids in prompts:
            if len(ids) >= self.context_length:
                message = (
                    f"The input ({len(ids)} tokens) is longer than the model's context length "
                    f"({self.context_length} tokens)."
                )
                raise _Refused({"error": {"message": message}})
            if len(ids) + max_new > self.context_length:
                message = (
                    "Requested token count exceeds the model's maximum context length of "
                    f"{self.context_length} tokens. You requested a total of "
                    f"{len(ids) + max_new} tokens: {len(ids)} tokens from the input "
                    f"messages and {max_new} tokens for the completion. Please reduce the "
                    "number of tokens in the input messages or the completion to fit "
                    "within the limit."
                )
                raise _Refused({"error": {"message": message}})
        return batched, prompts, rids, dict(params)

    async def _generate_inner(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        failure = self._failures.pop(0) if self._failures else None
        if failure == "stale_keepalive":
            # Nothing read, nothing generated: the client sees the connection drop before
            # any response byte (aiohttp: ServerDisconnectedError).
            self.stats.stale_closed += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if failure == "hang":
            await asyncio.sleep(self.hang_s)
        if failure in ("http500", "http503"):
            status = 500 if failure == "http500" else 503
            # SGLang's HTTPException body.
            body = _http_exception(f"injected HTTP {status}", status)
            return web.json_response(body, status=status)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "bad JSON"}}, status=400)
        stream = isinstance(body, dict) and bool(body.get("stream", False))
        try:
            batched, prompts, rids, params = self._admit(body)
        except _Refused as exc:
            if stream and isinstance(exc.body.get("error"), dict):
                # SGLang's tokenizer manager raises inside the stream: an error chunk.
                return await self._stream_refusal(request, exc)
            return self._refuse(exc)
        self.stats.requests += 1
        self.stats.request_items.append(len(prompts))
        if batched:
            self.stats.batch_requests += 1
        self.stats.max_batch_items = max(self.stats.max_batch_items, len(prompts))
        self.stats.last_sampling_params = dict(params)
        max_new = int(params.get("max_new_tokens") or 128)
        stop = params.get("stop") or []
        stops = [stop] if isinstance(stop, str) else [str(x) for x in stop]
        want_logprob = bool(body.get("return_logprob", False))
        if stream:
            self.stats.stream_requests += 1
        async with self._frontend:  # serialized tokenizer-manager work
            cost = self.cost.request_overhead_s + self.cost.item_overhead_s * len(prompts)
            if cost > 0:
                await asyncio.sleep(cost)
        seqs = []
        for rid, ids in zip(rids, prompts, strict=True):
            seq = _Seq(rid, ids)
            self.stats.sequences += 1
            self.stats.rids.append(seq.rid)
            self.stats.inputs[seq.rid] = list(ids)
            self._live[seq.rid] = seq
            seqs.append(seq)
        if failure == "retract":
            seqs[0].retract = True
        # SGLang's per-request ``stream_interval`` (sampling params), else the server's.
        interval = max(1, int(params.get("stream_interval") or self.stream_interval))
        tasks = [
            asyncio.ensure_future(self._decode(seq, max_new, stream, stops, interval))
            for seq in seqs
        ]
        try:
            if stream:
                return await self._respond_stream(
                    request, seqs, batched, want_logprob, failure, started, interval
                )
            if failure == "retract":
                retracted = await self._wait_non_streamed(tasks, seqs)
            else:
                await asyncio.gather(*tasks)
                retracted = None
            if retracted is not None:
                # A non-streamed request's 503 abort is an HTTPException for the whole
                # HTTP request: SGLang answers at once and aborts the batch's other items
                # (tokenizer manager ``_collect_batch_responses`` and
                # ``_release_req_states_on_failure``), whose outputs are lost.
                self.stats.discarded_items += len(seqs) - 1
                message = retracted.finish["message"]  # type: ignore[index]
                return web.json_response(_http_exception(message, 503), status=503)
            items = [self._item(seq, want_logprob, started) for seq in seqs]
            for item in items:
                self._check("GenerateResponse", item)
            if failure == "wrong_count":
                items = items[:-1] if len(items) > 1 else items * 2
                return web.json_response(items)
            payload = items if batched else items[0]
            if failure in ("die_after_headers", "die_mid_stream", "malformed"):
                text = json.dumps(payload)
                if failure == "malformed":
                    return web.Response(
                        text=text[: len(text) // 2], content_type="application/json"
                    )
                return await self._die(request, text, after_headers=failure == "die_after_headers")
            return web.json_response(payload)
        finally:
            for task in tasks:
                task.cancel()
            for seq in seqs:
                self._live.pop(seq.rid, None)

    @staticmethod
    async def _wait_non_streamed(
        tasks: list[asyncio.Future[None]], seqs: list[_Seq]
    ) -> _Seq | None:
        """Wait for every item; the first one aborted with status 503 ends the wait at once
        (the others are aborted)."""
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for seq in seqs:
                if seq.finish is not None and seq.finish.get("status_code") == 503:
                    for other in seqs:
                        other.aborted = True
                    return seq
        return None

    async def _stream_refusal(self, request: web.Request, exc: _Refused) -> web.StreamResponse:
        self.stats.rejected += 1
        self.stats.last_error = exc.message
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await self._write_error(resp, exc.message)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _write_error(self, resp: web.StreamResponse, message: str) -> None:
        error = {"message": message, "type": "invalid_request_error", "code": 400}
        chunk = {"error": {**error, "retryable": False}}
        self._check("GenerateStreamError", chunk)
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    async def _die(
        self, request: web.Request, text: str, *, after_headers: bool
    ) -> web.StreamResponse:
        data = text.encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        if not after_headers:
            await resp.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()
        return resp

    async def _respond_stream(
        self,
        request: web.Request,
        seqs: list[_Seq],
        batched: bool,
        want_logprob: bool,
        failure: str | None,
        started: float,
        interval: int,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if failure == "die_after_headers":
            assert request.transport is not None
            request.transport.close()
            return resp
        sent = [0] * len(seqs)
        sent_text = [""] * len(seqs)
        chunks = 0
        pending = set(range(len(seqs)))
        while pending:
            waiters = [asyncio.ensure_future(seqs[i].done.wait()) for i in pending]
            await asyncio.wait(
                waiters,
                timeout=self.cost.per_token_s * interval or 0.005,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for w in waiters:
                w.cancel()
            for i in sorted(pending):
                seq = seqs[i]
                if seq.finish is None and (
                    len(seq.out) == sent[i] or (sent[i] and len(seq.out) - sent[i] < interval)
                ):
                    continue  # SGLang: the first token at once, then every `interval`
                item = self._item(seq, want_logprob, started)
                if self.incremental:
                    item = self._delta(item, sent[i], sent_text[i])
                    sent_text[i] += item["text"]
                sent[i] = len(seq.out)
                if batched:
                    item["index"] = i
                self._check("GenerateResponse", item)
                if failure == "malformed" and chunks == 0:
                    await resp.write(b"data: {not json\n\n")
                else:
                    await resp.write(b"data: " + json.dumps(item).encode() + b"\n\n")
                    self.chunks_sent += 1
                chunks += 1
                if failure == "die_mid_stream" and chunks >= 1:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                if failure == "stream_error" and chunks >= 1:
                    await self._write_error(resp, "injected stream error: scheduler failed")
                    pending.clear()
                    break
                if seq.finish is not None:
                    pending.discard(i)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    @staticmethod
    def _delta(item: dict[str, Any], sent: int, sent_text: str) -> dict[str, Any]:
        """``item`` as ``--incremental-streaming-output`` sends it: only what is new."""
        meta = dict(item["meta_info"])
        if "output_token_logprobs" in meta:
            meta["output_token_logprobs"] = meta["output_token_logprobs"][sent:]
        text = item["text"]
        return {
            "text": text[len(sent_text) :] if text.startswith(sent_text) else text,
            "output_ids": item["output_ids"][sent:],
            "meta_info": meta,
        }

    # -- model ------------------------------------------------------------------------

    def _new_rid(self) -> str:
        self._rid_counter += 1
        return f"double-{self._rid_counter}"

    def _prompts(self, body: dict[str, Any]) -> tuple[bool, list[list[int]] | None]:
        ids = body.get("input_ids")
        if ids is None and body.get("text") is not None:
            text = body["text"]
            enc = self.encode or (lambda s: [b for b in s.encode()])
            if isinstance(text, list):
                return True, [enc(t) for t in text]
            return False, [enc(text)]
        if not isinstance(ids, list):
            return False, None
        if ids and isinstance(ids[0], list):
            return True, [list(map(int, x)) for x in ids]
        return False, [list(map(int, ids))]

    def _cut_at_stop(self, full: list[int], stops: list[str]) -> tuple[list[int], str] | None:
        """The output up to the token that completes the first stop string, and that string."""
        if not stops:
            return None
        for i in range(len(full)):
            text = self.decode([t for t in full[: i + 1] if t != self.eos_id])
            hits = [(text.find(s), s) for s in stops if s and s in text]
            if hits:
                return full[: i + 1], min(hits)[1]
        return None

    async def _decode(
        self,
        seq: _Seq,
        max_new: int,
        stream: bool,
        stops: list[str] | None = None,
        interval: int | None = None,
    ) -> None:
        full = list(self.model(seq.input_ids))
        cut = self._cut_at_stop(full[:max_new], stops or [])
        if cut is not None:
            out, seq.stop = cut
            finish: dict[str, Any] = {"type": "stop", "matched": seq.stop}
        elif len(full) > max_new:
            out, finish = full[:max_new], {"type": "length", "length": max_new}
        elif full and self.eos_id is not None and full[-1] == self.eos_id:
            out, finish = full, {"type": "stop", "matched": self.eos_id}
        else:
            out, finish = full, {"type": "stop", "matched": None}
        await self._slots.acquire()
        self.stats.concurrent += 1
        self.stats.max_concurrent = max(self.stats.max_concurrent, self.stats.concurrent)
        t0 = time.perf_counter()
        try:
            # Tokens are made in steps (the cost model's granularity): a stream's interval
            # (at most 16), or 16 at a time when nobody watches them come.
            interval = interval or self.stream_interval
            step = min(interval, 16) if stream else max(16, self.stream_interval)
            i = 0
            while i < len(out):
                if seq.aborted:
                    finish = _abort_reason("Aborted", None)
                    break
                if seq.retract and i > 0:
                    finish = _abort_reason(RETRACTED, 503)
                    break
                n = min(step, len(out) - i)
                if self.cost.per_token_s > 0:
                    await asyncio.sleep(self.cost.per_token_s * n)
                for j in range(i, i + n):
                    seq.logprobs.append(self.logprob(len(seq.input_ids) + j, out[j]))
                seq.out.extend(out[i : i + n])
                i += n
            if seq.retract and finish.get("type") != "abort":
                finish = _abort_reason(RETRACTED, 503)
            seq.finish = finish
        finally:
            self.stats.busy_s += time.perf_counter() - t0
            self.stats.generated_tokens += len(seq.out)
            self.stats.concurrent -= 1
            self._slots.release()
            if seq.finish is None:
                seq.finish = _abort_reason("server shutting down", None)
            seq.done.set()

    def _item(self, seq: _Seq, want_logprob: bool, started: float) -> dict[str, Any]:
        ids = list(seq.out)
        visible = [t for t in ids if t != self.eos_id]
        meta: dict[str, Any] = {
            "id": seq.rid,
            "finish_reason": seq.finish,
            "prompt_tokens": len(seq.input_ids),
            "completion_tokens": len(ids),
            "cached_tokens": 0,
            "weight_version": self.weight_version,
        }
        if seq.finish is not None:
            meta["e2e_latency"] = time.perf_counter() - started
        if want_logprob:
            meta["output_token_logprobs"] = [
                [lp, t, None] for lp, t in zip(seq.logprobs, ids, strict=False)
            ]
        text = self.decode(visible)
        if seq.stop is not None and seq.stop in text:
            text = text[: text.find(seq.stop)]
        return {"text": text, "output_ids": ids, "meta_info": meta}


def _http_exception(message: str, status: int) -> dict[str, Any]:
    """SGLang's body for an ``HTTPException`` (its ``ErrorResponse``)."""
    return {"object": "error", "message": message, "type": str(status), "param": None,
            "code": status}  # fmt: skip


def _abort_reason(message: str, status_code: int | None) -> dict[str, Any]:
    return {"type": "abort", "message": message, "status_code": status_code, "err_type": None}


# -- helpers for tests and the benchmark ------------------------------------------------

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer(folder: Path, extra_text: list[str] | None = None) -> Path:
    """Train a small byte-level BPE tokenizer locally and write it with a ChatML template.

    Byte-level, so any text encodes and decodes exactly; special tokens ``<|im_start|>``,
    ``<|im_end|>`` (EOS) and ``<|endoftext|>``. No downloads.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from gymux.env_plugins.builtin.maze.plugin import MAZE_SPEC

    folder.mkdir(parents=True, exist_ok=True)
    corpus = [MAZE_SPEC.instruction] * 3
    for r in range(12):
        for c in range(12):
            corpus.append(
                f"The goal is at position ({r}, {c}). Your current position is at position "
                f"({c}, {r}). There are walls above you and to your left. You solved the maze!"
            )
    for a in ("up", "down", "left", "right"):
        corpus.append(f"Thought: I should move {a} to get closer.\nAction: move {a}")
    corpus.extend(extra_text or [])
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": CHATML_TEMPLATE,
                "eos_token": "<|im_end|>",
                "bos_token": None,
                "model_max_length": 4096,
            }
        )
    )
    return folder


def lengths_model(short: int, long: int, long_frac: float, token: int, eos: int) -> Model:
    """Deterministic from the prompt: ``long`` tokens for ~``long_frac`` of prompts, else
    ``short``; each output ends with ``eos``."""

    def model(ids: list[int]) -> list[int]:
        h = zlib.crc32(json.dumps(ids[-64:]).encode() + str(len(ids)).encode())
        n = long if (h % 1000) < long_frac * 1000 else short
        return [token] * (n - 1) + [eos]

    return model


# -- a stand-in for the launch_server process (gymux serve-policy tests) ------------------

# A stand-in "policy server": spawns a child in its process group (as sglang does), writes
# both pids, waits DELAY seconds, then serves GET /health. IGNORE_TERM=1 ignores SIGTERM.
STAND_IN = r"""
import os, signal, subprocess, sys, time

port, pidfile, delay, ignore_term = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
if ignore_term == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(pidfile + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.replace(pidfile + ".tmp", pidfile)
time.sleep(delay)
from aiohttp import web

async def health(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=ignore_term != "1")
"""


class StandIn:
    """Writes :data:`STAND_IN` into ``folder``; :meth:`command` runs it, :meth:`pids` reads
    the (leader, child) pids it wrote."""

    def __init__(self, folder: Path) -> None:
        self.script = folder / "stand_in.py"
        self.script.write_text(STAND_IN)
        self.pidfile = folder / "pids"

    def command(self, port: int, *, delay: float = 0.5, ignore_term: bool = False) -> list[str]:
        return [sys.executable, str(self.script), str(port), str(self.pidfile), str(delay),
                "1" if ignore_term else "0"]  # fmt: skip

    def pids(self) -> list[int]:
        return [int(x) for x in self.pidfile.read_text().split()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still alive after waiting up to ``timeout`` seconds for all to go."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


async def _serve(args: argparse.Namespace) -> None:
    double = SGLangDouble(
        lengths_model(args.short, args.long, args.long_frac, args.token, args.eos),
        cost=CostModel(
            request_overhead_s=args.request_overhead_s,
            item_overhead_s=args.item_overhead_s,
            per_token_s=args.per_token_s,
            capacity=args.capacity,
        ),
        eos_id=args.eos,
        context_length=args.context_length,
        stream_interval=args.stream_interval,
        port=args.port,
        schema=None,  # the benchmark measures throughput: no per-answer schema checks
    )
    await double.start()
    print(f"PORT {double.port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description="SGLang TEST DOUBLE (scripted, no model)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--capacity", type=int, default=64)
    p.add_argument("--per-token-s", type=float, default=0.001)
    p.add_argument("--request-overhead-s", type=float, default=0.0005)
    p.add_argument("--item-overhead-s", type=float, default=0.00002)
    p.add_argument("--short", type=int, default=8)
    p.add_argument("--long", type=int, default=128)
    p.add_argument("--long-frac", type=float, default=0.2)
    p.add_argument("--token", type=int, default=100)
    p.add_argument("--eos", type=int, default=2)
    p.add_argument("--context-length", type=int, default=1 << 20)
    p.add_argument("--stream-interval", type=int, default=8)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
