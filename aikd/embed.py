"""Aligned faces -> cached FR embeddings, reused by labels, evaluation and training.

The teacher's embedding of a properly aligned image never changes, so it is computed once
per (data set, detector, backbone) and stored as parquet (`path`, `embedding`). The stage
is resumable: finished chunks are kept as shards and skipped on a rerun.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from aikd.align import align_to_template
from aikd.config import section
from aikd.data.images import ImageReadError, read_rgb
from aikd.data.io import read_vectors, vectors_table, write_parquet_atomic
from aikd.landmarks.base import POINT_COLUMNS
from aikd.paths import embeddings_path, landmarks_path, manifest_path

log = logging.getLogger(__name__)



def landmarks_array(rows: pd.DataFrame) -> np.ndarray:
    """(N, 5, 2) landmarks from `x0, y0, ..., x4, y4` columns."""
    return rows[POINT_COLUMNS].to_numpy(dtype=np.float64).reshape(-1, 5, 2)


class AlignedFaces(Dataset):
    """Images aligned to a template from given landmarks; failures come back as messages."""

    def __init__(self, files: Sequence[str], landmarks: np.ndarray, template: str,
                 flip: bool = False) -> None:
        self.files = list(files)
        self.landmarks = np.asarray(landmarks, dtype=np.float64)
        self.template = template
        self.flip = flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            face, _ = align_to_template(read_rgb(self.files[i]), self.landmarks[i], self.template)
        except (ImageReadError, ValueError) as exc:
            return i, None, str(exc)
        if self.flip:
            face = face[:, ::-1]
        return i, np.ascontiguousarray(face), ""


def _collate(items: list[tuple[int, np.ndarray | None, str]]):
    return items


def to_tensor(faces: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 faces -> float32 NCHW in [0, 255] (the backbones' input contract)."""
    arr = np.stack(faces).astype(np.float32)
    # NHWC memory viewed as NCHW is channels-last, the faster layout for CPU convolutions.
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def iter_aligned(
    files: Sequence[str], landmarks: np.ndarray, template: str, *, batch_size: int = 64,
    workers: int = 1, flip: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """Yield (indices, NCHW batch, failures) over aligned faces, decoding in worker processes."""
    loader = DataLoader(
        AlignedFaces(files, landmarks, template, flip), batch_size=batch_size,
        num_workers=workers, collate_fn=_collate,
    )
    for items in loader:
        good = [(i, f) for i, f, _ in items if f is not None]
        bad = [(i, msg) for i, f, msg in items if f is None]
        batch = to_tensor([f for _, f in good]) if good else None
        yield [i for i, _ in good], batch, bad


@torch.inference_mode()
def embed_faces(model: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
    return model(batch).float().cpu().numpy()


def embed_table(
    model: torch.nn.Module,
    rows: pd.DataFrame,
    out_path: str | Path,
    *,
    batch_size: int = 64,
    chunk_size: int = 2048,
    workers: int = 1,
    progress: bool = True,
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Embed every row (`root`, `path`, x0..y4) aligned to the model's template.

    Returns (meta with `path`, embeddings (N, d), failures with `path`, `message`), and
    writes `out_path` (parquet). Chunks finished earlier (shards beside the output) are
    reused, so an interrupted run resumes.
    """
    out = Path(out_path)
    shard_dir = out.with_name(out.name + ".shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    files = [str(Path(r) / p) for r, p in zip(rows["root"], rows["path"], strict=True)]
    lms = landmarks_array(rows)
    paths = rows["path"].tolist()
    n_chunks = (len(rows) + chunk_size - 1) // chunk_size
    bar = tqdm(total=len(rows), desc=f"embed {out.stem}", unit="img", disable=not progress)
    d = model.embedding_dim
    for c in range(n_chunks):
        shard = shard_dir / f"{c:05d}.parquet"
        lo, hi = c * chunk_size, min((c + 1) * chunk_size, len(rows))
        if shard.is_file():  # finished before an interruption
            bar.update(hi - lo)
            continue
        vectors = np.full((hi - lo, d), np.nan, dtype=np.float32)
        messages = [""] * (hi - lo)
        start = time.perf_counter()
        for idx, batch, bad in iter_aligned(files[lo:hi], lms[lo:hi], model.template,
                                            batch_size=batch_size, workers=workers):
            for i, msg in bad:
                messages[i] = msg
            if batch is not None:
                vectors[idx] = embed_faces(model, batch)
            bar.update(len(idx) + len(bad))
            bar.set_postfix(img_s=f"{(bar.n - lo) / max(time.perf_counter() - start, 1e-9):.0f}")
        write_parquet_atomic(vectors_table(paths[lo:hi], vectors, message=messages), shard)
    bar.close()
    tables = [pq.read_table(shard_dir / f"{c:05d}.parquet") for c in range(n_chunks)]
    merged = pa.concat_tables(tables) if tables else vectors_table(
        [], np.zeros((0, d), np.float32), message=[]
    )
    ok = pa.compute.equal(merged.column("message"), "")
    failed = merged.filter(pa.compute.invert(ok)).select(["path", "message"]).to_pandas()
    merged = merged.filter(ok).drop(["message"])
    write_parquet_atomic(merged, out)
    shutil.rmtree(shard_dir)
    meta, vectors = read_vectors(out)
    for r in failed.itertuples():
        log.warning("embed %s: %s", r.path, r.message)
    return meta, vectors, failed


def embed_stage(params: Mapping[str, Any], dataset: str, detector: str) -> Path:
    """DVC stage ``embed@<dataset>-<detector>``: embed every face a detector found, aligned
    to the backbone's template (resumable)."""
    import mlflow

    from aikd.models import load_backbone
    from aikd.tracking import stage_run

    cfg = section(params, "embed")
    torch.set_num_threads(int(cfg.get("threads", 2)))
    manifest = pd.read_parquet(manifest_path(params, dataset))
    marks = pd.read_parquet(landmarks_path(params, dataset, detector))
    rows = manifest[["root", "path"]].merge(marks[marks["status"] == "ok"], on="path")
    model = load_backbone(cfg["backbone"]).eval().to(memory_format=torch.channels_last)
    out = embeddings_path(params, dataset, detector)
    meta, vectors, failed = embed_table(
        model, rows, out, batch_size=int(cfg.get("batch_size", 64)),
        workers=int(cfg.get("workers", 1)),
    )
    failed.to_csv(out.with_name(out.stem + "_failures.csv"), index=False)
    with stage_run("embed", params, run_name=f"embed-{dataset}-{detector}",
                   log_params={"dataset": dataset, "detector": detector, **cfg}):
        mlflow.log_metrics({"embed.images": len(meta), "embed.failures": len(failed),
                            "embed.skipped_no_landmarks": int((marks["status"] != "ok").sum())})
    print(f"embed {dataset}/{detector}: {len(meta)} faces, {len(failed)} failures")
    return out
