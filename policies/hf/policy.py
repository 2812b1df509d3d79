"""``HFPolicy``: a Hugging Face causal LM run in-process, token-exact, batched across episodes.

The way to drive gymux with a real model on a machine without a GPU or a model server:
``gymux run --env maze --policy hf --model smollm2`` (or ``--model DIR``, any local
transformers model folder with ``tokenizer.json`` and a chat template).

* **Token-exact**: each episode has a :class:`gymux.policies.tokens.TokenLedger`, the same
  as the SGLang and vLLM policies: the chat template is applied once, observations are
  appended as ids, generated ids are appended as sampled, never re-tokenised. Each answer
  carries the ids, their logprobs (under the model, before temperature and top-p) and the
  weight version that generated them; :meth:`finish_episode` hands back the
  :class:`TokenData` (ids, logprobs, a loss mask of 1 exactly on generated tokens).
* **Continuous batching with KV reuse** (:mod:`.engine`): a turn joins the running batch at
  the next decode step, a finished turn leaves it at once; an episode's keys and values stay
  cached between its turns (:mod:`.kvcache`, an LRU with a byte budget), so a turn prefills
  only the new observation.
* **Off the event loop**: the model loads in a worker thread, and one worker thread owns it
  for the policy's lifetime (:meth:`Engine.serve`), with ``threads`` torch threads.
* **Weight updates** (:meth:`update_weights`): new weights are loaded between two decode
  steps; turns in flight continue under them (prefilled again), no turn is lost.
* **Context limit**: a turn whose prompt plus ``max_new_tokens`` exceeds ``context_length``
  (default: the model's ``max_position_embeddings``) is answered ``finish_reason=
  "context_limit"`` without running the model.
* **Cancellation**: a cancelled turn is dropped before its prefill, or from the batch at
  the next step.

Options: :class:`gymux.policies.options.HFOptions` (``options=``, or the same names as
keywords; ``model`` may be positional). ``--model smollm2`` is materialised on first use
(:mod:`.models`); the CLI does that before the run with a progress display, a library user
gets it in ``async with policy`` (in a worker thread, logged).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import msgspec
import structlog

from gymux.errors import PolicyOptionsError
from gymux.policies.base import BasePolicy
from gymux.policies.hf.engine import Engine, Generation, Job, Sampling, Ticket, WeightUpdate
from gymux.policies.hf.models import INSTALL_HINT, SMOLLM2_SAMPLING, is_builtin, resolve_model
from gymux.policies.hf.weights import WeightSource, read_state_dict
from gymux.policies.options import HFOptions, build_options
from gymux.policies.protocol import PolicyError, PolicyRequest, PolicyResponse
from gymux.policies.tokens import ChatTokenizer, TokenLedger, context_limit_response
from gymux.trajectory import TokenData

__all__ = ["DEFAULT_KV_CACHE_BYTES", "HFPolicy"]

_log = structlog.get_logger("gymux.policies.hf")

#: The default byte budget of the per-episode KV caches kept between turns.
DEFAULT_KV_CACHE_BYTES = 2 << 30


class HFPolicy(BasePolicy):
    """See the module docstring. ``tokenizer``: a :class:`ChatTokenizer` (default: the one
    in the model folder). ``kv_cache_bytes``: the budget of the episodes' KV caches kept
    between turns, in bytes (default: the ``kv_cache_mb`` option, 2 GiB; 0 turns reuse
    off)."""

    name = "hf"
    version = "1"
    Options = HFOptions

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        tokenizer: ChatTokenizer | None = None,
        options: HFOptions | None = None,
        kv_cache_bytes: int | None = None,
        **keywords: Any,
    ) -> None:
        if model is not None:
            keywords["model"] = str(model)
        opts = self.options = build_options(HFOptions, options, keywords, who="HFPolicy")
        if kv_cache_bytes is None:  # the option (MiB), unless given in bytes here
            kv_cache_bytes = opts.kv_cache_mb << 20
        if kv_cache_bytes < 0:
            raise PolicyOptionsError("HFPolicy: kv_cache_bytes must be >= 0")
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise PolicyOptionsError(f"policy 'hf' needs {' and '.join(missing)}: {INSTALL_HINT}")
        # A folder is checked now; ``smollm2`` is materialised (if need be) when entered.
        self.folder: Path | None = None if is_builtin(opts.model) else resolve_model(opts.model)
        self.version = opts.model
        self.kv_cache_bytes = kv_cache_bytes
        self.tokenizer: ChatTokenizer | None = tokenizer
        self.engine: Engine | None = None
        self.context_length: int | None = None
        self.sampling: Sampling | None = None
        #: The version of the weights answering now ("0": the folder's own).
        self.weight_version = "0"
        self._tg: anyio.abc.TaskGroup | None = None
        self._update_lock: anyio.Lock | None = None
        self._ledgers: dict[str, TokenLedger] = {}
        #: Each episode's turn asked last and its prompt ids, until it is answered.
        self._asked: dict[str, tuple[int, list[int]]] = {}

    # -- lifecycle ----------------------------------------------------------------------

    async def aopen(self) -> None:
        """Resolve the model folder, load the tokenizer and the model (in worker threads),
        then start the engine's worker thread."""
        opts = self.options
        folder = self.folder
        if folder is None:
            folder = await anyio.to_thread.run_sync(functools.partial(resolve_model, opts.model))
            self.folder = folder
        if self.tokenizer is None:
            self.tokenizer = await anyio.to_thread.run_sync(ChatTokenizer.from_dir, folder)
        eos = [self.tokenizer.eos_id] if self.tokenizer.eos_id is not None else []
        engine = Engine(
            folder,
            dtype=opts.dtype,
            threads=opts.threads,
            seed=opts.seed or 0,
            eos_ids=eos,
            max_batch=opts.max_batch,
            window_s=opts.window_s,
            kv_budget_bytes=self.kv_cache_bytes,
            weight_version=self.weight_version,
        )
        await anyio.to_thread.run_sync(engine.load)
        limits = [n for n in (opts.context_length, engine.max_positions) if n is not None]
        self.context_length = min(limits) if limits else None
        # The option, else the folder's generation_config.json, else the built-in model's.
        defaults = {**(SMOLLM2_SAMPLING if is_builtin(opts.model) else {})}
        defaults.update(engine.generation_defaults)
        self.sampling = engine.sampling = Sampling(
            max_new_tokens=opts.max_new_tokens,
            temperature=(
                opts.temperature
                if opts.temperature is not None
                else defaults.get("temperature", 1.0)
            ),
            top_p=opts.top_p if opts.top_p is not None else defaults.get("top_p", 1.0),
            stop=tuple(opts.stop or ()),
        )
        engine.decode = self.tokenizer.decode
        self._update_lock = anyio.Lock()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self.engine = engine
        tg.start_soon(self._serve, engine)
        _log.info(
            "hf policy ready",
            model=opts.model,
            folder=str(folder),
            context_length=self.context_length,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            max_new_tokens=opts.max_new_tokens,
        )

    async def aclose(self) -> None:
        """Stop the engine at its next step (turns still running fail), wait for its
        thread, and free the model."""
        tg, self._tg = self._tg, None
        engine = self.engine
        if tg is None or engine is None:
            return
        engine.stop()
        await tg.__aexit__(None, None, None)  # the worker returns at its next step boundary
        self.engine = None
        _log.info("hf policy stats", **self.stats(engine))

    async def _serve(self, engine: Engine) -> None:
        def notify(items: list[Job | WeightUpdate]) -> None:
            anyio.from_thread.run_sync(_wake, items)

        await anyio.to_thread.run_sync(engine.serve, notify)

    @staticmethod
    def stats(engine: Engine) -> dict[str, Any]:
        """What ``engine`` did: turns, tokens, batching and KV reuse."""
        kv = engine.kv.stats
        return {
            "turns": engine.turns_done,
            "tokens_generated": engine.tokens_generated,
            "decode_steps": engine.decode_steps,
            "prefills": engine.prefill_calls,
            "max_rows": engine.max_rows,
            "joined_running": engine.joined_running,
            "kv_hit_ratio": round(kv.hit_ratio, 3),
            "kv_token_reuse": round(kv.token_reuse_ratio, 3),
            "kv_evictions": kv.evictions,
            "busy_s": round(engine.busy_s, 2),
            "weight_updates": engine.weight_updates,
        }

    # -- the public surface -------------------------------------------------------------

    def finish_episode(self, episode_id: str) -> TokenData | None:
        """Take an episode's token-exact record (ids, logprobs, loss mask) and forget it
        (its cached keys and values too)."""
        if self.engine is not None:
            self.engine.kv.forget(episode_id)
        self._asked.pop(episode_id, None)
        ledger = self._ledgers.pop(episode_id, None)
        return ledger.token_data() if ledger is not None else None

    async def act(self, request: PolicyRequest) -> PolicyResponse:
        engine = self.engine
        if self._tg is None or engine is None:
            raise PolicyError(f"policy {self.name!r} is not running (use 'async with policy')")
        prepared = self._prepare(engine, request)
        if isinstance(prepared, PolicyResponse):
            return msgspec.structs.replace(prepared, weight_version=self.weight_version)
        job = Job(request.episode_id, prepared, Ticket(), anyio.Event())
        engine.submit(job)
        try:
            await job.waiter.wait()
        except BaseException:
            job.ticket.cancelled = True  # dropped before its prefill, or at the next step
            engine.wake()
            raise
        if job.error is not None:
            raise job.error
        return self._to_response(request, len(prepared), job.generation)

    async def update_weights(self, source: WeightSource, *, version: str) -> None:
        """Load new weights: a folder of ``*.safetensors`` files, one such file, or a
        mapping of tensor names to tensors (a trainer's ``state_dict()``, all or part).

        The files are read in a worker thread while decoding goes on; the engine loads the
        tensors between two decode steps (never mid-forward), drops every cached key/value
        (stale under new weights) and prefills the turns in flight again, which continue
        under the new weights (a turn that spans the update reports the new version, and in
        ``weight_versions`` where each version's tokens start). Then ``weight_version`` is
        ``version`` and every answer carries it. Raises :class:`PolicyError` for unreadable
        weights or names/shapes the model does not have (nothing is loaded then).
        """
        engine, lock = self.engine, self._update_lock
        if self._tg is None or engine is None or lock is None:
            raise PolicyError(f"policy {self.name!r} is not running (use 'async with policy')")
        state = await anyio.to_thread.run_sync(read_state_dict, source)
        async with lock:
            update = WeightUpdate(state, str(version), anyio.Event())
            engine.submit_update(update)
            with anyio.CancelScope(shield=True):  # once queued it is applied: stay in step
                await update.waiter.wait()
            if update.error is not None:
                raise update.error
            self.weight_version = update.version
        _log.info("hf policy weights", version=self.weight_version)

    # -- per-request state ----------------------------------------------------------------

    def _prepare(self, engine: Engine, request: PolicyRequest) -> list[int] | PolicyResponse:
        assert self.tokenizer is not None and self.sampling is not None
        episode = request.episode_id
        ledger = self._ledgers.get(episode)
        asked = self._asked.get(episode)
        if ledger is None or request.turn == 0:
            ledger = self._ledgers[episode] = TokenLedger(self.tokenizer)
            engine.kv.open(episode)
        elif asked is not None and asked[0] == request.turn and len(ledger) == len(asked[1]):
            # The same turn again, its first call unanswered (cancelled: a timeout, an
            # update that aborts calls in flight): the ledger already holds its prompt.
            return list(asked[1])
        ids = ledger.prompt_for(request.messages)
        self._asked[episode] = (request.turn, ids)
        if self.context_length is not None and not ledger.fits(
            self.sampling.max_new_tokens, self.context_length
        ):
            return context_limit_response(len(ids))
        return ids

    def _to_response(
        self, request: PolicyRequest, prompt_tokens: int, gen: Generation
    ) -> PolicyResponse:
        assert self.tokenizer is not None
        if gen.finish == "cancelled":
            raise PolicyError(f"episode {request.episode_id}: turn cancelled")
        ledger = self._ledgers.get(request.episode_id)
        if ledger is None:
            raise PolicyError(f"episode {request.episode_id} was finished while generating")
        ledger.append_generated(gen.ids, gen.logprobs)
        self._asked.pop(request.episode_id, None)
        text = self.tokenizer.decode(gen.ids)
        if gen.matched is not None and gen.matched in text:
            text = text[: text.find(gen.matched)]
        return PolicyResponse(
            text=text,
            finish_reason="length" if gen.finish == "length" else "stop",
            token_ids=list(gen.ids),
            logprobs=list(gen.logprobs),
            prompt_tokens=prompt_tokens,
            completion_tokens=len(gen.ids),
            weight_version=gen.weight_version,
            # Only for a turn that spanned a weight update: where each version starts.
            weight_versions=list(gen.weight_versions) if len(gen.weight_versions) > 1 else None,
        )


def _wake(items: list[Job | WeightUpdate]) -> None:
    """On the event loop: wake whoever waits for ``items``."""
    for item in items:
        if item.waiter is not None:
            item.waiter.set()
