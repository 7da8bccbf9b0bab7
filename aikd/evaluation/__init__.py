"""Evaluation of face image quality: EDC curves, normalised pAUC and their uncertainty."""

from aikd.evaluation.edc import (
    DEFAULT_DISCARD_RATES,
    UndefinedPAUCWarning,
    edc_curve,
    pauc,
    pauc_bootstrap,
    random_quality_pauc,
)

__all__ = [
    "DEFAULT_DISCARD_RATES",
    "UndefinedPAUCWarning",
    "edc_curve",
    "pauc",
    "pauc_bootstrap",
    "random_quality_pauc",
]
