"""PyTorch integration: an ``IterableDataset`` over a store, and token arrays as tensors.

Needs the ``torch`` extra (``pip install gymux[torch]``); nothing else in gymux imports this
module, so torch is only loaded by code that asks for it::

    from gymux.stores.torch_dataset import TorchTrajectoryDataset, pad_collate, trajectory_tensors

    ds = TorchTrajectoryDataset("runs/x/store", shuffle_buffer=1024, seed=0,
                                success=True, transform=trajectory_tensors)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=4, collate_fn=pad_collate)

Each DataLoader worker reads its own shard (``worker_id``/``num_workers`` come from
``torch.utils.data.get_worker_info()``; ``rank``/``world_size`` from the arguments or, when
it is initialised, ``torch.distributed``). ``state_dict``/``load_state_dict`` make it a
torchdata ``Stateful`` dataset, so ``torchdata.stateful_dataloader.StatefulDataLoader``
checkpoints and resumes it exactly, per worker.

:func:`token_tensors` views a trajectory's packed token arrays as tensors without a copy.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from gymux.stores.dataset import TrajectoryDataset
from gymux.stores.store import DEFAULT_STREAM, Store
from gymux.trajectory import TokenData, Trajectory

__all__ = ["TorchTrajectoryDataset", "pad_collate", "token_tensors", "trajectory_tensors"]


def _import_torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ModuleNotFoundError(
            "gymux.stores.torch_dataset needs PyTorch, which is not installed: "
            "pip install gymux[torch]",
            name="torch",
        ) from exc


# Typed as Any on purpose: mypy would otherwise analyse all of torch on every check.
torch: Any = _import_torch()
_IterableDataset: Any = torch.utils.data.IterableDataset

_LITTLE = sys.byteorder == "little"


_frombuffer_warned = False


def _frombuffer(buf: bytes, dtype: Any) -> Any:
    # torch warns, once per process, that a tensor over immutable ``bytes`` is writable. These
    # tensors are documented as read-only views; keep that warning out of users' logs. After
    # the first call torch stays quiet by itself, so the (process-global) warnings state is
    # touched only once.
    global _frombuffer_warned
    if _frombuffer_warned:
        return torch.frombuffer(buf, dtype=dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        tensor = torch.frombuffer(buf, dtype=dtype)
    _frombuffer_warned = True
    return tensor


def _view(buf: bytes, dtype: Any, np_dtype: str) -> Any:
    if not buf:
        return torch.empty(0, dtype=dtype)
    if _LITTLE or np_dtype == "u1":
        return _frombuffer(buf, dtype)
    import numpy as np  # big-endian host: a byte-swapping copy is unavoidable

    return torch.from_numpy(np.frombuffer(buf, dtype="<" + np_dtype).astype("=" + np_dtype))


def token_tensors(tokens: TokenData) -> dict[str, Any]:
    """``ids`` (int32), ``loss_mask`` (uint8) and, if recorded, ``logprobs`` (float32) as 1-D
    tensors that share memory with ``tokens`` (no copy on little-endian hosts). Treat them as
    read-only: ``.clone()`` before modifying them in place."""
    out: dict[str, Any] = {
        "ids": _view(tokens.ids, torch.int32, "i4"),
        "loss_mask": _view(tokens.loss_mask, torch.uint8, "u1"),
    }
    if tokens.logprobs is not None:
        out["logprobs"] = _view(tokens.logprobs, torch.float32, "f4")
    return out


def trajectory_tensors(trajectory: Trajectory) -> dict[str, Any]:
    """A ``transform`` for :class:`TorchTrajectoryDataset`: :func:`token_tensors` plus
    ``reward`` (float32 scalar), ``success`` (bool scalar) and ``policy_step`` (int64 scalar,
    -1 when unknown). Raises ``ValueError`` for a trajectory without token data."""
    if trajectory.tokens is None:
        raise ValueError(
            f"trajectory {trajectory.episode_id} has no token data (the policy returned text "
            "only); filter it out or use another transform"
        )
    out = token_tensors(trajectory.tokens)
    out["reward"] = torch.tensor(trajectory.reward, dtype=torch.float32)
    out["success"] = torch.tensor(trajectory.success, dtype=torch.bool)
    step = trajectory.policy_step
    out["policy_step"] = torch.tensor(-1 if step is None else step, dtype=torch.int64)
    return out


def pad_collate(
    batch: Sequence[Mapping[str, Any]], *, pad_id: int = 0, pad_logprob: float = 0.0
) -> dict[str, Any]:
    """A ``collate_fn`` for items of :func:`trajectory_tensors`: pads ``ids``, ``loss_mask``
    and ``logprobs`` to ``[batch, max_len]`` (right-padded; ``loss_mask`` is 0 on padding),
    adds ``attention_mask`` (bool) and ``lengths``, and stacks the scalar fields."""
    if not batch:
        raise ValueError("pad_collate: empty batch")
    lengths = [int(item["ids"].shape[0]) for item in batch]
    width = max(lengths)
    size = len(batch)
    ids = torch.full((size, width), pad_id, dtype=torch.int32)
    loss_mask = torch.zeros((size, width), dtype=torch.uint8)
    attention = torch.zeros((size, width), dtype=torch.bool)
    has_logprobs = all("logprobs" in item for item in batch)
    logprobs = torch.full((size, width), pad_logprob, dtype=torch.float32)
    for row, (item, n) in enumerate(zip(batch, lengths, strict=True)):
        ids[row, :n] = item["ids"]
        loss_mask[row, :n] = item["loss_mask"]
        attention[row, :n] = True
        if has_logprobs:
            logprobs[row, :n] = item["logprobs"]
    out: dict[str, Any] = {
        "ids": ids,
        "loss_mask": loss_mask,
        "attention_mask": attention,
        "lengths": torch.tensor(lengths, dtype=torch.int64),
    }
    if has_logprobs:
        out["logprobs"] = logprobs
    for key in ("reward", "success", "policy_step"):
        if all(key in item for item in batch):
            out[key] = torch.stack([item[key] for item in batch])
    return out


def _distributed() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1


class TorchTrajectoryDataset(_IterableDataset):  # type: ignore[misc]
    """A ``torch.utils.data.IterableDataset`` over a :class:`TrajectoryDataset`.

    ``rank``/``world_size``: this process's place among data-parallel ranks; when not given,
    taken from ``torch.distributed`` if it is initialised (at construction, in the main
    process), else ``0``/``1``. The DataLoader worker's id and count are picked up in each
    worker. ``transform`` maps each item (a ``Trajectory``, or ``(seq, payload)`` with
    ``decode=False``) in the worker, e.g. :func:`trajectory_tensors`. Other keywords are
    :class:`TrajectoryDataset`'s (filters, ``shuffle_buffer``, ``seed``, ``follow``, ...).
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        stream: str = DEFAULT_STREAM,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Callable[[Any], Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if "worker_id" in options or "num_workers" in options:
            raise TypeError("worker_id/num_workers come from the DataLoader; don't pass them")
        if rank is None or world_size is None:
            dist_rank, dist_world = _distributed()
            rank = dist_rank if rank is None else rank
            world_size = dist_world if world_size is None else world_size
        self.dataset = TrajectoryDataset(store, stream, rank=rank, world_size=world_size, **options)
        self.transform = transform

    def _configure_worker(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None:
            self.dataset.worker_id, self.dataset.num_workers = 0, 1
        else:
            self.dataset.worker_id, self.dataset.num_workers = int(info.id), int(info.num_workers)

    def __iter__(self) -> Iterator[Any]:
        self._configure_worker()
        items = iter(self.dataset)  # the pass's state is set up now (see TrajectoryDataset)
        transform = self.transform
        return items if transform is None else map(transform, items)

    def set_epoch(self, epoch: int) -> None:
        """Re-key the shuffle for the next pass (call it before creating the loader's
        iterator; with ``persistent_workers`` the workers keep their own copies)."""
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        self._configure_worker()
        return self.dataset.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._configure_worker()
        self.dataset.load_state_dict(state)

    def __repr__(self) -> str:
        return f"TorchTrajectoryDataset({self.dataset!r})"
