"""Detectors run at a bounded working resolution, so a face's size in pixels does not
decide whether it is found.

Before the cap, RetinaFace returned ``no_face`` for one face filling a 4000 px frame and
its quality was off by 54 % at 1500 px; CenterFace lost the face from 1500 px. Now every
detector sees at most `DEFAULT_MAX_SIDE` (512) px and its points are mapped back.

The scored face is one LFW face cropped to 100x120 px and upscaled to 300, 1000, 2000 and
4000 px on its longest side; the student is test_registry's small real-backbone model
with a scaled random head. 1000-4000 px are all detected at 512 px, so they agree within
resampling noise (measured spread <= 1.3 %, bound `CAPPED_SPREAD` 3 %). Against 300 px,
where the detector works at 300 px, the measured shifts were RetinaFace 15.7 %, CenterFace
3.6 %, dlib 1.4 %, MTCNN 0.8 %: this steep student moves by a few per cent whenever a
detector's landmarks move by a few per cent of the eye distance, which happens between
any two working sizes (RetinaFace on this face: 0.32 at 300 px, 0.37 at 360 px, 0.35 at
420 px). `TOLERANCE` bounds those measured shifts with some room.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from test_registry import save_student

from aikd.data.images import read_rgb
from aikd.distill.model import QualityModel, load_quality_model
from aikd.landmarks.base import DEFAULT_MAX_SIDE, Detection, LandmarkDetector
from aikd.landmarks.registry import available_detectors, get_detector
from aikd.scoring import QualityScorer

SIZES = (300, 1000, 2000, 4000)
FACE = "images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
#: Largest |quality - quality at 300 px| / quality at 300 px accepted, per detector
#: (measured on this face: see the module docstring).
TOLERANCE = {"retinaface": 0.20, "mtcnn": 0.05, "dlib": 0.05, "centerface": 0.08,
             "mediapipe": 0.10}  # mediapipe: not installed here, not measured
#: Largest relative spread among 1000-4000 px (all detected at 640 px).
CAPPED_SPREAD = 0.03


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory, lfw_root: Path,
            lfw_sample: pd.DataFrame) -> QualityModel:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    faces = lfw_sample.head(10).assign(root=str(lfw_root)).reset_index(drop=True)
    path = save_student(tmp_path_factory.mktemp("student") / "m.pt", faces, scale=0.1,
                        shift=0.5)
    yield load_quality_model(path)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def frames(lfw_root: Path) -> dict[int, np.ndarray]:
    """The face region (100x120 px) upscaled so its longest side is each of `SIZES`."""
    face = read_rgb(lfw_root / FACE)[15:135, 25:125]
    return {s: cv2.resize(face, (round(100 * s / 120), s), interpolation=cv2.INTER_CUBIC)
            for s in SIZES}


@pytest.mark.parametrize("name", ["retinaface", "mtcnn", "dlib", "centerface", "mediapipe"])
def test_one_face_at_every_size(name: str, student: QualityModel,
                                frames: dict[int, np.ndarray]) -> None:
    if name not in available_detectors():
        pytest.skip(f"detector {name!r} is not installed")
    scorer = QualityScorer(student, get_detector(name, threads=1), batch_size=1,
                           backend="torch")
    rows = pd.concat([scorer.score_batch([f"{s}px"], [frames[s]]) for s in SIZES])
    assert rows["status"].tolist() == ["ok"] * len(SIZES), rows[["path", "status", "message"]]
    quality = dict(zip(SIZES, rows["quality"], strict=True))
    shift = {s: abs(q / quality[300] - 1) for s, q in quality.items()}
    assert max(shift.values()) <= TOLERANCE[name], quality
    capped = [quality[s] for s in SIZES if s > DEFAULT_MAX_SIDE]
    assert max(capped) / min(capped) - 1 <= CAPPED_SPREAD, quality


class _Centre(LandmarkDetector):
    """Answers points at fixed fractions of the image it is given, and remembers its size."""

    name = "centre"
    FRACTIONS = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]])

    def _load(self) -> object:
        return object()

    def _detect(self, rgb: np.ndarray) -> Detection:
        self.seen = rgb
        h, w = rgb.shape[:2]
        return Detection("ok", points=self.FRACTIONS * [w, h], box=(0, 0, w, h), n_faces=1)


def test_points_map_back_and_small_images_pass_untouched() -> None:
    det = _Centre()
    big = np.zeros((1500, 2999, 3), np.uint8)
    found = det.detect_batch([big])[0]
    assert det.seen.shape[:2] == (256, 512)
    np.testing.assert_allclose(found.points, _Centre.FRACTIONS * [2999, 1500])
    np.testing.assert_allclose(found.box, (0, 0, 2999, 1500))
    small = np.zeros((494, 240, 3), np.uint8)  # as large as YTF frames: detected as it is
    found = det.detect(small)
    assert det.seen is small
    np.testing.assert_array_equal(found.points, _Centre.FRACTIONS * [240, 494])
    det.max_side = None
    det.detect(big)
    assert det.seen is big
