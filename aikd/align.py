"""Face alignment: 5-point templates and the similarity warp that puts a face onto them.

Both the teacher input x and the misaligned student input x̂ come from
`align_to_template`; only the landmarks differ, which is exactly the effect AI-KD targets.
"""

from __future__ import annotations

import cv2
import numpy as np

# ArcFace / insightface 112x112 template (eye left, eye right, nose, mouth left, mouth right).
_ARCFACE112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# dlib's mean face (points 36-48, 54 of the iBUG 68-point layout) in the unit square that
# `dlib.get_face_chip_details` maps to a chip: the eye centres are the means of points
# 36-41 / 42-47, then the nose tip (30) and mouth corners (48, 54) -- the same mapping that
# turns a 68-point shape into our 5 points. Values are dlib's published mean-shape constants.
_DLIB_MEAN_EYE_LEFT_X = (0.121737, 0.187122, 0.265825, 0.334606, 0.260918, 0.182743)
_DLIB_MEAN_EYE_LEFT_Y = (0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077)
_DLIB_MEAN_EYE_RIGHT_X = (0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335)
_DLIB_MEAN_EYE_RIGHT_Y = (0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099)
_DLIB_MEAN_NOSE = (0.490127, 0.515625)
_DLIB_MEAN_MOUTH_LEFT = (0.254149, 0.780233)
_DLIB_MEAN_MOUTH_RIGHT = (0.726104, 0.780233)


def dlib_chip_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """The 5 points of dlib's mean face in a `get_face_chip(size, padding)` chip.

    dlib places mean-shape point m at (padding + m) / (1 + 2 padding) * size; at 150 px and
    padding 0.25 the eyes land ~53 px apart, the framing dlib's ResNet was trained on.
    """
    unit = np.array(
        [
            [np.mean(_DLIB_MEAN_EYE_LEFT_X), np.mean(_DLIB_MEAN_EYE_LEFT_Y)],
            [np.mean(_DLIB_MEAN_EYE_RIGHT_X), np.mean(_DLIB_MEAN_EYE_RIGHT_Y)],
            _DLIB_MEAN_NOSE,
            _DLIB_MEAN_MOUTH_LEFT,
            _DLIB_MEAN_MOUTH_RIGHT,
        ],
        dtype=np.float64,
    )
    return (padding + unit) / (1.0 + 2.0 * padding) * size


_TEMPLATES: dict[str, tuple[np.ndarray, tuple[int, int]]] = {
    "arcface112": (_ARCFACE112, (112, 112)),
    "dlib150": (dlib_chip_template(150, 0.25), (150, 150)),
    # The faceres MobileNet (docs/faceres.md): the mean LFW 5 points under a centre crop of
    # 60 % of the image resized to 224 px, the crop chosen on validation people.
    "faceres224": (np.array([[83.2541, 93.9778], [143.8693, 92.5198], [114.2143, 129.3475],
                             [87.8281, 162.0362], [141.1178, 160.7663]]), (224, 224)),
}


def available_templates() -> list[str]:
    return sorted(_TEMPLATES)


def get_template(name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Return (points (5,2) float64, (width, height)) of a named template (a fresh copy)."""
    try:
        points, size = _TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown template {name!r}; available: {', '.join(available_templates())}"
        ) from None
    return points.copy(), size


def check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Validate 5 landmarks and return them as a (5,2) float64 array, or raise ValueError."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("landmarks contain NaN or infinite values")
    centred = pts - pts.mean(axis=0)
    sv = np.linalg.svd(centred, compute_uv=False)
    if sv[0] < 1e-6:
        raise ValueError("landmarks are degenerate: all points coincide")
    if sv[1] < 1e-3 * sv[0]:
        raise ValueError("landmarks are degenerate: points are collinear")
    return pts


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection).

    Umeyama (1991): returns the 2x3 matrix M minimising sum ||M [src;1] - dst||^2.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / var_s)
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_to_template(
    image: np.ndarray, landmarks: np.ndarray, template: str = "arcface112"
) -> tuple[np.ndarray, np.ndarray]:
    """Warp `image` (HxWx3 uint8) so its 5 landmarks best match the template's.

    Returns (aligned image, 2x3 matrix M from source pixels to template pixels).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    pts = check_landmarks(landmarks)
    dst, size = get_template(template)
    m = umeyama_similarity(pts, dst)
    aligned = cv2.warpAffine(
        image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return aligned, m


def inter_ocular_distance(landmarks: np.ndarray) -> float:
    """Distance between the two eye points: the face's natural length unit."""
    pts = np.asarray(landmarks, dtype=np.float64)
    return float(np.linalg.norm(pts[1] - pts[0]))
