"""MTCNN from facenet-pytorch (P/R/O-net weights ship in its wheel), on the CPU.

One image at a time MTCNN spends most of its ~250 ms in Python overhead over its image
pyramid; the pyramid runs as one tensor batch when images share a size, so
`detect_batch` groups equal-sized images (all LFW images are 150x150).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aikd.landmarks.base import (
    Detection,
    LandmarkDetector,
    detection_from_faces,
    group_by_shape,
)


def _as_float(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """facenet-pytorch packs per-image results in object arrays (None when no face)."""
    if value is None:
        return np.empty((0, *shape[1:]))
    arr = np.asarray(value)
    if arr.dtype == object and arr.size and any(v is None for v in arr.ravel()):
        return np.empty((0, *shape[1:]))
    return arr.astype(np.float64).reshape(shape)


class MTCNNDetector(LandmarkDetector):
    """facenet-pytorch MTCNN with ``keep_all=True``; the face is chosen by `pick_face`.

    ``threads`` sets torch's (process-wide) intra-op thread count when given. Points come
    in template order (image-left eye first).
    """

    name = "mtcnn"

    def __init__(
        self,
        threads: int | None = None,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> None:
        super().__init__(threads)
        self.min_face_size = int(min_face_size)
        self.thresholds = [float(t) for t in thresholds]
        self.factor = float(factor)

    def _load(self) -> Any:
        import torch
        from facenet_pytorch import MTCNN

        if self.threads:
            torch.set_num_threads(int(self.threads))
        model = MTCNN(
            keep_all=True,
            select_largest=False,
            min_face_size=self.min_face_size,
            thresholds=self.thresholds,
            factor=self.factor,
            device=torch.device("cpu"),
        )
        return model.eval()

    def _run(self, batch: np.ndarray) -> list[Detection]:
        """Detect on an (N,H,W,3) uint8 batch of equal-sized images."""
        if min(batch.shape[1:3]) < self.min_face_size:  # empty pyramid: MTCNN would raise
            msg = f"image smaller than min_face_size={self.min_face_size} px"
            return [Detection.failed("no_face", msg) for _ in range(len(batch))]
        boxes, probs, points = self.model.detect(batch, landmarks=True)
        out = []
        for b, p, pts in zip(boxes, probs, points, strict=True):
            fb = _as_float(b, (-1, 4))
            n = len(fb)
            out.append(
                detection_from_faces(
                    fb,
                    _as_float(pts, (n, 5, 2)) if n else np.empty((0, 5, 2)),
                    _as_float(p, (n,)) if n else np.empty(0),
                    batch.shape[1:3],
                )
            )
        return out

    def _detect(self, rgb: np.ndarray) -> Detection:
        return self._run(rgb[None])[0]

    def _detect_batch(self, rgbs: Sequence[np.ndarray]) -> list[Detection]:
        """One MTCNN pass per group of equal-sized images."""
        results: list[Detection | None] = [None] * len(rgbs)
        for _, idx in group_by_shape(rgbs).items():
            for i, det in zip(idx, self._run(np.stack([rgbs[i] for i in idx])), strict=True):
                results[i] = det
        return [r for r in results if r is not None]
