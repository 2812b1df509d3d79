"""The per-episode KV store of the ``hf`` policy (gymux.policies.hf.kvcache), on its own.

Checked with small real tensors: a prompt that extends a cached episode reuses all of it but
its last token's logits; a prompt that diverges (a retried turn 0) reuses only the common
prefix; the LRU keeps the byte budget by evicting the least recently used episode; finished
episodes' caches are dropped and never come back; ``clear`` drops all.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("CI") != "true":
    pytest.importorskip("torch")

from gymux.policies.hf.kvcache import EpisodeKV, KVStore, common_prefix, kv_nbytes


def entry(ids: list[int], layers: int = 2) -> EpisodeKV:
    import torch

    n = len(ids)
    tensors = [
        (torch.arange(n * 4, dtype=torch.float32).reshape(1, 1, n, 4), torch.ones(1, 1, n, 4))
        for _ in range(layers)
    ]
    return EpisodeKV(list(ids), tensors, kv_nbytes(tensors))


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([1, 2, 3, 4], [1, 2]) == 2
    assert common_prefix([1, 2, 9, 4, 5], [1, 2, 3, 4, 5]) == 2
    assert common_prefix([7], [1]) == 0
    assert common_prefix([], [1]) == 0
    long = list(range(1000))
    assert common_prefix(long, [*long[:637], -1, *long[638:]]) == 637


def test_take_reuses_the_prefix_a_prompt_extends() -> None:
    store = KVStore(1 << 20)
    store.open("e")
    assert store.put("e", entry([1, 2, 3, 4]))
    assert store.usable("e", [1, 2, 3, 4, 5, 6]) == 4
    assert store.stats.hits == 0  # usable() only looks
    got = store.take("e", [1, 2, 3, 4, 5, 6])
    assert got is not None and got.ids == [1, 2, 3, 4]
    assert "e" not in store  # taken while its turn runs
    assert (store.stats.hits, store.stats.reused_tokens, store.stats.prefilled_tokens) == (1, 4, 2)


def test_take_crops_to_the_common_prefix_and_leaves_one_token() -> None:
    store = KVStore(1 << 20)
    store.open("e")
    store.put("e", entry([1, 2, 3, 4, 5]))
    # A retried turn 0: the same system prompt, then something else.
    got = store.take("e", [1, 2, 3, 9])
    assert got is not None and got.ids == [1, 2, 3]
    assert [k.shape[2] for k, _ in got.layers] == [3, 3]
    assert float(got.layers[0][0][0, 0, 2, 0]) == 8.0  # position 2's keys, unchanged
    assert got.nbytes == kv_nbytes(got.layers)
    # The prompt is exactly the cached ids: the last one is computed again for its logits.
    store.put("e", entry([1, 2, 3]))
    again = store.take("e", [1, 2, 3])
    assert again is not None and again.ids == [1, 2]
    # Nothing in common: a miss.
    store.put("e", entry([5, 6]))
    assert store.take("e", [1, 2]) is None
    assert store.stats.misses == 1


def test_lru_keeps_the_budget_by_evicting_the_least_recent() -> None:
    one = entry([1, 2, 3]).nbytes
    store = KVStore(budget_bytes=2 * one)
    for key in ("a", "b", "c"):
        store.open(key)
    store.put("a", entry([1, 2, 3]))
    store.put("b", entry([1, 2, 3]))
    assert store.take("a", [1, 2, 3, 4]) is not None  # a is used again ...
    store.put("a", entry([1, 2, 3]))  # ... and comes back as the most recent
    store.put("c", entry([1, 2, 3]))
    assert "b" not in store and "a" in store and "c" in store
    assert store.stats.evictions == 1
    assert store.nbytes == 2 * one == store.stats.bytes
    # One episode larger than the whole budget is not kept (and evicts nobody).
    assert not store.put("a", entry(list(range(10))))
    assert "c" in store


def test_finished_episodes_are_dropped_and_never_kept_again() -> None:
    store = KVStore(1 << 20)
    store.open("e")
    store.put("e", entry([1, 2]))
    store.forget("e")
    assert "e" not in store and store.nbytes == 0
    # A turn that ends after its episode was finished leaks nothing.
    assert not store.put("e", entry([1, 2]))
    assert not store.put("never-opened", entry([1, 2]))
    assert len(store) == 0


def test_clear_drops_every_cache_but_keeps_episodes_live() -> None:
    store = KVStore(1 << 20)
    store.open("e")
    store.put("e", entry([1, 2]))
    store.clear()
    assert len(store) == 0 and store.nbytes == 0
    assert store.put("e", entry([1, 2]))
