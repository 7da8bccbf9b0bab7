"""Pseudo-quality labels for FIQA: the targets a quality regressor is distilled from.

* :func:`sddfiqa_labels`, :func:`crfiqa_labels`: identity-aware labels from embeddings.
* :func:`serfiq_scores`: unsupervised stability under dropout for a frozen backbone.
* :func:`flip_consistency`, :func:`sharpness`: training-free baselines.
* :func:`import_label_csv`: labels produced by any other method, matched to a manifest.

Images of single-image identities get NaN labels and a :class:`SingletonIdentityWarning`.
"""

from aikd.fiqa.baselines import flip_consistency, sharpness
from aikd.fiqa.crfiqa import crfiqa_components, crfiqa_labels
from aikd.fiqa.csv_import import import_label_csv
from aikd.fiqa.sddfiqa import SingletonIdentityWarning, sddfiqa_labels
from aikd.fiqa.serfiq import (
    DEFAULT_DROPOUT,
    DEFAULT_PLACEMENT,
    DEFAULT_RATE,
    PLACEMENTS,
    serfiq_scores,
)

__all__ = [
    "DEFAULT_DROPOUT",
    "DEFAULT_PLACEMENT",
    "DEFAULT_RATE",
    "PLACEMENTS",
    "SingletonIdentityWarning",
    "crfiqa_components",
    "crfiqa_labels",
    "flip_consistency",
    "import_label_csv",
    "sddfiqa_labels",
    "serfiq_scores",
    "sharpness",
]
