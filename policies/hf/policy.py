"""``HFPolicy``: a Hugging Face causal LM run in-process, token-exact, batched across episodes.

The way to drive gymux with a real model on a machine without a GPU or a model server:
``gymux run --env maze --policy hf --model smollm2`` (or ``--model DIR``, any local
transformers model folder with ``tokenizer.json`` and a chat template).

* **Token-exact**: each episode has a :class:`gymux.policies.tokens.TokenLedger`, the same
  as the SGLang and vLLM policies: the chat template is applied once, observations are
  appended as ids, generated ids are appended as sampled, never re-tokenised. Each answer
  carries the ids, their logprobs (under the model, before temperature and top-p) and the
  episode's :meth:`finish_episode` hands back the :class:`TokenData` (ids, logprobs, a loss
  mask of 1 exactly on generated tokens).
* **Batched**: a :class:`BatchingPolicy` -- concurrent episodes' turns queue, and the
  dispatcher hands whatever is waiting (up to ``max_batch``) to one :class:`Engine` call:
  one left-padded prefill, then one forward pass per decode step for the whole batch, with
  a KV cache (:mod:`.engine`). One batch runs at a time; turns arriving meanwhile form the
  next one.
* **Off the event loop**: the model loads and runs in a worker thread (one at a time, a
  ``CapacityLimiter(1)``), with ``threads`` torch threads.
* **Context limit**: a turn whose prompt plus ``max_new_tokens`` exceeds ``context_length``
  (default: the model's ``max_position_embeddings``) is answered ``finish_reason=
  "context_limit"`` without running the model.
* **Cancellation**: an episode cancelled while its turn waits is dropped from the queue; one
  cancelled while its batch decodes is dropped from the batch at the next step.

Options: :class:`gymux.policies.options.HFOptions` (``options=``, or the same names as
keywords; ``model`` may be positional). ``--model smollm2`` is materialised on first use
(:mod:`.models`); the CLI does that before the run with a progress display, a library user
gets it in ``async with policy`` (in a worker thread, logged).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from gymux.errors import PolicyOptionsError
from gymux.policies.batching import BatchingPolicy
from gymux.policies.hf.engine import Engine, Generation, Sampling, Ticket
from gymux.policies.hf.models import INSTALL_HINT, is_builtin, resolve_model
from gymux.policies.options import HFOptions, build_options
from gymux.policies.protocol import PolicyError, PolicyRequest, PolicyResponse
from gymux.policies.tokens import (
    ChatTokenizer,
    TokenLedger,
    context_limit_response,
    prepare_all,
)
from gymux.trajectory import TokenData

__all__ = ["HFPolicy"]

_log = structlog.get_logger("gymux.policies.hf")
_Result = PolicyResponse | BaseException


class HFPolicy(BatchingPolicy):
    """See the module docstring. ``tokenizer``: a :class:`ChatTokenizer` (default: the one
    in the model folder)."""

    name = "hf"
    version = "1"
    Options = HFOptions

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        tokenizer: ChatTokenizer | None = None,
        options: HFOptions | None = None,
        **keywords: Any,
    ) -> None:
        if model is not None:
            keywords["model"] = str(model)
        opts = self.options = build_options(HFOptions, options, keywords, who="HFPolicy")
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise PolicyOptionsError(f"policy 'hf' needs {' and '.join(missing)}: {INSTALL_HINT}")
        super().__init__(max_batch=opts.max_batch, window_s=opts.window_s, max_inflight_batches=1)
        # A folder is checked now; ``smollm2`` is materialised (if need be) when entered.
        self.folder: Path | None = None if is_builtin(opts.model) else resolve_model(opts.model)
        self.version = opts.model
        self.tokenizer: ChatTokenizer | None = tokenizer
        self.engine: Engine | None = None
        self.context_length: int | None = None
        self.sampling: Sampling | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._ledgers: dict[str, TokenLedger] = {}
        self._tickets: dict[str, Ticket] = {}

    # -- lifecycle ----------------------------------------------------------------------

    async def aopen(self) -> None:
        """Resolve the model folder, load the tokenizer and the model (in a worker thread),
        then start the dispatcher."""
        opts = self.options
        folder = self.folder
        if folder is None:
            folder = await anyio.to_thread.run_sync(
                functools.partial(resolve_model, opts.model), limiter=self._limiter
            )
            self.folder = folder
        if self.tokenizer is None:
            self.tokenizer = await anyio.to_thread.run_sync(ChatTokenizer.from_dir, folder)
        eos = [self.tokenizer.eos_id] if self.tokenizer.eos_id is not None else []
        engine = Engine(
            folder, dtype=opts.dtype, threads=opts.threads, seed=opts.seed or 0, eos_ids=eos
        )
        await anyio.to_thread.run_sync(engine.load, limiter=self._limiter)
        limits = [n for n in (opts.context_length, engine.max_positions) if n is not None]
        self.context_length = min(limits) if limits else None
        defaults = engine.generation_defaults
        self.sampling = Sampling(
            max_new_tokens=opts.max_new_tokens,
            temperature=(
                opts.temperature
                if opts.temperature is not None
                else defaults.get("temperature", 1.0)
            ),
            top_p=opts.top_p if opts.top_p is not None else defaults.get("top_p", 1.0),
            stop=tuple(opts.stop or ()),
        )
        self.engine = engine
        _log.info(
            "hf policy ready",
            model=opts.model,
            folder=str(folder),
            context_length=self.context_length,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
        )
        await super().aopen()

    async def aclose(self) -> None:
        """Stop the running batch at its next step, then the dispatcher; free the model."""
        if self.engine is not None:
            self.engine.stopping.set()
        try:
            await super().aclose()
        finally:
            self.engine = None

    # -- the public surface -------------------------------------------------------------

    def finish_episode(self, episode_id: str) -> TokenData | None:
        """Take an episode's token-exact record (ids, logprobs, loss mask) and forget it."""
        ledger = self._ledgers.pop(episode_id, None)
        return ledger.token_data() if ledger is not None else None

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        ticket = Ticket()
        self._tickets[request.episode_id] = ticket
        try:
            return await super().act(request)
        except anyio.get_cancelled_exc_class():
            ticket.cancelled = True  # dropped from the queue, or from its batch
            raise
        finally:
            if self._tickets.get(request.episode_id) is ticket:
                del self._tickets[request.episode_id]

    async def act_batch(self, requests: Sequence[PolicyRequest]) -> Sequence[_Result]:
        """Answer ``requests`` with one batched generation (the dispatcher's call)."""
        engine, sampling, tokenizer = self.engine, self.sampling, self.tokenizer
        if engine is None or sampling is None or tokenizer is None:
            raise PolicyError(f"policy {self.name!r} is not running (use 'async with policy')")
        out, items = prepare_all(requests, self._prepare)
        if items:
            tickets = [self._tickets.get(requests[i].episode_id) or Ticket() for i, _ in items]
            generations = await anyio.to_thread.run_sync(
                functools.partial(
                    engine.generate,
                    [ids for _, ids in items],
                    sampling,
                    tickets,
                    tokenizer.decode,
                ),
                limiter=self._limiter,
            )
            for (i, ids), gen in zip(items, generations, strict=True):
                out[i] = self._to_response(requests[i], len(ids), gen)
        return [r if r is not None else PolicyError("no answer") for r in out]

    # -- per-request state ----------------------------------------------------------------

    def _prepare(self, request: PolicyRequest) -> list[int] | PolicyResponse:
        assert self.tokenizer is not None and self.sampling is not None
        ledger = self._ledgers.get(request.episode_id)
        if ledger is None or request.turn == 0:
            ledger = self._ledgers[request.episode_id] = TokenLedger(self.tokenizer)
        ids = ledger.prompt_for(request.messages)
        if self.context_length is not None and not ledger.fits(
            self.sampling.max_new_tokens, self.context_length
        ):
            return context_limit_response(len(ids))
        return ids

    def _to_response(self, request: PolicyRequest, prompt_tokens: int, gen: Generation) -> _Result:
        assert self.tokenizer is not None
        if gen.finish == "cancelled":
            return PolicyError(f"episode {request.episode_id}: turn cancelled")
        ledger = self._ledgers.get(request.episode_id)
        if ledger is None:
            return PolicyError(f"episode {request.episode_id} was finished while generating")
        if self.engine is not None and self.engine.stopping.is_set():
            return PolicyError(f"policy {self.name!r} shut down mid-turn")
        ledger.append_generated(gen.ids, gen.logprobs)
        text = self.tokenizer.decode(gen.ids)
        if gen.matched is not None:
            text = text[: text.find(gen.matched)] if gen.matched in text else text
        return PolicyResponse(
            text=text,
            finish_reason="length" if gen.finish == "length" else "stop",
            token_ids=list(gen.ids),
            logprobs=list(gen.logprobs),
            prompt_tokens=prompt_tokens,
            completion_tokens=len(gen.ids),
        )
