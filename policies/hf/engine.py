"""Continuous batching with per-episode KV reuse: transformers + torch, in one worker thread.

:class:`Engine` owns one causal LM. :meth:`Engine.serve` runs in a worker thread for the
policy's lifetime and is the only code that touches the model after loading; the event loop
hands it work through a thread-safe inbox (:meth:`Engine.submit`, :meth:`Engine.submit_update`)
and gets answers back through the ``notify`` callback.

Each iteration of the loop, at a step boundary (never mid-forward):

1. **weight updates** waiting are applied (:meth:`Engine.submit_update`): the new state dict
   is copied into the model, every cached key/value is dropped (stale under new weights),
   and the turns still decoding are prefilled again from their ids so far under the new
   weights, then continue;
2. **admission**: turns waiting in the inbox join the running batch (at most ``max_batch``
   rows). Each takes its episode's cached keys and values from the :class:`KVStore` when
   its prompt extends them, so only the new suffix is prefilled; the newcomers are prefilled
   together in one forward pass (cached part and suffix each left-padded, padding masked
   out, ``position_ids`` counted over real tokens) and their caches merged into the batch's;
3. **decode**: one forward pass over the newest token of every row. A row stops on an EOS id
   (kept: the model generated it), on a stop string (the ids end with the token that
   completed it), at ``max_new_tokens``, or when its :class:`Ticket` is cancelled. A finished
   row leaves the batch at once; its keys and values (prompt + generated ids, padding
   removed) go back to the :class:`KVStore` for the episode's next turn.

When the batch is idle, the first turn waits up to ``window_s`` for others to arrive, so a
burst of turns shares one prefill.

The logprob recorded for each sampled token is its log-probability under the model
(``log_softmax`` of the logits, before temperature and top-p): what a trainer recomputes
from the same ids. Sampling: greedy when ``temperature == 0``, else temperature and nucleus
(top-p) sampling with the engine's seeded ``torch.Generator``.

Supports models whose cache is a plain ``DynamicCache`` of full-attention layers (Llama,
Qwen2, Mistral without a sliding window, ...). ``torch`` and ``transformers`` are imported
when the engine loads, so importing this module needs neither.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from gymux.errors import PolicyError
from gymux.policies.hf.kvcache import EpisodeKV, KVStore, kv_nbytes

__all__ = ["Engine", "Generation", "Job", "Sampling", "Ticket", "WeightUpdate", "default_threads"]

_log = structlog.get_logger("gymux.policies.hf")

Finish = Literal["stop", "length", "cancelled"]

#: Padded tokens (rows x longest new suffix) one admission prefill may process at most; more
#: newcomers wait for the next step (one long prompt is always admitted alone).
PREFILL_TOKENS = 4096


class Ticket:
    """One turn's cancellation flag, set on the event loop, read by the worker."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


@dataclass(frozen=True, slots=True)
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()


@dataclass(slots=True)
class Generation:
    """One turn's output: the sampled ids, their logprobs, and why it stopped."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: Finish = "length"
    #: The stop string that ended it, if one did.
    matched: str | None = None
    #: ``(index of the first token, weight version)`` of each run of tokens generated under
    #: one version (more than one when a weight update happened mid-turn).
    weight_versions: list[tuple[int, str]] = field(default_factory=list)
    #: Prompt tokens taken from the episode's cache, and prompt tokens computed.
    reused_tokens: int = 0
    prefilled_tokens: int = 0

    @property
    def weight_version(self) -> str | None:
        """The version that generated the last token."""
        return self.weight_versions[-1][1] if self.weight_versions else None


class Job:
    """One turn to generate. ``waiter`` is the policy's (the engine never touches it)."""

    __slots__ = ("error", "generation", "key", "prompt", "ticket", "waiter")

    def __init__(self, key: str, prompt: Sequence[int], ticket: Ticket, waiter: Any = None):
        if not prompt:
            raise PolicyError("policy 'hf': empty prompt")
        self.key = key
        self.prompt = list(prompt)
        self.ticket = ticket
        self.waiter = waiter
        self.generation = Generation()
        self.error: BaseException | None = None


class WeightUpdate:
    """New weights to load at the next step boundary."""

    __slots__ = ("error", "state", "version", "waiter")

    def __init__(self, state: Mapping[str, Any], version: str, waiter: Any = None) -> None:
        self.state = state
        self.version = version
        self.waiter = waiter
        self.error: BaseException | None = None


#: ``notify(items)``: called in the worker thread with the jobs and updates just finished.
Notify = Callable[[list[Job | WeightUpdate]], None]


class _Row:
    """A turn in the batch: ``fed`` are the ids whose keys and values are cached, ``pending``
    the ids still to feed (the suffix to prefill; then the last sampled id)."""

    __slots__ = ("fed", "job", "past", "pending")

    def __init__(self, job: Job, past: EpisodeKV | None) -> None:
        self.job = job
        self.past = past
        self.fed: list[int] = list(past.ids) if past is not None else []
        self.pending: list[int] = job.prompt[len(self.fed) :]


class Engine:
    """A causal LM and its continuous-batching loop (see the module docstring)."""

    def __init__(
        self,
        folder: Path,
        *,
        dtype: str = "float32",
        threads: int | None = None,
        seed: int = 0,
        eos_ids: Sequence[int] = (),
        max_batch: int = 32,
        window_s: float = 0.002,
        kv_budget_bytes: int = 2 << 30,
        weight_version: str = "0",
    ) -> None:
        self.folder = folder
        self.dtype = dtype
        self.threads = threads if threads is not None else default_threads()
        self.seed = seed
        self.max_batch = max_batch
        self.window_s = window_s
        self.weight_version = weight_version
        self._eos_extra = list(eos_ids)
        self.eos_ids: frozenset[int] = frozenset()
        self.max_positions: int | None = None
        self.generation_defaults: dict[str, float] = {}
        self.pad_id = 0
        #: Set by the policy before :meth:`serve`.
        self.sampling = Sampling(max_new_tokens=16, temperature=1.0, top_p=1.0)
        self.decode: Callable[[list[int]], str] | None = None
        self.kv = KVStore(kv_budget_bytes)
        self._model: Any = None
        self._torch: Any = None
        self._generator: Any = None
        # The inbox (event loop -> worker).
        self._cond = threading.Condition()
        self._inbox: deque[Job] = deque()
        self._updates: deque[WeightUpdate] = deque()
        self._first_arrival = 0.0
        #: Set (with :meth:`stop`) to make :meth:`serve` return at its next step boundary.
        self.stopping = threading.Event()
        # The running batch (worker thread only).
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: Any = None
        #: What the current iteration answered (handed to ``notify`` after it).
        self._done: list[Job | WeightUpdate] = []
        # Counters (read by tests and the run's summary log).
        self.forward_calls = 0
        self.prefill_calls = 0
        self.decode_steps = 0
        #: The number of rows of each admission prefill.
        self.batch_sizes: list[int] = []
        #: Rows admitted while other rows were mid-decode (continuous batching at work).
        self.joined_running = 0
        #: The most rows decoded together.
        self.max_rows = 0
        self.tokens_generated = 0
        self.turns_done = 0
        self.cancelled_rows = 0
        self.weight_updates = 0
        self.busy_s = 0.0
        self.load_s = 0.0

    # -- loading ------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model (blocking: call from a worker thread)."""
        started = time.perf_counter()
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, GenerationConfig
        except ImportError as exc:
            raise PolicyError(
                f"policy 'hf' needs torch and transformers ({exc.name} is missing): "
                "pip install 'gymux[hf]' (from a checkout: pip install -e '.[hf]')"
            ) from None
        torch.set_num_threads(self.threads)
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(self.folder), dtype=dtype[self.dtype]
            )
        except (OSError, ValueError, KeyError) as exc:
            raise PolicyError(f"cannot load a model from {str(self.folder)!r}: {exc}") from None
        model.eval()
        config = model.config
        _check_full_attention(config)
        self.max_positions = getattr(config, "max_position_embeddings", None)
        eos: set[int] = set(self._eos_extra)
        eos.update(_as_ids(getattr(config, "eos_token_id", None)))
        try:
            gen = GenerationConfig.from_pretrained(str(self.folder))
        except (OSError, ValueError):
            gen = None
        if gen is not None:
            eos.update(_as_ids(gen.eos_token_id))
            for key in ("temperature", "top_p"):
                value = getattr(gen, key, None)
                if isinstance(value, int | float) and gen.do_sample:
                    self.generation_defaults[key] = float(value)
        self.eos_ids = frozenset(eos)
        pad = getattr(config, "pad_token_id", None)
        self.pad_id = pad if isinstance(pad, int) else (min(eos) if eos else 0)
        self._torch = torch
        self._model = model
        self._generator = torch.Generator().manual_seed(self.seed)
        self.load_s = time.perf_counter() - started
        _log.info(
            "hf model loaded",
            folder=str(self.folder),
            parameters=sum(p.numel() for p in model.parameters()),
            dtype=self.dtype,
            threads=self.threads,
            seconds=round(self.load_s, 2),
        )

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def active_rows(self) -> int:
        return len(self._rows)

    # -- the inbox (any thread) -----------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a turn; it joins the batch at the next step boundary."""
        with self._cond:
            if not self._inbox:
                self._first_arrival = time.monotonic()
            self._inbox.append(job)
            self._cond.notify()

    def submit_update(self, update: WeightUpdate) -> None:
        """Queue new weights; they are loaded at the next step boundary."""
        with self._cond:
            self._updates.append(update)
            self._cond.notify()

    def wake(self) -> None:
        """Make an idle worker look at its tickets again (a turn was cancelled)."""
        with self._cond:
            self._cond.notify()

    def stop(self) -> None:
        """Make :meth:`serve` fail what is left and return at its next step boundary."""
        self.stopping.set()
        self.wake()

    def queued(self) -> int:
        with self._cond:
            return len(self._inbox)

    # -- the worker loop (the worker thread) ------------------------------------------------

    def serve(self, notify: Notify) -> None:
        """Run turns until :meth:`stop` (blocking: the worker thread's whole life)."""
        if self._model is None:
            raise PolicyError("policy 'hf': the model is not loaded")
        torch = self._torch
        try:
            while True:
                updates, jobs = self._wait_for_work()
                if self.stopping.is_set():
                    with self._cond:  # answered below, with everything else left
                        self._inbox.extendleft(reversed(jobs))
                        self._updates.extendleft(reversed(updates))
                    break
                started = time.perf_counter()
                self._done = []
                try:
                    for update in updates:
                        self._apply_update(update)
                    with torch.inference_mode():
                        self._iteration(jobs)
                except Exception as exc:  # a failed forward fails its turns, not the engine
                    _log.exception("hf engine step failed")
                    self._fail_all(jobs, PolicyError(f"policy 'hf': {exc!r}"))
                finally:
                    self.busy_s += time.perf_counter() - started
                if self._done:
                    done, self._done = self._done, []
                    notify(done)
        finally:
            with self._cond:
                left: list[Job | WeightUpdate] = [*self._inbox, *self._updates]
                self._inbox.clear()
                self._updates.clear()
            shut = PolicyError("policy 'hf' shut down mid-turn")
            for item in left:
                item.error = shut
            self._done = left
            self._fail_all([], shut)
            if self._done:
                notify(self._done)

    def _wait_for_work(self) -> tuple[list[WeightUpdate], list[Job]]:
        """The updates waiting and the turns to admit now (blocks while there is nothing)."""
        with self._cond:
            while True:
                if self.stopping.is_set():
                    return [], []
                busy = bool(self._rows)
                if self._updates or busy or self._inbox:
                    break
                self._cond.wait()
            if not busy and self._inbox and not self._updates:
                # Idle: let a burst gather so that it shares one prefill.
                deadline = self._first_arrival + self.window_s
                while (
                    len(self._inbox) < self.max_batch
                    and not self.stopping.is_set()
                    and (remaining := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(remaining)
            updates = list(self._updates)
            self._updates.clear()
            return updates, self._admissible()

    def _admissible(self) -> list[Job]:
        """Take the turns that join the batch now: up to ``max_batch`` rows in all, and one
        prefill of at most :data:`PREFILL_TOKENS` padded tokens (one turn at least)."""
        jobs: list[Job] = []
        room = self.max_batch - len(self._rows)
        longest = 0
        while self._inbox and len(jobs) < room:
            job = self._inbox[0]
            longest = max(longest, len(job.prompt) - self.kv.usable(job.key, job.prompt))
            if jobs and longest * (len(jobs) + 1) > PREFILL_TOKENS:
                break
            jobs.append(self._inbox.popleft())
        if self._inbox:
            self._first_arrival = time.monotonic()
        return jobs

    def _iteration(self, jobs: list[Job]) -> None:
        """Admit ``jobs`` (one prefill), then one decode step over the whole batch."""
        rows: list[_Row] = []
        for job in jobs:
            if job.ticket.cancelled:
                job.generation.finish = "cancelled"
                self.cancelled_rows += 1
                self._done.append(job)
                continue
            row = _Row(job, self.kv.take(job.key, job.prompt))
            job.generation.reused_tokens = len(row.fed)
            job.generation.prefilled_tokens = len(row.pending)
            rows.append(row)
        if rows:
            self.joined_running += len(rows) if self._rows else 0
            first = len(self._rows)
            logits = self._prefill(rows)
            self._advance(logits, first)
        if self._rows and not self.stopping.is_set():
            self._decode_step()

    # -- forward passes ----------------------------------------------------------------------

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        self.forward_calls += 1
        result = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return result.logits[:, -1, :].float()

    def _prefill(self, rows: list[_Row]) -> Any:
        """Prefill ``rows``' pending ids on top of their cached ones; append them to the
        batch. Returns their last positions' logits."""
        from transformers import DynamicCache

        torch = self._torch
        n = len(rows)
        width_past = max(len(r.fed) for r in rows)
        width_new = max(len(r.pending) for r in rows)
        ids = torch.full((n, width_new), self.pad_id, dtype=torch.long)
        positions = torch.zeros((n, width_new), dtype=torch.long)
        mask = torch.zeros((n, width_past + width_new), dtype=torch.long)
        for i, row in enumerate(rows):
            cached, new = len(row.fed), len(row.pending)
            ids[i, width_new - new :] = torch.tensor(row.pending, dtype=torch.long)
            positions[i, width_new - new :] = torch.arange(cached, cached + new)
            mask[i, width_past - cached : width_past] = 1
            mask[i, width_past + width_new - new :] = 1
        if width_past:
            cache = DynamicCache(ddp_cache_data=self._stack_past(rows, width_past))
        else:
            cache = DynamicCache()
        self.prefill_calls += 1
        self.batch_sizes.append(n)
        logits = self._forward(ids, mask, positions, cache)
        for row in rows:
            row.fed.extend(row.pending)
            row.pending = []
            row.past = None
        self._merge(cache, mask, rows)
        return logits

    def _stack_past(self, rows: list[_Row], width: int) -> list[tuple[Any, Any]]:
        """The rows' cached keys and values, left-padded to ``width``, one pair per layer."""
        sample = next(r.past for r in rows if r.past is not None)
        layers: list[tuple[Any, Any]] = []
        for layer, (k0, v0) in enumerate(sample.layers):
            keys = k0.new_zeros((len(rows), k0.shape[1], width, k0.shape[3]))
            values = v0.new_zeros((len(rows), v0.shape[1], width, v0.shape[3]))
            for i, row in enumerate(rows):
                if row.past is not None:
                    k, v = row.past.layers[layer]
                    keys[i, :, width - k.shape[2] :, :] = k[0]
                    values[i, :, width - v.shape[2] :, :] = v[0]
            layers.append((keys, values))
        return layers

    def _merge(self, cache: Any, mask: Any, rows: list[_Row]) -> None:
        """Append a prefilled group (its cache and mask) to the running batch."""
        torch = self._torch
        if not self._rows:
            self._cache, self._mask, self._rows = cache, mask, list(rows)
            self.max_rows = max(self.max_rows, len(self._rows))
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)])
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)])
        self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)])
        self._rows.extend(rows)
        self.max_rows = max(self.max_rows, len(self._rows))

    def _decode_step(self) -> None:
        """One forward pass over every row's newest token, then sample and retire."""
        torch = self._torch
        rows = self._rows
        last = [row.pending[-1] for row in rows]
        ids = torch.tensor(last, dtype=torch.long).unsqueeze(1)
        positions = torch.tensor([len(row.fed) for row in rows], dtype=torch.long).unsqueeze(1)
        self._mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long)], 1)
        self.decode_steps += 1
        logits = self._forward(ids, self._mask, positions, self._cache)
        for row in rows:
            row.fed.extend(row.pending)
            row.pending = []
        self._advance(logits, 0)

    def _advance(self, logits: Any, first: int) -> None:
        """Sample the next token of rows ``first..`` from ``logits`` (one row each), check
        whether each is done, and retire the finished ones."""
        tokens, logprobs = self._sample(logits)
        sampling, version = self.sampling, self.weight_version
        finished: list[int] = []
        for offset, (token, logprob) in enumerate(zip(tokens, logprobs, strict=True)):
            b = first + offset
            row = self._rows[b]
            gen = row.job.generation
            if row.job.ticket.cancelled:
                gen.finish = "cancelled"
                self.cancelled_rows += 1
                finished.append(b)
                continue
            if not gen.weight_versions or gen.weight_versions[-1][1] != version:
                gen.weight_versions.append((len(gen.ids), version))
            gen.ids.append(token)
            gen.logprobs.append(logprob)
            row.pending = [token]
            self.tokens_generated += 1
            if token in self.eos_ids or (sampling.stop and self._stopped(gen)):
                gen.finish = "stop"
            elif len(gen.ids) >= sampling.max_new_tokens:
                gen.finish = "length"
            else:
                continue
            finished.append(b)
        # Rows before ``first`` were not sampled this time; a cancelled one leaves too.
        for b in range(first):
            if self._rows[b].job.ticket.cancelled and b not in finished:
                self._rows[b].job.generation.finish = "cancelled"
                self.cancelled_rows += 1
                finished.append(b)
        self._retire(finished)

    def _stopped(self, gen: Generation) -> bool:
        """Whether ``gen``'s text now holds a stop string (noted in ``gen.matched``)."""
        if self.decode is None:
            return False
        text = self.decode(gen.ids)
        matched = next((s for s in self.sampling.stop if s in text), None)
        gen.matched = matched
        return matched is not None

    def _retire(self, finished: list[int]) -> None:
        """Take the finished rows out of the batch; keep their caches for their episodes."""
        if not finished:
            return
        torch = self._torch
        gone = set(finished)
        for b in sorted(gone):
            row = self._rows[b]
            if row.job.generation.finish != "cancelled":
                self._keep_cache(b, row)
                self.turns_done += 1
            self._done.append(row.job)
        keep = [b for b in range(len(self._rows)) if b not in gone]
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, dtype=torch.long)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self._rows = [self._rows[b] for b in keep]
        # Drop leading columns nobody uses any more (the longest row may have left).
        start = int(self._mask.any(dim=0).nonzero()[0, 0])
        if start > 0:
            self._mask = self._mask[:, start:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, start:, :]
                layer.values = layer.values[:, :, start:, :]

    def _keep_cache(self, b: int, row: _Row) -> None:
        """Row ``b``'s keys and values (its ``fed`` ids, padding removed) to the store."""
        valid = self._mask[b].nonzero().squeeze(1)
        if len(valid) != len(row.fed):  # cannot happen; never keep a wrong cache
            _log.warning("hf kv cache out of step", cached=len(valid), ids=len(row.fed))
            return
        layers = [
            (layer.keys[b : b + 1, :, valid, :], layer.values[b : b + 1, :, valid, :])
            for layer in self._cache.layers
        ]
        self.kv.put(row.job.key, EpisodeKV(list(row.fed), layers, kv_nbytes(layers)))

    def _sample(self, logits: Any) -> tuple[list[int], list[float]]:
        """The sampled token of each row and its log-probability under the model."""
        torch = self._torch
        sampling = self.sampling
        logprobs = torch.log_softmax(logits, dim=-1)
        if sampling.temperature == 0:
            tokens = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / sampling.temperature, dim=-1)
            if sampling.top_p < 1.0:
                sorted_probs, order = probs.sort(dim=-1, descending=True)
                before = sorted_probs.cumsum(dim=-1) - sorted_probs
                sorted_probs[before >= sampling.top_p] = 0.0
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
            tokens = torch.multinomial(probs, 1, generator=self._generator).squeeze(1)
        picked = logprobs.gather(-1, tokens.unsqueeze(1)).squeeze(1)
        return tokens.tolist(), picked.tolist()

    # -- weight updates and failures ----------------------------------------------------------

    def _apply_update(self, update: WeightUpdate) -> None:
        """Load ``update``'s weights (between steps), drop every cached key/value, and
        prefill the rows still decoding again under the new weights."""
        torch = self._torch
        self._done.append(update)
        current = self._model.state_dict()
        unknown = [name for name in update.state if name not in current]
        wrong = [
            f"{name} {tuple(tensor.shape)} (the model's: {tuple(current[name].shape)})"
            for name, tensor in update.state.items()
            if name in current and tuple(tensor.shape) != tuple(current[name].shape)
        ]
        if not update.state or unknown or wrong:
            update.error = PolicyError(
                "policy 'hf': cannot load the new weights: "
                + (
                    f"names the model does not have: {unknown[:5]}"
                    if unknown
                    else f"shapes that differ: {wrong[:5]}"
                    if wrong
                    else "no tensors"
                )
            )
            return
        try:
            with torch.no_grad():
                self._model.load_state_dict(dict(update.state), strict=False)
        except Exception as exc:  # checked above; anything else is reported, not raised
            update.error = PolicyError(f"policy 'hf': cannot load the new weights: {exc!r}")
            return
        self.weight_updates += 1
        self.weight_version = update.version
        self.kv.clear()
        rows, self._rows, self._cache, self._mask = self._rows, [], None, None
        for row in rows:  # each has its last sampled id pending
            row.pending = row.fed + row.pending
            row.fed = []
            row.past = None
        try:
            with torch.inference_mode():
                for group in _groups(rows):
                    first = len(self._rows)
                    self._advance(self._prefill(group), first)
        except Exception as exc:  # the weights are loaded; the turns in flight fail
            _log.exception("hf prefill after a weight update failed")
            self._fail_all([row.job for row in rows], PolicyError(f"policy 'hf': {exc!r}"))
        _log.info("hf weights updated", version=update.version, rows_prefilled=len(rows))

    def _fail_all(self, jobs: list[Job], error: PolicyError) -> None:
        """Fail ``jobs`` and every row of the batch not answered yet; drop the batch."""
        answered = {id(item) for item in self._done}
        for job in [*jobs, *(row.job for row in self._rows)]:
            if id(job) in answered:
                continue
            answered.add(id(job))
            if job.generation.finish != "cancelled":
                job.error = error
            self._done.append(job)
        self._rows, self._cache, self._mask = [], None, None


def _groups(rows: list[_Row]) -> list[list[_Row]]:
    """``rows`` cut into prefills of at most :data:`PREFILL_TOKENS` padded tokens each."""
    groups: list[list[_Row]] = []
    longest = 0
    for row in rows:
        longest = max(longest, len(row.pending))
        if groups and longest * (len(groups[-1]) + 1) <= PREFILL_TOKENS:
            groups[-1].append(row)
        else:
            groups.append([row])
            longest = len(row.pending)
    return groups


def default_threads() -> int:
    """torch threads when none are asked for: the CPUs this process may use that other
    processes leave idle (by the 1-minute load average), at least 1, at most 8.

    torch's threads synchronise at every operation: on CPUs already busy, a second thread
    mostly waits for the first (a loaded 2-core machine ran the test model 20-70x slower
    with 2 threads than with 1), while on idle cores they share the work."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, min(8, cpus - busy))


def _left_pad(tensor: Any, width: int) -> Any:
    """``tensor`` with zero columns added on the left of its sequence axis up to ``width``
    (axis 2 of a ``[batch, heads, seq, dim]`` cache tensor, axis 1 of a ``[batch, seq]``
    mask)."""
    import torch

    axis = 2 if tensor.dim() == 4 else 1
    missing = width - tensor.shape[axis]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def _check_full_attention(config: Any) -> None:
    """Refuse models whose cache is not one full-attention ``DynamicLayer`` per layer."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None) or []
    odd = sorted({t for t in layer_types if t != "full_attention"})
    if getattr(text, "use_sliding_window", False) and getattr(text, "sliding_window", None):
        odd.append("sliding_attention")
    if odd:
        raise PolicyError(
            f"policy 'hf' supports full-attention models only; this one has {', '.join(odd)} layers"
        )


def _as_ids(value: object) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, int)]
    return []
