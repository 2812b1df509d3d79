"""Batched generation with a KV cache: transformers + torch, run in a worker thread.

:class:`Engine` owns one causal LM. :meth:`Engine.generate` takes a batch of prompts (token
ids) and decodes them together:

* **prefill**: the prompts are left-padded to the longest (pad positions masked out,
  ``position_ids`` counted over real tokens only, so each row sees exactly its own prompt)
  and run in one forward pass that fills a ``DynamicCache``; only the last position's logits
  are computed;
* **decode**: one forward pass per step over the newest token of every row still
  generating, reusing the cache. A row stops on an EOS id (the token is kept: the model
  generated it), on a stop string (the ids end with the token that completed it), at
  ``max_new_tokens``, or when its :class:`Ticket` is cancelled. Finished rows are dropped
  from the batch and its cache, so a long answer does not drag finished rows along.

The logprob recorded for each sampled token is its log-probability under the model
(``log_softmax`` of the logits, before temperature and top-p): what a trainer recomputes
from the same ids. Sampling: greedy when ``temperature == 0``, else temperature and nucleus
(top-p) sampling with the engine's seeded ``torch.Generator``.

Everything here blocks: call it from a worker thread (the policy does, one call at a time),
never from the event loop. ``torch`` and ``transformers`` are imported when the engine
loads, so importing this module needs neither.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from gymux.errors import PolicyError

__all__ = ["Engine", "Generation", "Sampling", "Ticket"]

_log = structlog.get_logger("gymux.policies.hf")

Finish = Literal["stop", "length", "cancelled"]


class Ticket:
    """One sequence's cancellation flag, set on the event loop, read by the worker."""

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
    """One row's output: the sampled ids, their logprobs, and why it stopped."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: Finish = "length"
    #: The stop string that ended it, if one did.
    matched: str | None = None


class Engine:
    """A causal LM and its generation loop (see the module docstring)."""

    def __init__(
        self,
        folder: Path,
        *,
        dtype: str = "float32",
        threads: int | None = None,
        seed: int = 0,
        eos_ids: Sequence[int] = (),
    ) -> None:
        self.folder = folder
        self.dtype = dtype
        self.threads = threads if threads is not None else max(1, min(8, os.cpu_count() or 1))
        self.seed = seed
        self._eos_extra = list(eos_ids)
        self.eos_ids: frozenset[int] = frozenset()
        self.max_positions: int | None = None
        self.generation_defaults: dict[str, float] = {}
        self.pad_id = 0
        self._model: Any = None
        self._torch: Any = None
        self._generator: Any = None
        #: Set to make a running :meth:`generate` return at its next step (shutdown).
        self.stopping = threading.Event()
        # Counters (read by tests and the summary).
        self.forward_calls = 0
        self.prefill_calls = 0
        #: The number of rows of each prefill (one per batch).
        self.batch_sizes: list[int] = []
        self.tokens_generated = 0
        self.cancelled_rows = 0
        self.busy_s = 0.0
        self.load_s = 0.0

    # -- loading (worker thread) ---------------------------------------------------------

    def load(self) -> None:
        """Load the model (blocking: call from a worker thread)."""
        started = time.perf_counter()
        try:
            import torch
            from transformers import AutoModelForCausalLM, GenerationConfig
        except ImportError as exc:
            raise PolicyError(
                f"policy 'hf' needs torch and transformers ({exc.name} is missing): "
                "pip install 'gymux[hf]' (from a checkout: pip install -e '.[hf]')"
            ) from None
        torch.set_num_threads(self.threads)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(self.folder), dtype=dtype[self.dtype]
            )
        except (OSError, ValueError, KeyError) as exc:
            raise PolicyError(f"cannot load a model from {str(self.folder)!r}: {exc}") from None
        model.eval()
        config = model.config
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

    # -- generation (worker thread) ------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: Sampling,
        tickets: Sequence[Ticket],
        decode: Callable[[list[int]], str] | None = None,
    ) -> list[Generation]:
        """Decode ``prompts`` together (blocking; see the module docstring)."""
        if self._model is None:
            raise PolicyError("policy 'hf': the model is not loaded")
        torch = self._torch
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                return self._generate(torch, prompts, sampling, tickets, decode)
        finally:
            self.busy_s += time.perf_counter() - started

    def _generate(
        self,
        torch: Any,
        prompts: Sequence[Sequence[int]],
        sampling: Sampling,
        tickets: Sequence[Ticket],
        decode: Callable[[list[int]], str] | None,
    ) -> list[Generation]:
        from transformers import DynamicCache

        n = len(prompts)
        out = [Generation() for _ in range(n)]
        if n == 0:
            return out
        longest = max(len(p) for p in prompts)
        ids = torch.full((n, longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, longest), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if prompt:
                ids[row, longest - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
                mask[row, longest - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        rows = list(range(n))  # batch row -> prompt index, for the rows still generating
        self.prefill_calls += 1
        self.batch_sizes.append(n)
        logits = self._forward(ids, mask, positions, cache)
        for _ in range(sampling.max_new_tokens):
            tokens, logprobs = self._sample(torch, logits, sampling)
            sampled: list[int] = tokens.tolist()
            keep: list[int] = []
            for b, index in enumerate(rows):
                gen = out[index]
                if tickets[index].cancelled:
                    gen.finish = "cancelled"
                    self.cancelled_rows += 1
                    continue
                token = sampled[b]
                gen.ids.append(token)
                gen.logprobs.append(float(logprobs[b]))
                self.tokens_generated += 1
                if token in self.eos_ids:
                    gen.finish = "stop"
                    continue
                if sampling.stop and decode is not None:
                    text = decode(gen.ids)
                    matched = next((s for s in sampling.stop if s in text), None)
                    if matched is not None:
                        gen.finish, gen.matched = "stop", matched
                        continue
                if len(gen.ids) >= sampling.max_new_tokens:
                    gen.finish = "length"
                    continue
                keep.append(b)
            if not keep or self.stopping.is_set():
                break
            if len(keep) < len(rows):
                index_tensor = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(index_tensor)
                mask = mask[index_tensor]
                positions = positions[index_tensor]
                tokens = tokens[index_tensor]
                rows = [rows[b] for b in keep]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
            logits = self._forward(tokens.unsqueeze(1), mask, positions, cache)
        return out

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

    def _sample(self, torch: Any, logits: Any, sampling: Sampling) -> tuple[Any, Any]:
        """The sampled token of each row and its log-probability under the model."""
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
        return tokens, picked.tolist()


def _as_ids(value: object) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, int)]
    return []
