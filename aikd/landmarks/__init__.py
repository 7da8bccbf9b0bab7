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

from aikd.landmarks.base import (
    BOX_COLUMNS,
    POINT_COLUMNS,
    POINT_NAMES,
    STATUSES,
    Detection,
    LandmarkDetector,
    pick_face,
)
from aikd.landmarks.reference import (
    ReferenceDetector,
    load_reference_landmarks,
    mapping_68_to_5,
)
from aikd.landmarks.registry import (
    available_detectors,
    detector_packages,
    get_detector,
    registered_detectors,
)
from aikd.landmarks.report import landmark_agreement, nme, plot_nme
from aikd.landmarks.runner import (
    OUTPUT_COLUMNS,
    detect_batch_safely,
    partial_path,
    run_landmarks,
)

__all__ = [
    "BOX_COLUMNS",
    "OUTPUT_COLUMNS",
    "POINT_COLUMNS",
    "POINT_NAMES",
    "STATUSES",
    "Detection",
    "LandmarkDetector",
    "ReferenceDetector",
    "available_detectors",
    "detect_batch_safely",
    "detector_packages",
    "get_detector",
    "landmark_agreement",
    "load_reference_landmarks",
    "mapping_68_to_5",
    "nme",
    "partial_path",
    "pick_face",
    "plot_nme",
    "registered_detectors",
    "run_landmarks",
]
