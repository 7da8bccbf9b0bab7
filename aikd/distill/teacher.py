"""Teacher embeddings of the reference-aligned faces: the targets of the consistency term.

Read from the embed stage's parquet files (``aikd.embed``) when they exist, embedded by
the frozen teacher for the rows a cache lacks, and spot-checked against the teacher so
that a cache built with another network, template or landmarks is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from aikd.faces import iter_faces, landmarks_array, row_files, to_float_input
from aikd.models.fused import fused_dlib

log = logging.getLogger(__name__)


def read_teacher_cache(
    cache: str | Path | Sequence[str | Path] | Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """``{path: embedding}`` from embeddings parquet file(s) or a ready mapping."""
    if isinstance(cache, Mapping):
        return {str(k): np.asarray(v, dtype=np.float32) for k, v in cache.items()}
    from aikd.data.io import read_vectors

    files = [cache] if isinstance(cache, str | Path) else list(cache)
    out: dict[str, np.ndarray] = {}
    for f in files:
        meta, vectors = read_vectors(f)
        for p, v in zip(meta["path"], vectors, strict=True):
            if p in out and not np.array_equal(out[p], v):
                raise ValueError(f"teacher cache {f}: path {p} appears in two caches")
            out[p] = v
    return out


@torch.no_grad()
def teacher_embed_rows(
    teacher: nn.Module,
    rows: pd.DataFrame,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 1,
    channels_last: bool = True,
    cache: Mapping[str, np.ndarray] | None = None,
    verify: int = 4,
) -> np.ndarray:
    """(N, d) teacher embeddings of the reference-aligned rows; cached ones are reused.

    A cache made with another network, template or landmarks would silently teach the
    wrong targets, so up to ``verify`` cached rows are re-embedded and must agree
    (cosine > 0.99; bf16 and channels-last differences stay far above that).
    """
    d = int(teacher.embedding_dim)
    out = np.full((len(rows), d), np.nan, dtype=np.float32)
    todo, hits = [], []
    for i, p in enumerate(rows["path"]):
        if cache is not None and p in cache:
            vec = np.asarray(cache[p], dtype=np.float32)
            if vec.shape != (d,):
                raise ValueError(f"teacher cache has {vec.shape} vectors, the teacher gives ({d},)")
            out[i] = vec
            hits.append(i)
        else:
            todo.append(i)
    kw = dict(device=device, batch_size=batch_size, workers=workers, channels_last=channels_last)
    if hits and verify:
        check = np.asarray(hits[:verify])
        fresh = _embed(teacher, rows.iloc[check], **kw)
        agree = np.sum(fresh * out[check], axis=1) / (
            np.linalg.norm(fresh, axis=1) * np.linalg.norm(out[check], axis=1))
        if not (agree > 0.99).all():
            raise ValueError(
                f"teacher cache disagrees with the teacher (cosine {agree.round(3).tolist()} "
                f"for {rows['path'].iloc[check].tolist()}): built with another backbone, "
                "template or landmarks?"
            )
    if todo:
        if cache is not None:
            log.info("teacher cache lacks %d of %d rows: embedding them now", len(todo), len(rows))
        out[np.asarray(todo)] = _embed(teacher, rows.iloc[todo], **kw)
    return out


def _embed(teacher: nn.Module, rows: pd.DataFrame, *, device: torch.device | str,
           batch_size: int, workers: int, channels_last: bool) -> np.ndarray:
    out = np.full((len(rows), int(teacher.embedding_dim)), np.nan, dtype=np.float32)
    net = fused_dlib(teacher) or teacher  # dlib on CPU: folded/fused, same function
    for idx, batch, bad in iter_faces(row_files(rows), landmarks_array(rows),
                                      str(teacher.template), batch_size=batch_size,
                                      workers=workers):
        if bad:
            raise ValueError(f"teacher embedding failed: {bad[:3]}")
        if batch is not None:
            x = to_float_input(batch.to(device), channels_last)
            out[idx] = net(x).float().cpu().numpy()
    return out
