"""What every trial trains and validates on: the distill stage's labelled rows, a seeded
train subset, whole validation identities, their detector landmarks, the teacher cache.

Only the ``val`` split of the training data sets is scored (never ``test``, the
benchmarks); the rows are the distill stage's own, so a sweep and ``distill@<run>`` read
the same images with the same labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aikd.config import section
from aikd.errors import UsageError
from aikd.tuning.settings import TuneSettings


@dataclass
class SweepData:
    """What every trial trains and validates on (shipped to the trials once)."""

    train: pd.DataFrame  # root (absolute), path, x0..y4, quality
    val: pd.DataFrame  # + identity
    val_landmarks: dict[str, pd.DataFrame]  # detector -> path, x0..y4, status
    teacher_cache: dict[str, np.ndarray] | None
    info: dict[str, Any] = field(default_factory=dict)


def _need(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}; make it with {fix}")
    return path


def sample_validation(val: pd.DataFrame, n: int, per_identity: int, seed: int) -> pd.DataFrame:
    """Up to ``n`` val rows from identities with >= 2 images, at most ``per_identity`` each,
    whole identities in a seeded order (every image then takes part in mated pairs)."""
    rng = np.random.default_rng([int(seed), 23])
    counts = val["identity"].value_counts()
    ids = np.array(sorted(counts.index[counts >= 2]))
    if ids.size == 0:
        raise UsageError("no validation identity has two labelled images: no mated pairs; "
                         "give the data sets a val split with repeated identities")
    picked: list[pd.DataFrame] = []
    total = 0
    for ident in ids[rng.permutation(ids.size)]:
        group = val[val["identity"] == ident]
        if len(group) > per_identity:
            group = group.iloc[np.sort(rng.choice(len(group), per_identity, replace=False))]
        take = min(len(group), n - total)
        if take < 2:
            break
        picked.append(group.iloc[:take])
        total += take
        if total >= n:
            break
    return pd.concat(picked).sort_values("path").reset_index(drop=True)


def sweep_datasets(params: Mapping[str, Any], settings: TuneSettings) -> list[str]:
    return list(settings.datasets or section(params, "labels")["datasets"])


def labelled_sweep_rows(params: Mapping[str, Any], settings: TuneSettings
                        ) -> tuple[pd.DataFrame, int]:
    """The distill stage's labelled rows (training-detector landmarks, finite labels) of
    the sweep's data sets, roots absolute for the Ray workers; and the unlabelled count."""
    from aikd.distill.stage import labelled_rows
    from aikd.paths import labels_path, landmarks_path, manifest_path

    datasets = sweep_datasets(params, settings)
    ref = section(params, "landmarks")["training_detector"]
    method = settings.label_method
    _need(labels_path(params, method), f"labels of {method!r}", f"dvc repro labels@{method}")
    for ds in datasets:
        _need(manifest_path(params, ds), f"{ds} manifest", f"dvc repro manifest@{ds}")
        _need(landmarks_path(params, ds, ref), f"{ds} {ref} landmarks", "dvc repro landmarks")
    sweep_params = {**params, "labels": {**section(params, "labels"), "datasets": datasets}}
    rows, unlabelled = labelled_rows(sweep_params, method)
    rows["root"] = [str(Path(r).resolve()) for r in rows["root"]]
    rows["quality"] = rows["quality"].astype(float)
    return rows, unlabelled


def detector_tables(params: Mapping[str, Any], settings: TuneSettings, val: pd.DataFrame,
                    info: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Each objective detector's landmarks of the val rows; counts the faces it found."""
    from aikd.paths import landmarks_path

    tables: dict[str, pd.DataFrame] = {}
    for det in settings.detectors:
        parts = [pd.read_parquet(_need(landmarks_path(params, ds, det), f"{ds} {det} landmarks",
                                       f"{det} in landmarks.detectors and dvc repro landmarks"))
                 for ds in sweep_datasets(params, settings)]
        table = pd.concat(parts, ignore_index=True)
        tables[det] = table[table["path"].isin(val["path"])].reset_index(drop=True)
        found = int((tables[det].get("status", pd.Series("ok", index=tables[det].index))
                     == "ok").sum())
        info[f"val_found_{det}"] = found
    return tables


def teacher_cache(params: Mapping[str, Any], settings: TuneSettings,
                  paths: set[str]) -> dict[str, np.ndarray]:
    """The teacher's embeddings of ``paths`` from the embed stage's files."""
    from aikd.distill.teacher import read_teacher_cache
    from aikd.paths import embeddings_path

    ref = section(params, "landmarks")["training_detector"]
    files = [_need(embeddings_path(params, ds, ref), f"{ds} teacher embeddings",
                   "dvc repro embed (or set tune.teacher_cache: false)")
             for ds in sweep_datasets(params, settings)]
    return {p: v for p, v in read_teacher_cache(files).items() if p in paths}


def load_sweep_data(params: Mapping[str, Any], settings: TuneSettings) -> SweepData:
    """Train subset, validation identities, detector tables and teacher cache of a sweep.

    The same rows as the distill stage (``aikd.distill.stage.labelled_rows``: manifest
    minus evaluation-pair images, training-detector landmarks, finite labels), ``train``
    split to train, ``val`` to validate.
    """
    rows, unlabelled = labelled_sweep_rows(params, settings)
    train_all = rows[rows["split"] == "train"].reset_index(drop=True)
    val_all = rows[rows["split"] == "val"].reset_index(drop=True)
    datasets = sweep_datasets(params, settings)
    if train_all.empty or val_all.empty:
        raise UsageError(f"no labelled train or val rows in {datasets}; check labels.splits "
                         f"and the labels of {settings.label_method!r}")
    info: dict[str, Any] = {"datasets": datasets, "label_method": settings.label_method,
                            "unlabelled": unlabelled}
    rng = np.random.default_rng([settings.seed, 29])
    n_train = min(settings.train_images, len(train_all))
    train = train_all.iloc[np.sort(rng.choice(len(train_all), n_train, replace=False))]
    train = train.reset_index(drop=True)
    val = sample_validation(val_all, settings.val_images, settings.val_per_identity,
                            settings.seed)
    tables = detector_tables(params, settings, val, info)
    cache = None
    if settings.teacher_cache:
        cache = teacher_cache(params, settings, set(train["path"]) | set(val["path"]))
    info.update(train_images=len(train), train_available=len(train_all), val_images=len(val),
                val_available=len(val_all), val_identities=int(val["identity"].nunique()))
    return SweepData(train, val, tables, cache, info)
