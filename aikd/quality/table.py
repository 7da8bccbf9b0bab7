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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from aikd.data.io import write_parquet_atomic
from aikd.data.shards import build_in_shards
from aikd.faces import landmarks_array, map_aligned, row_files
from aikd.quality.scorers import Scorer

log = logging.getLogger("aikd")


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
) -> pd.DataFrame:
    """Score every row (``root``, ``path``, x0..y4; NaN landmarks = no face) with every
    scorer; write ``out_path`` (``path``, ``status``, one column per scorer column) and
    return it. Every scorer names its output columns in a ``columns`` attribute.

    ``status`` is ``ok``, ``no_landmarks`` or the read/alignment error; qualities are NaN
    for rows that are not ok. Finished chunks are kept beside the output until the end.
    """
    out = Path(out_path)
    files = row_files(rows)
    lms = landmarks_array(rows)
    has_face = np.isfinite(lms).all(axis=(1, 2))
    names = [c for sc in scorers for c in sc.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"scorers produce duplicate columns: {names}")

    def chunk(lo: int, hi: int, bar: tqdm) -> pd.DataFrame:
        values = {n: np.full(hi - lo, np.nan) for n in names}
        status = np.where(has_face[lo:hi], "ok", "no_landmarks").astype(object)
        todo = np.flatnonzero(has_face[lo:hi])

        def put(idx: np.ndarray, batch: torch.Tensor) -> None:
            where = todo[idx]
            for scorer in scorers:
                for n, v in scorer(batch).items():
                    values[n][where] = v

        messages = map_aligned([files[lo + i] for i in todo], lms[lo + todo], template, put,
                               batch_size=batch_size, workers=workers, bar=bar)
        for i, msg in enumerate(messages):
            if msg:
                status[todo[i]] = msg
        bar.update((hi - lo) - todo.size)
        return pd.DataFrame({"path": rows["path"].iloc[lo:hi].to_numpy(), "status": status,
                             **values})

    def merge(shard_files: list[Path]) -> pd.DataFrame:
        shards = [pd.read_parquet(f) for f in shard_files]
        table = (pd.concat(shards, ignore_index=True) if shards
                 else pd.DataFrame(columns=["path", "status", *names]))
        write_parquet_atomic(table, out)
        return table

    table = build_in_shards(out, len(rows), chunk_size, chunk, merge, desc=f"quality {out.stem}",
                            signature=signature, progress=progress)
    for r in table[~table["status"].isin(["ok", "no_landmarks"])].itertuples():
        log.warning("quality %s: %s", r.path, r.status)
    return table
