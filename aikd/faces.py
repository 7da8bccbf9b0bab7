"""Aligned faces in batches: the one path from image files and landmarks to network input.

Every stage that runs a network on faces (embed, labels, quality, distill's teacher and
validation, scoring) decodes each image, aligns it to a template from five landmarks and
batches the crops here. Batches travel as uint8 NHWC (4x smaller than float from the
worker processes); :func:`to_float_input` makes the float32 NCHW input the backbones take.
An image that cannot be read or aligned is reported, not raised, so one bad file does
not stop a run over thousands.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from aikd.align import align_to_template
from aikd.data.images import ImageReadError, read_rgb
from aikd.landmarks.base import POINT_COLUMNS

#: (indices into the inputs, the batch of the faces that aligned or None, failures as
#: (index, message)).
FaceBatch = tuple[np.ndarray, torch.Tensor | None, list[tuple[int, str]]]


def landmarks_array(rows: pd.DataFrame) -> np.ndarray:
    """(N, 5, 2) landmarks from `x0, y0, ..., x4, y4` columns."""
    return rows[POINT_COLUMNS].to_numpy(dtype=np.float64).reshape(-1, 5, 2)


def row_files(rows: pd.DataFrame) -> list[str]:
    """The image file of each row: ``root / path``."""
    return [str(Path(r) / p) for r, p in zip(rows["root"], rows["path"], strict=True)]


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


def iter_faces(
    files: Sequence[str], landmarks: np.ndarray, template: str, *, batch_size: int = 64,
    workers: int = 0, flip: bool = False,
) -> Iterator[FaceBatch]:
    """Yield (indices, uint8 NHWC batch or None, failures) of faces aligned from landmarks,
    decoding in ``workers`` processes (0: in this one)."""
    loader = DataLoader(
        AlignedFaces(files, landmarks, template, flip), batch_size=batch_size,
        num_workers=workers, collate_fn=list,
    )
    for items in loader:
        good = [(i, f) for i, f, _ in items if f is not None]
        bad = [(i, msg) for i, f, msg in items if f is None]
        batch = torch.from_numpy(np.stack([f for _, f in good])) if good else None
        yield np.array([i for i, _ in good], dtype=np.int64), batch, bad


def to_float_input(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC batch -> float32 NCHW in [0, 255], the backbones' input contract.

    The permuted view of NHWC memory already is a channels-last NCHW tensor, so the
    channels-last path costs no copy beyond the float conversion.
    """
    out = batch.float().permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()


def iter_aligned(
    files: Sequence[str], landmarks: np.ndarray, template: str, *, batch_size: int = 64,
    workers: int = 1, flip: bool = False,
) -> Iterator[FaceBatch]:
    """:func:`iter_faces` with each batch as float32 NCHW channels-last network input (the
    faster layout for CPU convolutions)."""
    for idx, batch, bad in iter_faces(files, landmarks, template, batch_size=batch_size,
                                      workers=workers, flip=flip):
        yield idx, None if batch is None else to_float_input(batch, channels_last=True), bad


def map_aligned(
    files: Sequence[str], landmarks: np.ndarray, template: str,
    fn: Callable[[np.ndarray, torch.Tensor], None], *, batch_size: int, workers: int,
    bar: tqdm | None = None,
) -> list[str]:
    """Call ``fn(indices, batch)`` on every batch of :func:`iter_aligned`; return each
    face's failure message ("" when it aligned), advancing ``bar`` face by face."""
    messages = [""] * len(files)
    start, done = time.perf_counter(), 0
    for idx, batch, bad in iter_aligned(files, landmarks, template, batch_size=batch_size,
                                        workers=workers):
        for i, msg in bad:
            messages[i] = msg
        if batch is not None:
            fn(idx, batch)
        done += len(idx) + len(bad)
        if bar is not None:
            bar.update(len(idx) + len(bad))
            bar.set_postfix(img_s=f"{done / max(time.perf_counter() - start, 1e-9):.1f}")
    return messages


__all__ = ["AlignedFaces", "FaceBatch", "iter_aligned", "iter_faces", "landmarks_array",
           "map_aligned", "row_files", "to_float_input"]
