"""Reading face images: one place that turns a file into an RGB uint8 array or a clear error."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class ImageReadError(ValueError):
    """A file that cannot be used as an image; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB.

    Grayscale images are expanded to three channels and alpha is dropped, so every
    detector and backbone sees the same layout. Raises ImageReadError (never returns None).
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(p, "file not found")
    data = np.fromfile(p, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(p, "file is empty")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(p, "not a decodable image (corrupt or unsupported format)")
    if img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageReadError(p, f"unsupported channel count {img.shape[2]}")
