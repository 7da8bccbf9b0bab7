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

from aikd.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "config": (
        "DistillConfig",
    ),
    "data": (
        "DistillDataset",
        "EpochStreamSampler",
        "LabelError",
        "LabelNorm",
        "attach_labels",
        "filter_readable",
        "load_rows",
        "read_labels",
    ),
    "loss": (
        "AIKDLoss",
        "LossTerms",
    ),
    "model": (
        "AIKDStudent",
        "FrozenTeacher",
        "QualityHead",
        "QualityModel",
        "backbone_stages",
        "build_models",
        "load_quality_model",
        "predict_quality",
        "save_quality_model",
        "select_trainable",
    ),
    "train": (
        "TrainResult",
        "train_distill",
    ),
    "teacher": (
        "read_teacher_cache",
        "teacher_embed_rows",
    ),
    "validation": (
        "build_validation_pairs",
        "validate_quality",
    ),
})
