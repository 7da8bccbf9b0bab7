"""Small file helpers shared by the resumable stages."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def file_md5(path: Path) -> str:
    """MD5 of a file's bytes,, read in 1 MiB blocks."""
    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_parquet_atomic(df: pd.DataFrame | pa.Table, path: str | Path) -> Path:
    """Write to a temp file beside `path`, then rename: readers never see half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(table, tmp)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def vectors_table(paths: list[str], vectors: np.ndarray, **columns: object) -> pa.Table:
    """A parquet-ready table: `path`, one fixed-size float32 list column `embedding`, extras."""
    vec = np.ascontiguousarray(vectors, dtype=np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), vec.shape[1])
    data: dict[str, object] = {"path": pa.array(paths, pa.string()), "embedding": emb}
    data.update({k: pa.array(v) for k, v in columns.items()})
    return pa.table(data)


def read_vectors(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Inverse of `vectors_table`: (other columns as a DataFrame, (N, d) float32 array)."""
    table = pq.read_table(path)
    col = table.column("embedding").combine_chunks()
    d = col.type.list_size
    vectors = col.values.to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32)
    meta = table.drop(["embedding"]).to_pandas()
    return meta, vectors
