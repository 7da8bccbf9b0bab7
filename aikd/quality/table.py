"""The quality table: every scorer on the same aligned crop of every evaluation face.

The evaluation compares quality methods on the same faces, so every method scores the
same aligned crop: each image is decoded and aligned once per batch and handed to all
scorers. The work is cut into chunks written as shards (:mod:`aikd.data.shards`), so an
interrupted stage resumes where it stopped; a signature of the scorers guards the shards
against being reused for another set of models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from aikd.data.io import write_parquet_atomic
from aikd.data.shards import build_in_shards, build_in_shards_ray
from aikd.engine import ChunkFn, EngineSettings
from aikd.faces import landmarks_array, map_aligned, row_files
from aikd.quality.scorers import Scorer

log = logging.getLogger("aikd")


def score_rows(rows: pd.DataFrame, scorers: Sequence[Scorer], template: str, *,
               batch_size: int, workers: int, bar: tqdm | None = None) -> pd.DataFrame:
    """One chunk of the quality table (``path``, ``status``, one column per scorer
    column), one row per row; see :func:`score_faces`."""
    names = [c for sc in scorers for c in sc.columns]
    files = row_files(rows)
    lms = landmarks_array(rows)
    has_face = np.isfinite(lms).all(axis=(1, 2))
    values = {n: np.full(len(rows), np.nan) for n in names}
    status = np.where(has_face, "ok", "no_landmarks").astype(object)
    todo = np.flatnonzero(has_face)

    def put(idx: np.ndarray, batch: torch.Tensor) -> None:
        where = todo[idx]
        for scorer in scorers:
            for n, v in scorer(batch).items():
                values[n][where] = v

    messages = map_aligned([files[i] for i in todo], lms[todo], template, put,
                           batch_size=batch_size, workers=workers, bar=bar)
    for i, msg in enumerate(messages):
        if msg:
            status[todo[i]] = msg
    if bar is not None:
        bar.update(len(rows) - todo.size)
    return pd.DataFrame({"path": rows["path"].to_numpy(), "status": status, **values})


def _ray_scorer(scorers: Sequence[Scorer], template: str, batch_size: int) -> ChunkFn:
    """The chunk function of a Ray actor: the scorers (and their models) arrive once per
    actor; the actor decodes its images itself."""
    def fn(rows: pd.DataFrame) -> pd.DataFrame:
        with torch.inference_mode():
            return score_rows(rows, scorers, template, batch_size=batch_size, workers=0)

    return fn


def score_faces(
    rows: pd.DataFrame,
    scorers: Sequence[Scorer],
    template: str,
    out_path: str | Path,
    *,
    signature: str = "",
    batch_size: int = 64,
    chunk_size: int = 1024,
    workers: int = 1,
    progress: bool = True,
    engine: EngineSettings | None = None,
) -> pd.DataFrame:
    """Score every row (``root``, ``path``, x0..y4; NaN landmarks = no face) with every
    scorer; write ``out_path`` (``path``, ``status``, one column per scorer column) and
    return it. Every scorer names its output columns in a ``columns`` attribute.

    ``status`` is ``ok``, ``no_landmarks`` or the read/alignment error; qualities are NaN
    for rows that are not ok. Finished chunks are kept beside the output until the end.
    ``engine`` ``kind: ray`` computes the chunks on Ray actors (:mod:`aikd.engine`).
    """
    out = Path(out_path)
    names = [c for sc in scorers for c in sc.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"scorers produce duplicate columns: {names}")

    def chunk(lo: int, hi: int, bar: tqdm) -> pd.DataFrame:
        return score_rows(rows.iloc[lo:hi], scorers, template, batch_size=batch_size,
                          workers=workers, bar=bar)

    def merge(shard_files: list[Path]) -> pd.DataFrame:
        shards = [pd.read_parquet(f) for f in shard_files]
        table = (pd.concat(shards, ignore_index=True) if shards
                 else pd.DataFrame(columns=["path", "status", *names]))
        write_parquet_atomic(table, out)
        return table

    if engine is not None and engine.is_ray:
        table = build_in_shards_ray(out, rows, partial(_ray_scorer, scorers, template,
                                                       batch_size), merge, engine,
                                    desc=f"quality {out.stem}", signature=signature,
                                    progress=progress)
    else:
        table = build_in_shards(out, len(rows), chunk_size, chunk, merge,
                                desc=f"quality {out.stem}", signature=signature,
                                progress=progress)
    for r in table[~table["status"].isin(["ok", "no_landmarks"])].itertuples():
        log.warning("quality %s: %s", r.path, r.status)
    return table
