"""Training data for AI-KD: labelled rows, label normalisation, aligned/misaligned pairs.

A *row* is one image: ``root``, ``path``, reference landmarks ``x0, y0 .. x4, y4`` and a
pseudo quality label ``quality`` (plus ``identity`` for validation pairs). The dataset
returns the reference-aligned face x (the teacher's input), the face aligned from jittered
landmarks x̂ (the student's input) and the normalised label.

Determinism: the jitter of sample i in epoch e is drawn from a generator seeded with
(seed, e, i) only, so it is fresh every epoch, never accumulates (the landmarks are never
modified) and does not depend on the number of DataLoader workers, processes or on a
resume in the middle of an epoch. The sample order is a seeded permutation per epoch,
sharded across processes by :class:`EpochStreamSampler`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from aikd.align import align_to_template
from aikd.data.images import ImageReadError, read_rgb
from aikd.faces import landmarks_array, row_files
from aikd.landmarks.base import POINT_COLUMNS
from aikd.transforms import flip_pipeline, jitter_landmarks, jitter_pipeline

log = logging.getLogger(__name__)

ROW_COLUMNS = ["root", "path", *POINT_COLUMNS]

#: Epoch key of the fixed validation jitter: never a training epoch, so validation always
#: sees the same misalignments and they differ from every training draw.
VAL_EPOCH = 1_000_003


class LabelError(ValueError):
    """Quality labels that cannot be trained on (missing rows, NaN, duplicates)."""


# --------------------------------------------------------------------------- rows and labels


def check_rows(rows: pd.DataFrame, what: str = "rows") -> pd.DataFrame:
    """Refuse rows without the needed columns, with duplicate paths or non-finite landmarks.

    Paths key the teacher cache and the labels, so two rows with one path would silently
    share an embedding; the caller must make them unique (e.g. prefix the data set).
    """
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing} (need {ROW_COLUMNS})")
    dup = rows["path"][rows["path"].duplicated()]
    if len(dup):
        raise ValueError(
            f"{what}: {len(dup)} duplicate paths (first: {dup.head(3).tolist()}); "
            "paths must be unique across data sets"
        )
    pts = rows[POINT_COLUMNS].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{what}: {int(bad.sum())} rows with missing landmarks "
            f"(first: {rows['path'][bad].head(3).tolist()}); drop images without a detection"
        )
    return rows.reset_index(drop=True)


def read_labels(labels: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A label table ``path, quality`` from a parquet/CSV file or a DataFrame."""
    if isinstance(labels, pd.DataFrame):
        df, source = labels, "labels"
    else:
        p = Path(labels)
        if not p.is_file():
            raise LabelError(f"label file not found: {p}")
        df = pd.read_csv(p) if p.suffix.lower() == ".csv" else pd.read_parquet(p)
        source = str(p)
    missing = {"path", "quality"} - set(df.columns)
    if missing:
        raise LabelError(f"{source}: missing columns {sorted(missing)} (need path, quality)")
    dup = df["path"][df["path"].duplicated()]
    if len(dup):
        raise LabelError(f"{source}: {len(dup)} duplicate paths (first: {dup.head(3).tolist()})")
    return df[["path", "quality"]]


def attach_labels(
    rows: pd.DataFrame, labels: str | Path | pd.DataFrame, what: str = "train"
) -> pd.DataFrame:
    """Add the ``quality`` column from ``labels``; refuse if any row lacks a finite label.

    Training on a silently reduced or NaN-poisoned set would give a model that looks fine
    and is not, so every row must have a label; the message counts and names the gaps.
    """
    table = read_labels(labels)
    merged = rows.drop(columns=["quality"], errors="ignore").merge(table, on="path", how="left")
    return check_labels(merged, what)


def check_labels(rows: pd.DataFrame, what: str = "train") -> pd.DataFrame:
    """Refuse rows whose ``quality`` is absent, missing or not finite."""
    if "quality" not in rows.columns:
        raise LabelError(f"{what} rows have no 'quality' column; pass labels=")
    q = pd.to_numeric(rows["quality"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(q)
    if bad.any():
        first = rows["path"][bad].head(5).tolist()
        raise LabelError(
            f"{what}: {int(bad.sum())} of {len(rows)} rows have no finite quality label "
            f"(missing from the label file, NaN or inf); first: {first}"
        )
    out = rows.copy()
    out["quality"] = q
    return out


def load_rows(
    manifest: str | Path | pd.DataFrame,
    landmarks: str | Path | pd.DataFrame,
    split: str | Sequence[str],
) -> pd.DataFrame:
    """Rows of one or more manifest splits joined with a landmark table (status ``ok`` only)."""
    man = manifest if isinstance(manifest, pd.DataFrame) else pd.read_parquet(manifest)
    lms = landmarks if isinstance(landmarks, pd.DataFrame) else pd.read_parquet(landmarks)
    splits = [split] if isinstance(split, str) else list(split)
    man = man[man["split"].isin(splits)]
    if "status" in lms.columns:
        lms = lms[lms["status"] == "ok"]
    keep = ["path", *POINT_COLUMNS]
    return man.merge(lms[keep], on="path", how="inner").reset_index(drop=True)


def landmarks_for(rows: pd.DataFrame, table: pd.DataFrame | None) -> np.ndarray:
    """(N, 5, 2) landmarks of ``rows`` from ``table`` (path, x0..y4[, status]), else the
    rows' own; NaN where the table has no usable detection (status other than ``ok``)."""
    if table is None:
        return landmarks_array(rows)
    if "status" in table.columns:
        table = table[table["status"] == "ok"]
    table = table.drop_duplicates("path")[["path", *POINT_COLUMNS]]
    merged = rows[["path"]].merge(table, on="path", how="left")
    return landmarks_array(merged)


def filter_readable(
    rows: pd.DataFrame, *, threads: int = 2, template: str = "dlib150"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(usable rows, bad rows with a ``message``): decode every image and check landmarks.

    Done once at construction so a corrupt file is skipped and reported instead of
    crashing a worker half-way through a run; cv2 releases the GIL, so threads help.
    """
    files = row_files(rows)
    lms = landmarks_array(rows)

    def probe(i: int) -> str:
        try:
            align_to_template(read_rgb(files[i]), lms[i], template)
        except (ImageReadError, ValueError) as exc:
            return str(exc)
        return ""

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        messages = list(pool.map(probe, range(len(rows))))
    bad_mask = np.array([m != "" for m in messages], dtype=bool)
    bad = rows.loc[bad_mask, ["path"]].assign(message=[m for m in messages if m])
    for r in bad.itertuples():
        log.warning("skipping %s: %s", r.path, r.message)
    return rows.loc[~bad_mask].reset_index(drop=True), bad.reset_index(drop=True)


# --------------------------------------------------------------------------- label normalisation


@dataclass
class LabelNorm:
    """Monotone map between raw pseudo labels and the regression target, fitted on train.

    * ``rank``: empirical CDF of the training labels (piecewise linear through 1001
      quantiles) -> targets uniform in [0, 1] whatever the method's scale (SER-FIQ's
      values crowd near 1, CR-FIQA's are unbounded); pAUC only needs the order.
    * ``minmax``: (q - min) / (max - min) of the training labels.
    * ``none``: identity.

    It is stored in the model file, so scores of new images map back to the label scale
    with :meth:`inverse` consistently (values beyond the training range are clamped by
    ``rank``, extrapolated linearly by ``minmax``).
    """

    kind: str = "none"
    xs: list[float] = field(default_factory=list)  # raw-label knots (rank), [min, max] (minmax)
    ys: list[float] = field(default_factory=list)  # target knots (rank)

    @classmethod
    def fit(cls, values: Sequence[float] | np.ndarray, kind: str) -> LabelNorm:
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0 or not np.isfinite(v).all():
            raise LabelError("label normalisation needs at least one finite label")
        if kind == "none":
            return cls("none")
        if kind == "minmax":
            return cls("minmax", [float(v.min()), float(v.max())], [0.0, 1.0])
        if kind != "rank":
            raise ValueError(f"unknown label_norm {kind!r}; expected rank, minmax or none")
        grid = np.linspace(0.0, 1.0, min(1001, max(2, v.size)))
        qs = np.quantile(v, grid)
        # Ties (repeated labels) must map to one target: average their grid positions.
        xs, inv = np.unique(qs, return_inverse=True)
        ys = np.bincount(inv, weights=grid) / np.bincount(inv)
        if xs.size == 1:  # every label equal: a constant target
            ys = np.array([0.5])
        return cls("rank", xs.tolist(), ys.tolist())

    def transform(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if self.kind == "none":
            return v.copy()
        if self.kind == "minmax":
            lo, hi = self.xs
            return (v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5)
        if len(self.xs) == 1:
            return np.full_like(v, self.ys[0])
        return np.interp(v, self.xs, self.ys)

    def inverse(self, targets: Sequence[float] | np.ndarray) -> np.ndarray:
        t = np.asarray(targets, dtype=np.float64)
        if self.kind == "none":
            return t.copy()
        if self.kind == "minmax":
            lo, hi = self.xs
            return t * (hi - lo) + lo
        if len(self.xs) == 1:
            return np.full_like(t, self.xs[0])
        return np.interp(t, self.ys, self.xs)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "xs": list(self.xs), "ys": list(self.ys)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelNorm:
        return cls(str(d["kind"]), [float(x) for x in d["xs"]], [float(y) for y in d["ys"]])


# --------------------------------------------------------------------------- dataset


def jitter_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """A 32-bit seed that depends only on (seed, epoch, sample index); ``stream`` > 0 gives
    an independent one for another random choice of the same sample (the flip)."""
    key = [int(seed), int(epoch), int(index)] + ([int(stream)] if stream else [])
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def _hwc(face: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 tensor: 4x smaller than float to ship from workers, and NHWC batches
    become channels-last NCHW by a free permute (a uint8 permute-copy costs ~9 ms/face)."""
    return torch.from_numpy(np.ascontiguousarray(face))


class DistillDataset(Dataset):
    """(x, x̂, q) for AI-KD. Items are addressed by ``(epoch, index)`` (or a bare index).

    ``teacher_embeddings`` (N, d), when given, is returned as ``e`` instead of computing
    it from x; then x itself is not built unless ``with_x``. With ``max_shift == 0`` x̂ is
    x exactly (the jitter pipeline is skipped, not run with a zero range). ``hflip``: the
    probability that x̂ (only x̂: the teacher's target stays that of x) is mirrored, drawn
    per (seed, epoch, index) like the jitter.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        *,
        template: str,
        max_shift: float,
        units: str = "iod",
        seed: int = 0,
        targets: np.ndarray | None = None,
        teacher_embeddings: np.ndarray | None = None,
        with_x: bool = True,
        hflip: float = 0.0,
    ) -> None:
        self.files = row_files(rows)
        self.landmarks = landmarks_array(rows)
        self.landmarks.setflags(write=False)  # jitter must never accumulate in place
        self.template = template
        self.max_shift = float(max_shift)
        self.units = units
        self.seed = int(seed)
        n = len(self.files)
        self.targets = (
            np.zeros(n, np.float32) if targets is None else np.asarray(targets, np.float32)
        )
        if self.targets.shape != (n,):
            raise ValueError(f"targets has shape {self.targets.shape}, expected ({n},)")
        self.teacher = teacher_embeddings
        if self.teacher is not None and self.teacher.shape[0] != n:
            raise ValueError(f"teacher_embeddings has {self.teacher.shape[0]} rows, expected {n}")
        self.with_x = with_x or teacher_embeddings is None
        self._pipeline = jitter_pipeline(self.max_shift, units, seed=0) if max_shift > 0 else None
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
        self._flip = flip_pipeline(hflip) if hflip > 0 else None

    def __len__(self) -> int:
        return len(self.files)

    def jittered_landmarks(self, image: np.ndarray, epoch: int, index: int) -> np.ndarray:
        """The landmarks of sample ``index`` as jittered in ``epoch`` (a fresh array)."""
        lm = self.landmarks[index]
        if self._pipeline is None:
            return lm.copy()
        self._pipeline.set_random_seed(jitter_seed(self.seed, epoch, index))
        return jitter_landmarks(self._pipeline, image, lm)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (0, key) if isinstance(key, int | np.integer) else key
        image = read_rgb(self.files[index])
        item: dict[str, Any] = {
            "index": int(index),
            "epoch": int(epoch),
            "q": torch.tensor(self.targets[index]),
        }
        x = None
        if self.with_x or self._pipeline is None:
            x, _ = align_to_template(image, self.landmarks[index], self.template)
        if self._pipeline is None:
            x_hat = x
        else:
            x_hat, _ = align_to_template(
                image, self.jittered_landmarks(image, epoch, index), self.template
            )
        if self._flip is not None:
            self._flip.set_random_seed(jitter_seed(self.seed, epoch, index, stream=1))
            x_hat = self._flip(image=x_hat)["image"]
        item["x_hat"] = _hwc(x_hat)
        if self.with_x:
            item["x"] = _hwc(x)
        if self.teacher is not None:
            item["e"] = torch.from_numpy(np.asarray(self.teacher[index], dtype=np.float32))
        return item


# --------------------------------------------------------------------------- sampling


class EpochStreamSampler(Sampler):
    """The whole run's sample stream, ``(epoch, index)`` items, one process's share.

    Epoch e is a permutation seeded by (seed, e), cut into global batches of
    ``batch_size * world_size`` (an incomplete last one is dropped, so every epoch has the
    same batches on every process); process ``rank`` takes the rank-th slice of each. The
    stream starts at micro-batch ``start_batch`` without touching the skipped images, which
    makes a resume land exactly where the interrupted run stopped.
    """

    def __init__(
        self,
        n: int,
        *,
        batch_size: int,
        total_batches: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.total_batches = int(total_batches)
        self.start_batch = int(start_batch)
        self.batches_per_epoch = self.n // (self.batch_size * self.world_size)
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{self.n} training images cannot fill one global batch of "
                f"{self.batch_size} x {self.world_size} processes"
            )

    def epoch_of(self, batch: int) -> int:
        return batch // self.batches_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.n)

    def __len__(self) -> int:
        return max(0, self.total_batches - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        gb = self.batch_size * self.world_size
        epoch, perm = -1, np.empty(0, dtype=np.int64)
        for b in range(self.start_batch, self.total_batches):
            e, j = divmod(b, self.batches_per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            lo = j * gb + self.rank * self.batch_size
            for i in perm[lo : lo + self.batch_size]:
                yield (e, int(i))


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: derive numpy/python seeds from torch's per-worker seed.

    The jitter is seeded per sample anyway; this covers any other library randomness.
    """
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack items with numpy: torch.stack of uint8 faces runs through OpenMP and took
    ~58 ms per batch of 32 (vs 1.5 ms) in the trainer process of a busy 2-core box."""
    out: dict[str, torch.Tensor] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if isinstance(vals[0], torch.Tensor):
            out[key] = torch.from_numpy(np.stack([v.numpy() for v in vals]))
        else:
            out[key] = torch.from_numpy(np.asarray(vals))
    return out
