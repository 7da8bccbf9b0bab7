"""Scoring raw, unaligned photos: read -> detect 5 landmarks -> align -> distilled student.

This is the inference path behind ``aikd score`` and the registered MLflow model
(:mod:`aikd.registry`): `inputs` (what to read), `scorer` (`QualityScorer`, one batch
at a time), `backends` (torch or ONNX for the student), `load` (which model) and
`output` (the CSV).

Every image yields one row, whatever happens to it: ``status`` is ``ok``, ``unreadable``
(missing/corrupt file), ``no_face`` (the detector found none), ``error`` (the detector
failed or returned unusable points) or ``bad_landmarks`` (landmarks given by the caller
cannot be aligned); ``quality`` is NaN unless ``ok``. A bad file never stops a run.

The names below are imported on first use, so building the CLI's parser from the
constants here does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

DEFAULT_DETECTOR = "retinaface"
DEFAULT_BATCH_SIZE = 32
#: Student runtimes (see `aikd.scoring.backends`).
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx")

_LAZY: dict[str, str] = {
    "export_onnx": "backends",
    "onnx_export_available": "backends",
    "IMAGE_EXTENSIONS": "inputs",
    "decode_image_bytes": "inputs",
    "list_images": "inputs",
    "is_mlflow_uri": "load",
    "load_scorer": "load",
    "ScoreSummary": "output",
    "score_to_csv": "output",
    "SCORE_COLUMNS": "scorer",
    "SCORE_STATUSES": "scorer",
    "QualityScorer": "scorer",
}

__all__ = ["BACKENDS", "DEFAULT_BATCH_SIZE", "DEFAULT_DETECTOR", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aikd.scoring' has no attribute {name!r}")
    return getattr(importlib.import_module(f"aikd.scoring.{module}"), name)
