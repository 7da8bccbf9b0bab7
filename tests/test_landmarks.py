"""aikd.landmarks: detectors agree with the reference, failures become rows, runs resume."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import YTF, landmarks_of

from aikd.landmarks.base import POINT_COLUMNS, Detection, LandmarkDetector, pick_face
from aikd.landmarks.reference import load_reference_landmarks, mapping_68_to_5
from aikd.landmarks.registry import available_detectors, get_detector
from aikd.landmarks.report import landmark_agreement, nme, plot_nme
from aikd.landmarks.runner import OUTPUT_COLUMNS, partial_path, run_landmarks

PIXEL_DETECTORS = ["retinaface", "mtcnn", "dlib", "centerface", "mediapipe"]
_DETECTORS: dict[str, LandmarkDetector] = {}


def detector(name: str) -> LandmarkDetector:
    """One instance per detector for the whole module (model loading dominates the cost)."""
    if name not in available_detectors():
        pytest.skip(f"detector {name!r} is not installed")
    if name not in _DETECTORS:
        _DETECTORS[name] = get_detector(name, threads=2)
    return _DETECTORS[name]


def manifest_for(root: Path, paths: Sequence[str], dataset: str = "lfw") -> pd.DataFrame:
    return pd.DataFrame(
        {"root": str(root), "path": list(paths), "dataset": dataset, "identity": "x"}
    )


@pytest.fixture(scope="module")
def sample_images(lfw_root: Path, lfw_sample: pd.DataFrame) -> list[np.ndarray]:
    from aikd.data.images import read_rgb

    return [read_rgb(lfw_root / p) for p in lfw_sample["path"]]


@pytest.fixture(scope="module")
def sample_detections(sample_images: list[np.ndarray]) -> Callable[[str], list[Detection]]:
    """Each detector runs once over the sample, batched (MTCNN is slow image by image)."""
    cache: dict[str, list[Detection]] = {}

    def found(name: str) -> list[Detection]:
        if name not in cache:
            cache[name] = detector(name).detect_batch(sample_images)
        return cache[name]

    return found


@pytest.mark.parametrize("name", PIXEL_DETECTORS)
def test_detector_agrees_with_reference(
    name: str,
    lfw_sample: pd.DataFrame,
    sample_images: list[np.ndarray],
    sample_detections: Callable[[str], list[Detection]],
) -> None:
    found = sample_detections(name)
    assert len(found) == len(sample_images)
    errors = []
    for d, (_, row) in zip(found, lfw_sample.iterrows(), strict=True):
        if d.status != "ok":
            errors.append(np.inf)
            continue
        assert d.points is not None and d.points.shape == (5, 2)
        assert d.points.dtype == np.float64
        assert d.box is not None and d.n_faces >= 1
        errors.append(nme(d.points, landmarks_of(row)))
    within = np.mean(np.asarray(errors) <= 0.2)
    assert within >= 0.9, f"{name}: only {within:.0%} within 0.2 IOD; errors {errors}"


def test_retinaface_landmarks_are_subpixel(
    sample_detections: Callable[[str], list[Detection]],
) -> None:
    """The package rounds to whole pixels; our decoding keeps the fractions."""
    found = sample_detections("retinaface")
    pts = np.concatenate([d.points for d in found if d.points is not None])
    assert np.any(np.abs(pts - np.round(pts)) > 1e-3)


def test_mtcnn_batch_matches_single(sample_images: list[np.ndarray]) -> None:
    det = detector("mtcnn")
    batch = det.detect_batch(sample_images[:2])
    for img, b in zip(sample_images[:2], batch, strict=True):
        single = det.detect(img)
        assert single.status == b.status == "ok"
        np.testing.assert_allclose(single.points, b.points, atol=0.05)


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory: pytest.TempPathFactory, lfw_root: Path, lfw_sample) -> Path:
    """A corrupt file, an empty file, a blank image and a grayscale JPEG of a real face."""
    root = tmp_path_factory.mktemp("odd")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 7)
    (root / "empty.jpg").write_bytes(b"")
    cv2.imwrite(str(root / "blank.png"), np.zeros((150, 150, 3), np.uint8))
    gray = cv2.imread(str(lfw_root / lfw_sample["path"].iloc[0]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "gray.jpg"), gray)
    return root


@pytest.mark.parametrize("name", PIXEL_DETECTORS)
def test_bad_inputs_become_status_rows(name: str, odd_files: Path, tmp_path: Path) -> None:
    files = ["corrupt.jpg", "empty.jpg", "missing.jpg", "blank.png", "gray.jpg"]
    table = run_landmarks(
        manifest_for(odd_files, files, dataset="odd"),
        detector(name),
        tmp_path / "out.parquet",
        batch_size=8,
        progress=False,
    )
    status = dict(zip(table["path"], table["status"], strict=True))
    assert status["corrupt.jpg"] == status["empty.jpg"] == status["missing.jpg"] == "unreadable"
    message = dict(zip(table["path"], table["message"], strict=True))
    assert "corrupt.jpg" in message["corrupt.jpg"] and "decodable" in message["corrupt.jpg"]
    assert "empty" in message["empty.jpg"] and "not found" in message["missing.jpg"]
    assert status["blank.png"] == "no_face"
    assert status["gray.jpg"] == "ok"
    failed = table[table["status"] != "ok"]
    assert failed[POINT_COLUMNS].isna().all().all()
    assert list(table.columns) == OUTPUT_COLUMNS


class CountingDetector(LandmarkDetector):
    """Wraps a real detector, counts the images it is asked about, can fail on purpose."""

    name = "retinaface"

    def __init__(self, inner: LandmarkDetector, fail_after: int | None = None,
                 raise_on_mean_below: float | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.fail_after = fail_after
        self.raise_on_mean_below = raise_on_mean_below

    def _load(self) -> object:
        return self.inner.model

    def _detect(self, rgb: np.ndarray) -> Detection:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # a killed run
        self.calls += 1
        if self.raise_on_mean_below is not None and rgb.mean() < self.raise_on_mean_below:
            raise RuntimeError("simulated detector crash")
        return self.inner.detect(rgb)


def test_runner_resumes_from_partial_and_final(
    lfw_root: Path, lfw_sample: pd.DataFrame, tmp_path: Path
) -> None:
    paths = list(lfw_sample["path"].iloc[:9])
    out = tmp_path / "lfw" / "retinaface.parquet"
    inner = detector("retinaface")

    first = CountingDetector(inner)
    table6 = run_landmarks(manifest_for(lfw_root, paths[:6]), first, out, batch_size=4,
                           checkpoint_every=2, progress=False)
    assert first.calls == 6 and out.is_file() and not partial_path(out).exists()
    assert list(table6["path"]) == paths[:6]
    assert (table6["status"] == "ok").all() and (table6["detector"] == "retinaface").all()

    # A run killed after its last checkpoint: the partial file holds 3 of the 6 rows.
    pd.read_parquet(out).iloc[[0, 2, 4]].to_parquet(partial_path(out), index=False)
    out.unlink()
    second = CountingDetector(inner)
    again = run_landmarks(manifest_for(lfw_root, paths[:6]), second, out, progress=False)
    assert second.calls == 3
    pd.testing.assert_frame_equal(again, table6)
    assert not partial_path(out).exists()

    # A superset manifest only processes the new images, and keeps manifest order.
    third = CountingDetector(inner)
    superset = [paths[8], *paths[:6], paths[7], paths[6]]
    table9 = run_landmarks(manifest_for(lfw_root, superset), third, out, progress=False)
    assert third.calls == 3
    assert list(table9["path"]) == superset
    pd.testing.assert_frame_equal(
        table9.set_index("path").loc[paths[:6]].reset_index(), table6
    )


def test_killed_run_keeps_checkpoint(
    lfw_root: Path, lfw_sample: pd.DataFrame, tmp_path: Path
) -> None:
    paths = list(lfw_sample["path"].iloc[:6])
    out = tmp_path / "killed.parquet"
    killed = CountingDetector(detector("retinaface"), fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_landmarks(manifest_for(lfw_root, paths), killed, out, batch_size=2,
                      checkpoint_every=2, progress=False)
    assert not out.exists() and len(pd.read_parquet(partial_path(out))) == 4
    resumed = CountingDetector(detector("retinaface"))
    table = run_landmarks(manifest_for(lfw_root, paths), resumed, out, batch_size=2,
                          progress=False)
    assert resumed.calls == 2 and list(table["path"]) == paths


def test_detector_exception_is_an_error_row(odd_files: Path, tmp_path: Path) -> None:
    manifest = manifest_for(odd_files, ["blank.png", "gray.jpg"])
    crashing = CountingDetector(detector("retinaface"), raise_on_mean_below=1.0)
    table = run_landmarks(manifest, crashing, tmp_path / "t.parquet", progress=False)
    assert list(table["status"]) == ["error", "ok"]
    assert "simulated detector crash" in table["message"].iloc[0]

    # A rerun retries only the error row (errors may be transient, e.g. out of memory).
    healthy = CountingDetector(detector("retinaface"))
    table = run_landmarks(manifest, healthy, tmp_path / "t.parquet", progress=False)
    assert healthy.calls == 1 and list(table["status"]) == ["no_face", "ok"]


def test_runner_refuses_other_detectors_file(odd_files: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    run_landmarks(manifest_for(odd_files, ["corrupt.jpg"]), "reference", out, progress=False)
    with pytest.raises(ValueError, match="reference"):
        run_landmarks(manifest_for(odd_files, ["corrupt.jpg"]), detector("retinaface"), out,
                      progress=False)


def test_mapping_68_to_5_by_hand() -> None:
    pts = np.zeros((68, 2))
    pts[36:42] = [[10, 20], [12, 18], [14, 18], [16, 20], [14, 22], [12, 22]]  # mean (13, 20)
    pts[42:48] = [[30, 20], [32, 19], [34, 19], [36, 20], [34, 21], [32, 21]]  # mean (33, 20)
    pts[30] = [23, 30]
    pts[48] = [15, 40]
    pts[54] = [31, 41]
    expected = np.array([[13, 20], [33, 20], [23, 30], [15, 40], [31, 41]], dtype=np.float64)
    np.testing.assert_allclose(mapping_68_to_5(pts), expected)
    np.testing.assert_allclose(mapping_68_to_5(pts.reshape(-1)), expected)
    np.testing.assert_allclose(mapping_68_to_5(np.stack([pts, pts + 1])), [expected, expected + 1])
    with pytest.raises(ValueError):
        mapping_68_to_5(np.zeros((5, 2)))


def test_reference_tables(lfw_root: Path, lfw_reference: pd.DataFrame, tmp_path: Path) -> None:
    lfw = load_reference_landmarks("lfw", lfw_root)
    assert list(lfw.columns) == ["path", *POINT_COLUMNS] and len(lfw) == len(lfw_reference)
    if (YTF / "keypoints_68pt.csv").is_file():
        ytf = load_reference_landmarks("ytf", YTF)
        raw = pd.read_csv(YTF / "keypoints_68pt.csv", nrows=1)
        pts = raw[[f"{a}{i}" for i in range(68) for a in "xy"]].to_numpy().reshape(68, 2)
        np.testing.assert_allclose(landmarks_of(ytf.iloc[0]), mapping_68_to_5(pts))
    with pytest.raises(FileNotFoundError):
        load_reference_landmarks("mine", tmp_path)

    # A user dataset: no landmark file -> no_reference; a landmarks_5pt.csv -> ok.
    manifest = manifest_for(tmp_path, ["a/1.jpg", "a/2.jpg"], dataset="mine")
    table = run_landmarks(manifest, "reference", tmp_path / "r1.parquet", progress=False)
    assert (table["status"] == "no_reference").all()
    row = {"path": "a/1.jpg", **{c: float(i) for i, c in enumerate(POINT_COLUMNS)}}
    pd.DataFrame([row]).to_csv(tmp_path / "landmarks_5pt.csv", index=False)
    table = run_landmarks(manifest, "reference", tmp_path / "r2.parquet", progress=False)
    assert list(table["status"]) == ["ok", "no_reference"]
    assert table[POINT_COLUMNS].iloc[0].tolist() == list(range(10))


def test_pick_face_prefers_large_central_face() -> None:
    shape = (150, 150, 3)
    central = [50, 50, 100, 100]
    corner_bigger = [0, 0, 55, 55]  # larger area, but far from the centre
    tiny_central = [70, 70, 80, 80]
    assert pick_face(np.array([corner_bigger, central, tiny_central]), shape) == 1
    assert pick_face(np.array([tiny_central, [20, 20, 130, 130]]), shape) == 1


def test_report_nme_on_hand_built_case(tmp_path: Path) -> None:
    ref_pts = np.array([[0, 0], [10, 0], [5, 5], [2, 10], [8, 10]], dtype=np.float64)
    reference = pd.DataFrame(
        [{"path": p, **dict(zip(POINT_COLUMNS, ref_pts.ravel(), strict=True))}
         for p in ("a", "b", "c")]
    )
    shifted = ref_pts + [3.0, 4.0]  # every point 5 px off, IOD 10 -> NME 0.5
    one_off = ref_pts.copy()
    one_off[2] += [0.0, 2.0]  # only the nose, 2 px -> NME 0.04
    rows = [
        {"path": "a", "status": "ok", **dict(zip(POINT_COLUMNS, shifted.ravel(), strict=True))},
        {"path": "b", "status": "ok", **dict(zip(POINT_COLUMNS, one_off.ravel(), strict=True))},
        {"path": "c", "status": "no_face", **dict.fromkeys(POINT_COLUMNS, np.nan)},
        {"path": "d", "status": "ok", **dict(zip(POINT_COLUMNS, ref_pts.ravel(), strict=True))},
    ]
    table = pd.DataFrame(rows).assign(dataset="toy")
    assert nme(shifted, ref_pts) == pytest.approx(0.5)
    report = landmark_agreement({"toy": table}, reference)
    r = report.iloc[0]
    assert (r["dataset"], r["detector"], r["n_images"]) == ("toy", "toy", 4)
    assert r["found_share"] == pytest.approx(0.75)
    assert r["n_compared"] == 2  # "d" has no reference, "c" no face
    assert r["nme_median"] == pytest.approx((0.5 + 0.04) / 2)
    assert r["median_err_nose"] == pytest.approx((0.5 + 0.2) / 2)
    assert r["median_err_eye_left"] == pytest.approx(0.25)
    png = plot_nme({"toy": table}, reference, tmp_path / "nme.png")
    assert png.is_file() and png.stat().st_size > 1000
