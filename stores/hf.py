"""A Hugging Face ``datasets`` loader for a store stream (``pip install gymux[datasets]``).

::

    ds = load_hf_dataset("runs/x/store", success=True)      # datasets.Dataset
    ds[0]["messages"], ds[0]["token_ids"], ds[0]["reward"]

Rows and columns are those of :func:`gymux.stores.export.to_arrow_table` (one row per
trajectory; token data as ``list<int32>``/``list<float32>``/``list<uint8>``). Nothing is
fetched from the Hub: the dataset is built from the Arrow data directly, so it works
offline. By default the table is held in memory; with ``cache_dir`` it is streamed, batch
by batch, into an Arrow file there and memory-mapped (for streams larger than RAM).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from gymux.stores.errors import StoreError
from gymux.stores.export import arrow_schema, iter_arrow_batches, to_arrow_table
from gymux.stores.store import DEFAULT_STREAM, StorePath

__all__ = ["load_hf_dataset"]


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise StoreError(
            "the Hugging Face loader needs the datasets package: pip install gymux[datasets]"
        ) from None
    return datasets


def load_hf_dataset(
    store_path: StorePath,
    stream: str = DEFAULT_STREAM,
    *,
    committed_only: bool = False,
    salvage: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    **filters: Any,
) -> Any:
    """A ``datasets.Dataset`` of the stream's trajectories; ``filters`` are
    :func:`gymux.stores.codec.make_filter` keywords (``env``, ``success``, ...)."""
    datasets = _import_datasets()
    if cache_dir is None:
        from datasets.table import InMemoryTable

        table = to_arrow_table(
            store_path, stream, committed_only=committed_only, salvage=salvage, **filters
        )
        return datasets.Dataset(InMemoryTable(table))
    import pyarrow as pa

    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"gymux-{stream}-{uuid.uuid4().hex[:12]}.arrow"
    try:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, arrow_schema()) as w:
            for batch in iter_arrow_batches(
                store_path, stream, committed_only=committed_only, salvage=salvage, **filters
            ):
                w.write_batch(batch)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return datasets.Dataset.from_file(str(path))
