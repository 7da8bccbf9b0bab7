"""Pseudo-quality labels for FIQA: the targets a quality regressor is distilled from.

* :func:`sddfiqa_labels`, :func:`crfiqa_labels`: identity-aware labels from embeddings.
* :func:`serfiq_scores`: unsupervised stability under dropout for a frozen backbone.
* :func:`flip_consistency`, :func:`sharpness`: training-free baselines.
* :func:`import_label_csv`: labels produced by any other method, matched to a manifest.

Images of single-image identities get NaN labels and a :class:`SingletonIdentityWarning`.
"""

from aikd.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "baselines": (
        "flip_consistency",
        "sharpness",
    ),
    "crfiqa": (
        "crfiqa_components",
        "crfiqa_labels",
    ),
    "csv_import": (
        "import_label_csv",
    ),
    "sddfiqa": (
        "SingletonIdentityWarning",
        "sddfiqa_labels",
    ),
    "serfiq": (
        "DEFAULT_DROPOUT",
        "DEFAULT_PLACEMENT",
        "DEFAULT_RATE",
        "PLACEMENTS",
        "serfiq_scores",
    ),
})
