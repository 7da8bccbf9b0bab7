"""Aligned faces -> cached FR embeddings, reused by labels, evaluation and training.

The teacher's embedding of a properly aligned image never changes, so it is computed once
per (data set, detector, backbone) and stored as parquet (`path`, `embedding`). The table
is built in shards (:mod:`aikd.data.shards`), so an interrupted run resumes. The stage
that writes it is :func:`aikd.embed.stage.embed_stage`.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from aikd.data.io import read_vectors, vectors_table, write_parquet_atomic
from aikd.data.shards import build_in_shards, build_in_shards_ray
from aikd.engine import ChunkFn, EngineSettings

# Aligned-face batching lives in aikd.faces; these names stay importable from here.
from aikd.faces import iter_aligned, landmarks_array, map_aligned, row_files
from aikd.models.fused import fused_dlib

log = logging.getLogger(__name__)


@torch.inference_mode()
def embed_faces(model: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
    """(N, d) float32 embeddings of an aligned batch. A dlib ResNet on CPU runs its
    folded/fused copy (aikd.models.fused): same descriptors to ~1e-6, ~1.9x faster."""
    fused = fused_dlib(model)
    return (model if fused is None else fused)(batch).float().cpu().numpy()


def embed_rows(model: torch.nn.Module, rows: pd.DataFrame, *, batch_size: int, workers: int,
               bar: tqdm | None = None) -> pa.Table:
    """One chunk of the embedding table: `path`, `embedding` (NaN where the face failed)
    and `message` ("" or why the image could not be read or aligned), one row per row."""
    vectors = np.full((len(rows), model.embedding_dim), np.nan, dtype=np.float32)

    def put(idx: np.ndarray, batch: torch.Tensor) -> None:
        vectors[idx] = embed_faces(model, batch)

    messages = map_aligned(row_files(rows), landmarks_array(rows), model.template, put,
                           batch_size=batch_size, workers=workers, bar=bar)
    return vectors_table(rows["path"].tolist(), vectors, message=messages)


def _ray_embedder(model: torch.nn.Module, batch_size: int) -> ChunkFn:
    """The chunk function of a Ray actor: the model arrives once per actor (pickled);
    images are decoded in the actor itself, the actors being the parallelism."""
    model.eval()
    return partial(embed_rows, model, batch_size=batch_size, workers=0)


def embed_table(
    model: torch.nn.Module,
    rows: pd.DataFrame,
    out_path: str | Path,
    *,
    batch_size: int = 64,
    chunk_size: int = 2048,
    workers: int = 1,
    progress: bool = True,
    engine: EngineSettings | None = None,
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Embed every row (`root`, `path`, x0..y4) aligned to the model's template.

    Returns (meta with `path`, embeddings (N, d), failures with `path`, `message`), and
    writes `out_path` (parquet). Chunks finished earlier (shards beside the output) are
    reused, so an interrupted run resumes. ``engine`` ``kind: ray`` computes the chunks
    (of ``engine.batch_size`` rows) on Ray actors (:mod:`aikd.engine`); the default runs
    them here.
    """
    out = Path(out_path)
    model.eval()
    d = model.embedding_dim

    def chunk(lo: int, hi: int, bar: tqdm) -> pa.Table:
        return embed_rows(model, rows.iloc[lo:hi], batch_size=batch_size, workers=workers,
                          bar=bar)

    def merge(shards: list[Path]) -> pd.DataFrame:
        tables = [pq.read_table(shard) for shard in shards]
        merged = pa.concat_tables(tables) if tables else vectors_table(
            [], np.zeros((0, d), np.float32), message=[]
        )
        ok = pa.compute.equal(merged.column("message"), "")
        failed = merged.filter(pa.compute.invert(ok)).select(["path", "message"]).to_pandas()
        write_parquet_atomic(merged.filter(ok).drop(["message"]), out)
        return failed

    if engine is not None and engine.is_ray:
        failed = build_in_shards_ray(out, rows, partial(_ray_embedder, model, batch_size),
                                     merge, engine, desc=f"embed {out.stem}",
                                     progress=progress)
    else:
        failed = build_in_shards(out, len(rows), chunk_size, chunk, merge,
                                 desc=f"embed {out.stem}", progress=progress)
    meta, vectors = read_vectors(out)
    for r in failed.itertuples():
        log.warning("embed %s: %s", r.path, r.message)
    return meta, vectors, failed


__all__ = ["embed_faces", "embed_rows", "embed_table", "iter_aligned", "landmarks_array"]
