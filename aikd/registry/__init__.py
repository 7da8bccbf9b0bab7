"""MLflow model registry for distilled quality models (docs/registry.md).

``aikd register`` turns a distill run (``models/<run>/`` or an MLflow run id) into an
MLflow ``pyfunc`` model that scores *raw* photos: it bundles ``model.pt`` (student
backbone + head + label normalisation) with a small JSON config (landmark detector,
alignment template, code version), so a consumer needs no knowledge of detection or
alignment. ``aikd score`` (:mod:`aikd.scoring`) runs such a model, or a local
``model.pt``, over a folder or manifest of photos.

Modules: `settings` (params ``register``), `sources` (which run), `pyfunc` (the model
and what is logged with it), `versions` (tags, champion / challenger), `stage` (the
DVC stage) and `command` (the CLI's ``register`` and ``score``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AIKDQualityPyfunc"]


def __getattr__(name: str) -> Any:
    """Models registered before this package was split load
    ``aikd.registry.AIKDQualityPyfunc``; imported on use, so the CLI stays light."""
    if name == "AIKDQualityPyfunc":
        from aikd.registry.pyfunc import AIKDQualityPyfunc

        return AIKDQualityPyfunc
    raise AttributeError(f"module 'aikd.registry' has no attribute {name!r}")
