"""index.parquet: one row per sample (key, shard, label, owner, split), for finding a sample without
reading shards. Rows are sorted by (shard, key) and written without pandas metadata, so equal content
gives equal files (for one pyarrow version)."""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from lcrypt.format.folder import INDEX_NAME, ManifestError
from lcrypt.storage import join, storage_for

INDEX_COLUMNS = ("key", "shard", "label", "owner", "split")


def index_table(rows: Iterable[Mapping[str, Any]]):
    """A pyarrow Table of index rows, sorted by (shard, key) so equal content gives equal files."""
    import pyarrow as pa

    rows = sorted(rows, key=lambda r: (r["shard"], r["key"]))
    schema = pa.schema([("key", pa.string()), ("shard", pa.string()), ("label", pa.int64()),
                        ("owner", pa.string()), ("split", pa.string())])
    return pa.table({c: [r[c] for r in rows] for c in INDEX_COLUMNS}, schema=schema)


def index_bytes(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """index.parquet content (no pandas metadata; deterministic for one pyarrow version)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(index_table(rows), sink, compression="zstd", write_statistics=False)
    return sink.getvalue().to_pybytes()


def read_index(directory: str | os.PathLike):
    """index.parquet of a dataset folder as a pyarrow Table (columns key, shard, label, owner, split)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = join(directory, INDEX_NAME)
    store = storage_for(path)
    if not store.exists(path):
        raise ManifestError(f"{path} not found: the dataset folder is incomplete; re-run `lcrypt prepare`")
    return pq.read_table(pa.BufferReader(store.read_bytes(path)))
