"""Per-episode key/value caches kept between turns: an LRU over episodes with a byte budget.

An episode's next prompt extends its previous one (the token ledger guarantees it: previous
prompt + the ids the model generated + the new observation's ids), so the keys and values
computed for a turn stay valid for the next: :class:`KVStore` keeps them, per episode, and the
engine prefills only the new suffix.

* :class:`EpisodeKV` is one episode's cache: ``ids`` (the tokens whose keys and values it
  holds, in order) and ``layers`` (one ``(keys, values)`` pair per model layer, each
  ``[1, heads, len(ids), head_dim]``, compacted: no padding). Positions are baked into the
  keys (rotary embeddings are applied before caching), so a compacted cache is exact.
* :meth:`KVStore.take` hands an entry to the engine for the episode's next turn (it leaves
  the store while the turn decodes); :meth:`KVStore.put` brings it back when the turn ends,
  evicting least recently used episodes while the total exceeds the budget.
* Only **live** episodes are kept: :meth:`KVStore.open` when an episode starts,
  :meth:`KVStore.forget` when it finishes (``finish_episode``); a ``put`` for an episode that
  is not live is dropped, so a turn that ends after its episode was finished leaks nothing.
* :meth:`KVStore.clear` drops everything (new weights make every cached key stale).

Thread-safe: the policy opens and forgets episodes on the event loop, the engine's worker
thread takes and puts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EpisodeKV", "KVStats", "KVStore", "common_prefix"]


@dataclass(slots=True)
class EpisodeKV:
    """One episode's cached keys and values (see the module docstring)."""

    ids: list[int]
    layers: list[tuple[Any, Any]]
    nbytes: int

    def cropped(self, length: int) -> EpisodeKV:
        """The first ``length`` positions (views: no copy)."""
        if length >= len(self.ids):
            return self
        layers = [(k[:, :, :length, :], v[:, :, :length, :]) for k, v in self.layers]
        per_token = self.nbytes // max(1, len(self.ids))
        return EpisodeKV(self.ids[:length], layers, per_token * length)


def kv_nbytes(layers: Sequence[tuple[Any, Any]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case, at C speed
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(slots=True)
class KVStats:
    """What the store did (turns that found a usable cache, and tokens it saved)."""

    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0

    @property
    def hit_ratio(self) -> float:
        """Turns that reused a cache, over all turns prefilled."""
        turns = self.hits + self.misses
        return self.hits / turns if turns else 0.0

    @property
    def token_reuse_ratio(self) -> float:
        """Prompt tokens not recomputed, over all prompt tokens."""
        total = self.reused_tokens + self.prefilled_tokens
        return self.reused_tokens / total if total else 0.0


class KVStore:
    """An LRU of :class:`EpisodeKV` by episode id, bounded by ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, EpisodeKV] = OrderedDict()
        self._live: set[str] = set()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = KVStats()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return self._bytes

    def open(self, key: str) -> None:
        """``key``'s episode is running: its caches may be kept."""
        with self._lock:
            self._live.add(key)

    def forget(self, key: str) -> None:
        """``key``'s episode finished: drop its cache and keep none from now on."""
        with self._lock:
            self._live.discard(key)
            self._drop(key)

    def usable(self, key: str, prompt: Sequence[int]) -> int:
        """How many leading tokens of ``prompt`` :meth:`take` would find cached (no change)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return 0
            return max(0, min(common_prefix(entry.ids, prompt), len(prompt) - 1))

    def take(self, key: str, prompt: Sequence[int]) -> EpisodeKV | None:
        """Remove ``key``'s cache and return the part of it that ``prompt`` extends.

        At least one token of ``prompt`` is always left to compute (the model needs the
        logits after its last token). Counts a hit (some of it is usable) or a miss.
        """
        with self._lock:
            entry = self._drop(key)
        usable = 0 if entry is None else min(common_prefix(entry.ids, prompt), len(prompt) - 1)
        if entry is None or usable <= 0:
            self.stats.misses += 1
            self.stats.prefilled_tokens += len(prompt)
            return None
        self.stats.hits += 1
        self.stats.reused_tokens += usable
        self.stats.prefilled_tokens += len(prompt) - usable
        return entry.cropped(usable)

    def put(self, key: str, entry: EpisodeKV) -> bool:
        """Keep ``entry`` as ``key``'s cache (most recently used); evict older episodes'
        while over budget. Returns whether it was kept (not when ``key`` is not live, or
        when it alone exceeds the budget)."""
        with self._lock:
            if key not in self._live or entry.nbytes > self.budget_bytes:
                return False
            self._drop(key)
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.budget_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes
                self.stats.evictions += 1
            self._sync_stats()
            return True

    def clear(self) -> None:
        """Drop every cache (the live set stays)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._sync_stats()

    def _drop(self, key: str) -> EpisodeKV | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
        self._sync_stats()
        return entry

    def _sync_stats(self) -> None:
        self.stats.bytes = self._bytes
        self.stats.entries = len(self._entries)
