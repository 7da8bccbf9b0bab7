"""The images a quality model may learn from, shared by the labels and distill stages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from aikd.config import section
from aikd.paths import landmarks_path, manifest_path


def training_detector(params: Mapping[str, Any]) -> str:
    """The detector whose landmarks align the training images (``landmarks.training_detector``)."""
    return str(section(params, "landmarks")["training_detector"])


def training_rows(params: Mapping[str, Any]) -> pd.DataFrame:
    """Images the quality model may learn from: the ``labels.splits`` (train, val) of the
    training data sets, with their training-detector landmarks (`ok` rows only). Splits are
    per person over all data sets (docs/splits.md), so these rows hold no test person."""
    cfg = section(params, "labels")
    detector = training_detector(params)
    frames = []
    for ds in cfg["datasets"]:
        manifest = pd.read_parquet(manifest_path(params, ds))
        marks = pd.read_parquet(landmarks_path(params, ds, detector))
        rows = manifest[manifest["split"].isin(cfg["splits"])]
        rows = rows.merge(marks[marks["status"] == "ok"].drop(columns=["dataset"]), on="path")
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)
