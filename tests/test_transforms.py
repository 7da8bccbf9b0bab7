import numpy as np
import pytest
from conftest import landmarks_of

from aikd.data.images import read_rgb
from aikd.transforms import LandmarkJitter, aligned_pair, jitter_landmarks, jitter_pipeline

LM = np.array([[64.2, 64.2], [88.2, 66.6], [74.4, 85.8], [61.8, 94.2], [83.4, 96.6]])
IMG = np.zeros((150, 150, 3), np.uint8)


def _offsets(max_shift: float, n: int, units: str = "px", seed: int = 0) -> np.ndarray:
    pipe = jitter_pipeline(max_shift, units=units, seed=seed)
    return np.stack([jitter_landmarks(pipe, IMG, LM) - LM for _ in range(n)])


def test_offsets_are_bounded_uniform():
    off = _offsets(3.0, 4000)
    assert np.abs(off).max() <= 3.0
    assert abs(off.mean()) < 0.05
    # U[-a, a] has variance a^2 / 3 = 3.
    assert off.var() == pytest.approx(3.0, rel=0.05)
    # every coordinate moves independently
    corr = np.corrcoef(off.reshape(len(off), -1).T)
    assert np.abs(corr[~np.eye(10, dtype=bool)]).max() < 0.1


def test_seeded_and_reproducible():
    np.testing.assert_array_equal(_offsets(3.0, 5, seed=7), _offsets(3.0, 5, seed=7))
    assert not np.allclose(_offsets(3.0, 5, seed=7), _offsets(3.0, 5, seed=8))


def test_input_not_mutated_and_image_untouched():
    lm = LM.copy()
    img = np.random.default_rng(0).integers(0, 255, (150, 150, 3), dtype=np.uint8)
    before = img.copy()
    out = jitter_pipeline(3.0, seed=0)(image=img, keypoints=lm)
    np.testing.assert_array_equal(lm, LM)
    np.testing.assert_array_equal(out["image"], before)


def test_offsets_do_not_accumulate_across_calls():
    """Each call jitters the original landmarks, not the previous call's output."""
    off = _offsets(3.0, 200)
    assert np.abs(off).max() <= 3.0


def test_iod_units_scale_with_face_size():
    iod = np.linalg.norm(LM[1] - LM[0])
    off = _offsets(0.1, 2000, units="iod")
    assert np.abs(off).max() <= 0.1 * iod + 1e-9
    assert off.var() == pytest.approx((0.1 * iod) ** 2 / 3, rel=0.07)


def test_zero_shift_and_probability():
    np.testing.assert_array_equal(_offsets(0.0, 3), 0)
    pipe = jitter_pipeline(3.0, seed=0)
    pipe.transforms[0].p = 0.0
    np.testing.assert_array_equal(jitter_landmarks(pipe, IMG, LM), LM)


def test_negative_shift_rejected():
    with pytest.raises(ValueError):
        LandmarkJitter(max_shift=-1)


def test_aligned_pair_changes_only_student_input(lfw_root, lfw_sample):
    row = lfw_sample.iloc[3]
    img = read_rgb(lfw_root / row["path"])
    lm = landmarks_of(row)
    pipe = jitter_pipeline(3.0, seed=0)
    x1, xh1, j1 = aligned_pair(img, lm, "arcface112", pipe)
    x2, xh2, j2 = aligned_pair(img, lm, "arcface112", pipe)
    np.testing.assert_array_equal(x1, x2)  # the teacher input never changes
    assert not np.array_equal(xh1, x1) and not np.array_equal(xh1, xh2)
    assert not np.allclose(j1, j2)
    x0, xh0, _ = aligned_pair(img, lm, "arcface112", jitter_pipeline(0.0, seed=0))
    np.testing.assert_array_equal(x0, xh0)
