"""Alignment-Invariant Knowledge Distillation (AI-KD): train and use a quality model.

A frozen teacher FR network embeds the properly aligned face x; a student (a copy of the
same network plus an MLP head) sees the face aligned from jittered landmarks x̂ and is
trained on ``w * (1 - cos(e, ê)) + (1 - w) * L_q(q, q̂)`` so its quality estimate does
not depend on which detector cropped the face. ``max_shift=0, w=0`` is the plain
quality-regression baseline. See :mod:`aikd.distill.train` for the training API and
docs/distillation.md for the measured defaults.

Modules: ``config`` (DistillConfig), ``data`` (rows, labels, jitter, sampler), ``model``
(teacher, student, saved quality model), ``loss``, ``teacher`` (teacher embeddings),
``validation``, ``checkpoints``, ``prepare`` (what a run builds before its first step),
``train`` (the loop), ``stage`` (the DVC stage) and ``__main__`` (``accelerate launch``).

The training names (``train_distill``, ``validate_quality``, ...) are imported on first
use: they pull in Accelerate and MLflow, which scoring with a saved model does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

from aikd.distill.config import DistillConfig
from aikd.distill.data import (
    DistillDataset,
    EpochStreamSampler,
    LabelError,
    LabelNorm,
    attach_labels,
    filter_readable,
    load_rows,
    read_labels,
)
from aikd.distill.loss import AIKDLoss, LossTerms
from aikd.distill.model import (
    AIKDStudent,
    FrozenTeacher,
    QualityHead,
    QualityModel,
    backbone_stages,
    build_models,
    load_quality_model,
    predict_quality,
    save_quality_model,
    select_trainable,
)

#: Names imported on first use, and the module that holds each.
_LAZY = {
    "TrainResult": "aikd.distill.train",
    "train_distill": "aikd.distill.train",
    "read_teacher_cache": "aikd.distill.teacher",
    "teacher_embed_rows": "aikd.distill.teacher",
    "build_validation_pairs": "aikd.distill.validation",
    "validate_quality": "aikd.distill.validation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aikd.distill' has no attribute {name!r}")


__all__ = [
    "AIKDLoss",
    "AIKDStudent",
    "DistillConfig",
    "DistillDataset",
    "EpochStreamSampler",
    "FrozenTeacher",
    "LabelError",
    "LabelNorm",
    "LossTerms",
    "QualityHead",
    "QualityModel",
    "attach_labels",
    "backbone_stages",
    "build_models",
    "filter_readable",
    "load_quality_model",
    "load_rows",
    "predict_quality",
    "read_labels",
    "save_quality_model",
    "select_trainable",
    *_LAZY,
]
