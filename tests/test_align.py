import cv2
import numpy as np
import pytest
from conftest import landmarks_of

from aikd.align import align_to_template, get_template, umeyama_similarity
from aikd.data.images import read_rgb


def complex_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Independent solution: a similarity is z -> a z + b with complex a, b (least squares)."""
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    design = np.stack([zs, np.ones_like(zs)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, zd, rcond=None)
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def test_arcface_template_values():
    pts, size = get_template("arcface112")
    assert size == (112, 112)
    assert pts.dtype == np.float64 and pts.shape == (5, 2)
    np.testing.assert_allclose(pts[0], [38.2946, 51.6963])
    np.testing.assert_allclose(pts[4], [70.7299, 92.2041])


def test_template_is_a_copy():
    pts, _ = get_template("arcface112")
    pts[:] = 0
    assert get_template("arcface112")[0][0, 0] == pytest.approx(38.2946)


def test_unknown_template_lists_available():
    with pytest.raises(ValueError, match="arcface112"):
        get_template("nope")


@pytest.mark.parametrize("seed", range(5))
def test_umeyama_matches_complex_least_squares(seed):
    rng = np.random.default_rng(seed)
    src = rng.uniform(20, 130, size=(5, 2))
    dst, _ = get_template("arcface112")
    np.testing.assert_allclose(
        umeyama_similarity(src, dst), complex_similarity(src, dst), atol=1e-9
    )


def test_exact_similarity_is_recovered():
    dst, size = get_template("arcface112")
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = (dst - shift) @ np.linalg.inv(scale * rot).T  # dst = scale*rot@src + shift
    image = np.zeros((200, 200, 3), np.uint8)
    aligned, m = align_to_template(image, src, "arcface112")
    assert aligned.shape == (size[1], size[0], 3)
    np.testing.assert_allclose(src @ m[:, :2].T + m[:, 2], dst, atol=1e-9)
    assert np.linalg.det(m[:, :2]) > 0  # no reflection


def test_align_uses_cv2_warp_semantics(lfw_root, lfw_sample):
    row = lfw_sample.iloc[0]
    img = read_rgb(lfw_root / row["path"])
    aligned, m = align_to_template(img, landmarks_of(row), "arcface112")
    expected = cv2.warpAffine(
        img, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    np.testing.assert_array_equal(aligned, expected)


@pytest.mark.parametrize(
    "points, message",
    [
        (np.full((5, 2), np.nan), "NaN"),
        (np.array([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]], float), "collinear"),
        (np.ones((5, 2)), "coincide"),
        (np.ones((4, 2)), "shape"),
    ],
)
def test_degenerate_landmarks_raise(points, message):
    with pytest.raises(ValueError, match=message):
        align_to_template(np.zeros((50, 50, 3), np.uint8), points)


def _dlib_models():
    dlib = pytest.importorskip("dlib")
    frm = pytest.importorskip("face_recognition_models")
    return (
        dlib,
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(frm.pose_predictor_model_location()),
        dlib.face_recognition_model_v1(frm.face_recognition_model_location()),
    )


def _five(shape) -> np.ndarray:
    p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
    return np.array([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def test_dlib150_template_matches_dlib_chips(lfw_root, lfw_sample):
    """A chip aligned with `dlib150` embeds like dlib's own chip, and dlib's predictor finds
    the 5 points on dlib's chips where the template puts them (within 3 px on average)."""
    dlib, detector, predictor, facerec = _dlib_models()
    template, _ = get_template("dlib150")
    cosines, on_chip = [], []
    for _, row in lfw_sample.iterrows():
        img = read_rgb(lfw_root / row["path"])
        dets = detector(img, 1)
        if not dets:
            continue
        shape = predictor(img, dets[0])
        chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
        ours, _ = align_to_template(img, _five(shape), "dlib150")
        a = np.array(facerec.compute_face_descriptor(chip))
        b = np.array(facerec.compute_face_descriptor(ours))
        cosines.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        whole = dlib.rectangle(0, 0, 149, 149)
        on_chip.append(_five(predictor(chip, whole)))
        if len(cosines) == 12:
            break
    assert len(cosines) >= 10
    # dlib fits 32 of its 68 points, we fit 5: single faces differ a little (0.985-0.999).
    assert np.mean(cosines) >= 0.99 and min(cosines) >= 0.98, cosines
    mean_points = np.mean(on_chip, axis=0)
    assert np.abs(mean_points - template).max() < 3.0, mean_points - template
