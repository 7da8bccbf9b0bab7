"""Five-point facial landmarks from several detectors behind one interface.

AI-KD studies how face-quality scores change when the *same* face is aligned from the
landmarks of *different* detectors, so every detector here returns the same 5 points in
the same order (ArcFace template: image-left eye, image-right eye, nose tip, image-left
mouth corner, image-right mouth corner) as a `Detection`, and `run_landmarks` turns any
of them into one resumable parquet table per (dataset, detector).

Detectors (`available_detectors()` lists the installed ones): ``reference`` (the
dataset's own landmarks), ``retinaface``, ``mtcnn``, ``dlib``, ``centerface`` and,
optionally, ``mediapipe``. Backends are imported only when a detector is created.
"""

from aikd.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "base": (
        "BOX_COLUMNS",
        "POINT_COLUMNS",
        "POINT_NAMES",
        "STATUSES",
        "Detection",
        "LandmarkDetector",
        "pick_face",
    ),
    "reference": (
        "ReferenceDetector",
        "load_reference_landmarks",
        "mapping_68_to_5",
    ),
    "registry": (
        "available_detectors",
        "detector_packages",
        "get_detector",
        "registered_detectors",
    ),
    "report": (
        "landmark_agreement",
        "nme",
        "plot_nme",
    ),
    "runner": (
        "OUTPUT_COLUMNS",
        "detect_batch_safely",
        "partial_path",
        "run_landmarks",
    ),
})
