"""The detector interface every landmark source implements, and the helpers they share.

All detectors return the same 5 points in the same order (the ArcFace template order):
eye on the image's left, eye on the image's right, nose tip, mouth corner on the image's
left, mouth corner on the image's right, as (5, 2) float64 pixel coordinates of the source
image. Keeping one order and one result type lets the runner, the alignment code and the
report treat "which detector" as nothing more than a column value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np

Status = Literal["ok", "no_face", "unreadable", "error", "no_reference"]
STATUSES: tuple[str, ...] = ("ok", "no_face", "unreadable", "error", "no_reference")
POINT_NAMES: tuple[str, ...] = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
POINT_COLUMNS: list[str] = [f"{axis}{i}" for i in range(5) for axis in ("x", "y")]
BOX_COLUMNS: list[str] = ["box_x0", "box_y0", "box_x1", "box_y1"]


@dataclass
class Detection:
    """One image's result: a status plus, when ``status == "ok"``, the chosen face's points.

    ``n_faces`` counts every face the detector reported, so multi-face images stay visible
    in the tables even though only one face (see `pick_face`) is kept.
    """

    status: Status
    points: np.ndarray | None = None
    score: float = math.nan
    box: tuple[float, float, float, float] | None = None
    n_faces: int = 0
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        if self.points is not None:
            pts = np.asarray(self.points, dtype=np.float64)
            if pts.shape != (5, 2):
                raise ValueError(f"points must have shape (5, 2), got {pts.shape}")
            self.points = pts
        if self.box is not None:
            self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]
        self.score = float(self.score) if self.score is not None else math.nan

    @classmethod
    def failed(cls, status: Status, message: str = "", n_faces: int = 0) -> Detection:
        """A result without points (no face, unreadable file, detector error...)."""
        return cls(status=status, n_faces=n_faces, message=message)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a C-contiguous HxWx3 uint8 array, or raise ValueError.

    Detectors get images from `aikd.data.images.read_rgb`, which already guarantees this;
    the check protects direct callers (grayscale 2-D arrays are expanded, alpha dropped).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"empty image of shape {img.shape}")
    return np.ascontiguousarray(img)


def pick_face(boxes: np.ndarray, image_shape: Sequence[int]) -> int:
    """Index of the face to keep when a detector finds several.

    Rule: maximise ``area * (1 - d / D) ** 2`` where ``area`` is the box area, ``d`` the
    distance from the box centre to the image centre and ``D`` half the image diagonal.
    Face datasets are (loosely) centred crops of one subject, so a large central face wins
    over bystanders, but a clearly larger face slightly off-centre still beats a tiny
    central false positive. Ties go to the first (detectors list faces by confidence).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        raise ValueError("pick_face needs at least one box")
    h, w = float(image_shape[0]), float(image_shape[1])
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    cx = (b[:, 0] + b[:, 2]) / 2 - w / 2
    cy = (b[:, 1] + b[:, 3]) / 2 - h / 2
    half_diag = max(math.hypot(w, h) / 2, 1e-9)
    penalty = np.clip(1.0 - np.hypot(cx, cy) / half_diag, 0.0, 1.0) ** 2
    return int(np.argmax(area * penalty))


def default_threads() -> int:
    """Intra-op threads when the caller gives none: a few, never more than the machine has."""
    return max(1, min(4, os.cpu_count() or 1))


def ort_session_options(threads: int | None) -> Any:
    """onnxruntime options: bounded intra-op threads, one inter-op thread, warnings muted.

    The bundled ONNX files trigger hundreds of harmless "initializer in graph inputs"
    warnings at load time; severity 3 (errors only) keeps logs readable.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads) if threads else default_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


#: Longest image side a detector looks at (px). Face detectors are trained on faces of
#: tens to a few hundred pixels: RetinaFace's landmarks drift once a face fills a frame
#: of 640 px and it misses it at 4000 px; CenterFace misses it from 1500 px. At 300-560
#: px the landmarks of RetinaFace, MTCNN and CenterFace agree equally well with LFW's
#: reference points; 512 px is also RetinaFace's largest anchor, and above every demo
#: image (LFW 150 px, YTF <= 494 px), whose detections therefore stay exactly as before.
DEFAULT_MAX_SIDE = 512


class LandmarkDetector:
    """Base class: lazy model loading, a bounded working resolution, per-image `detect`
    and a batch `detect_batch`.

    Subclasses implement `_load` (called once, on first use, so constructing a detector is
    cheap and never touches model files) and `_detect` on a validated RGB image; those
    that can run several same-sized images in one forward pass override `_detect_batch`.
    The public `detect` / `detect_batch` shrink an image whose longest side exceeds
    ``max_side`` before detection and map points and box back to the original pixels,
    so a face's size in pixels does not decide whether it is found (None: no cap).
    """

    name: ClassVar[str] = "base"
    #: False for detectors that answer from a table keyed by file path (the reference).
    reads_pixels: ClassVar[bool] = True
    max_side: int | None = DEFAULT_MAX_SIDE

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The loaded model; loading happens once per instance, on first access."""
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement _load()")

    def _detect(self, rgb: np.ndarray) -> Detection:
        raise NotImplementedError(f"{type(self).__name__} must implement _detect()")

    def _detect_batch(self, rgbs: Sequence[np.ndarray]) -> list[Detection]:
        """Detections of working-resolution images; the default loops over `_detect`."""
        return [self._detect(rgb) for rgb in rgbs]

    def detect(self, rgb: np.ndarray) -> Detection:
        """Landmarks of the main face of one HxWx3 uint8 RGB image."""
        image, scale = self._working_image(as_rgb(rgb))
        return rescaled(self._detect(image), scale)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detection]:
        """Landmarks for several images, in order (see `detect`)."""
        work = [self._working_image(as_rgb(img)) for img in images]
        dets = self._detect_batch([image for image, _ in work])
        if len(dets) != len(work):
            raise RuntimeError(f"detect_batch returned {len(dets)} results for {len(work)}")
        return [rescaled(det, scale) for det, (_, scale) in zip(dets, work, strict=True)]

    def _working_image(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None]:
        """``rgb`` shrunk to ``max_side`` and the (x, y) factors back, or ``rgb`` and None."""
        height, width = rgb.shape[:2]
        if not self.reads_pixels or self.max_side is None or max(height, width) <= self.max_side:
            return rgb, None
        import cv2

        ratio = self.max_side / max(height, width)
        size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        return small, (width / size[0], height / size[1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threads={self.threads}, max_side={self.max_side})"


def rescaled(det: Detection, scale: tuple[float, float] | None) -> Detection:
    """``det`` of a shrunk image in the original image's pixels (``scale``: x, y factors)."""
    if scale is None or (det.points is None and det.box is None):
        return det
    sx, sy = scale
    points = None if det.points is None else det.points * np.array([sx, sy])
    box = None if det.box is None else tuple(np.array(det.box) * np.array([sx, sy, sx, sy]))
    return replace(det, points=points, box=box)


def detection_from_faces(
    boxes: np.ndarray,
    points: np.ndarray,
    scores: np.ndarray,
    image_shape: Sequence[int],
) -> Detection:
    """Build a Detection from all faces of one image: keep one face by `pick_face`."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        return Detection.failed("no_face")
    p = np.asarray(points, dtype=np.float64).reshape(len(b), 5, 2)
    s = np.asarray(scores, dtype=np.float64).reshape(len(b))
    i = pick_face(b, image_shape)
    if not np.all(np.isfinite(p[i])):
        return Detection.failed("error", "detector returned non-finite landmarks", len(b))
    return Detection(
        status="ok", points=p[i], score=float(s[i]), box=tuple(b[i]), n_faces=len(b)
    )


def group_by_shape(images: Sequence[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    """Indices of the images grouped by shape, for detectors that batch equal sizes only."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    return groups
