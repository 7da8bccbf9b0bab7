"""Tests for aikd.fiqa against expectations computed independently of the implementation:
hand-worked SDD-FIQA / CR-FIQA values, exhaustive expectations over all possible samples,
SER-FIQ's formula re-derived with scipy, and real LFW faces for the behaviour of SER-FIQ
and the flip baseline."""

from __future__ import annotations

import itertools
import math
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import landmarks_of
from scipy.spatial.distance import pdist
from scipy.stats import wasserstein_distance
from torch import nn

from aikd.align import align_to_template
from aikd.data.images import read_rgb
from aikd.fiqa.baselines import flip_consistency, sharpness
from aikd.fiqa.crfiqa import crfiqa_components, crfiqa_labels
from aikd.fiqa.csv_import import import_label_csv
from aikd.fiqa.sddfiqa import SingletonIdentityWarning, sddfiqa_labels
from aikd.fiqa.serfiq import DEFAULT_PLACEMENT, DEFAULT_RATE, serfiq_scores


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def _cosd(deg: float) -> float:
    return math.cos(math.radians(deg))


# ------------------------------------------------------------------------------- SDD-FIQA


def test_sddfiqa_hand_example() -> None:
    """2 identities x 2 images, m=2: the single mated cosine is drawn twice (with
    replacement) and both non-mated cosines are drawn, so every round is identical."""
    emb = np.array([_unit(0), _unit(60), _unit(90), _unit(180)]) * [[1], [2], [3], [0.5]]
    ids = ["A", "A", "B", "B"]
    # cosines: A1A2 0.5 | A1B1 0, A1B2 -1 | A2B1 cos30, A2B2 -0.5 | B1B2 0
    expected = [
        (abs(0.5 - -1) + abs(0.5 - 0)) / 2,
        (abs(0.5 - -0.5) + abs(0.5 - _cosd(30))) / 2,
        (abs(0 - 0) + abs(0 - _cosd(30))) / 2,
        (abs(0 - -1) + abs(0 - -0.5)) / 2,
    ]
    got = sddfiqa_labels(emb, ids, m=2, k=5, seed=3)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[1] == pytest.approx(wasserstein_distance([0.5, 0.5], [_cosd(30), -0.5]))


def _exact_expectation(emb: np.ndarray, ids: np.ndarray, i: int, m: int) -> tuple[float, float]:
    """(mean, SD) of W1 over every equally likely (mated draw, non-mated draw), by enumeration.

    Pools of at least m: all m-subsets (order does not change W1); smaller pools: all
    ordered m-tuples with replacement.
    """
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = e @ e[i]
    mated = [sims[j] for j in range(len(ids)) if ids[j] == ids[i] and j != i]
    non = [sims[j] for j in range(len(ids)) if ids[j] != ids[i]]

    def draws(pool: list[float]) -> list[tuple[float, ...]]:
        if len(pool) >= m:
            return list(itertools.combinations(pool, m))
        return list(itertools.product(pool, repeat=m))

    vals = [wasserstein_distance(a, b) for a in draws(mated) for b in draws(non)]
    return float(np.mean(vals)), float(np.std(vals))


def test_sddfiqa_matches_exhaustive_expectation() -> None:
    """With many rounds the label converges to the exact mean over all possible draws,
    which checks the sampling is uniform, excludes the image itself and its identity, and
    switches to replacement only for small pools."""
    rng = np.random.default_rng(7)
    ids = np.array(["A"] * 3 + ["B"] * 2 + ["D"] * 5)
    emb = rng.normal(size=(len(ids), 4))
    k, m = 3000, 3
    got = sddfiqa_labels(emb, ids, m=m, k=k, seed=11)
    for i in range(len(ids)):
        mean, sd = _exact_expectation(emb, ids, i, m)
        assert abs(got[i] - mean) <= 4 * sd / math.sqrt(k) + 1e-12, (i, got[i], mean)


def test_sddfiqa_singletons_nan_and_counted() -> None:
    rng = np.random.default_rng(0)
    ids = ["A", "A", "B", "C", "C", "D"]
    with pytest.warns(SingletonIdentityWarning) as rec:
        got = sddfiqa_labels(rng.normal(size=(6, 8)), ids, m=4, k=2)
    assert np.isnan(got).tolist() == [False, False, True, False, False, True]
    assert rec[0].message.n_images == 2  # type: ignore[union-attr]


def test_sddfiqa_seeded_and_fast() -> None:
    rng = np.random.default_rng(1)
    n = 6000
    ids = rng.permutation(np.r_[np.zeros(400, int), rng.integers(1, 1500, n - 400)])  # + a big one
    emb = rng.normal(size=(n, 128)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingletonIdentityWarning)
        t0 = time.perf_counter()
        a = sddfiqa_labels(emb, ids, seed=5)
        elapsed = time.perf_counter() - t0
        b = sddfiqa_labels(emb[:50], ids[:50], seed=5)
        c = sddfiqa_labels(emb[:50], ids[:50], seed=5)
        d = sddfiqa_labels(emb[:50], ids[:50], seed=6)
    assert elapsed < 20, f"SDD-FIQA on 6000x128 took {elapsed:.1f}s"
    assert np.isfinite(a).sum() > 5000
    np.testing.assert_array_equal(b, c)
    assert not np.allclose(b[~np.isnan(b)], d[~np.isnan(d)])


def test_sddfiqa_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="two identities"):
        sddfiqa_labels(np.ones((3, 2)), ["A", "A", "A"])
    with pytest.raises(ValueError, match="identities"):
        sddfiqa_labels(np.ones((3, 2)), ["A", "B"])


# -------------------------------------------------------------------------------- CR-FIQA

# Unit vectors at these angles (degrees). A's full centre is at 40 deg, B's at 180 deg,
# C (a singleton) at 320 deg. Leave-one-out centres: a1 -> 60, a2 -> 40, a3 -> 20, b1 -> 210,
# b2 -> 150.
CR_ANGLES = [0, 40, 80, 150, 210, 320]
CR_IDS = ["A", "A", "A", "B", "B", "C"]
CR_CCS = [_cosd(60), 1.0, _cosd(60), _cosd(60), _cosd(60), math.nan]
# Nearest other centre: a1 -> C (40 deg away), a2 -> C (80), a3 -> B (100), b1 -> A (110),
# b2 -> C (110), c1 -> A (80).
CR_NNCCS = [_cosd(40), _cosd(80), _cosd(100), _cosd(110), _cosd(110), _cosd(80)]


def test_crfiqa_components_hand_computed() -> None:
    emb = np.array([_unit(a) for a in CR_ANGLES]) * np.arange(1, 7)[:, None]  # scale-free
    ccs, nnccs = crfiqa_components(emb, CR_IDS)
    np.testing.assert_allclose(ccs, CR_CCS, atol=1e-12)
    np.testing.assert_allclose(nnccs, CR_NNCCS, atol=1e-12)


def test_crfiqa_labels_both_variants() -> None:
    emb = np.array([_unit(a) for a in CR_ANGLES])
    ccs, nn_ = np.array(CR_CCS), np.array(CR_NNCCS)
    with pytest.warns(SingletonIdentityWarning):
        paper = crfiqa_labels(emb, CR_IDS, variant="paper", eps=1e-9)
    with pytest.warns(SingletonIdentityWarning):
        ratio = crfiqa_labels(emb, CR_IDS, variant="ratio")
    np.testing.assert_allclose(paper, ccs / (nn_ + 1 + 1e-9), atol=1e-12)
    np.testing.assert_allclose(ratio, ccs / nn_, atol=1e-12)
    assert np.isnan(paper[5]) and np.isnan(ratio[5])
    with pytest.raises(ValueError, match="variant"):
        crfiqa_labels(emb, CR_IDS, variant="other")  # type: ignore[arg-type]


def test_crfiqa_debiased_centre_hand_computed() -> None:
    """Mean cosine to the other images over sqrt(the person's mean pairwise cosine)."""
    emb = np.array([_unit(a) for a in CR_ANGLES]) * np.arange(1, 7)[:, None]
    ccs, nnccs = crfiqa_components(emb, CR_IDS, centre="debiased")
    r_a = (2 * _cosd(40) + _cosd(80)) / 3
    expect = [(_cosd(40) + _cosd(80)) / 2 / math.sqrt(r_a),
              (_cosd(40) + _cosd(40)) / 2 / math.sqrt(r_a),
              (_cosd(80) + _cosd(40)) / 2 / math.sqrt(r_a),
              math.sqrt(_cosd(60)), math.sqrt(_cosd(60)), math.nan]
    np.testing.assert_allclose(ccs, expect, atol=1e-12)
    np.testing.assert_allclose(nnccs, CR_NNCCS, atol=1e-12)  # NNCCS is not changed
    with pytest.raises(ValueError, match="centre"):
        crfiqa_components(emb, CR_IDS, centre="mean")  # type: ignore[arg-type]


def test_crfiqa_debiased_centre_does_not_depend_on_image_count() -> None:
    """Synthetic people e = a c + sqrt(1 - a^2) u (u ~ orthogonal noise in 4096-d): the
    debiased CCS recovers each image's a = cos(e, c) whether its person has 2 or 40
    images; the leave-one-out centre gives the same images of a 2-image person far lower
    scores than those of a 40-image person."""
    rng = np.random.default_rng(0)
    d, rows, ids, truth = 4096, [], [], []
    for person, n in enumerate([2, 2, 2, 40, 40, 40]):
        c = rng.normal(size=d)
        c /= np.linalg.norm(c)
        for a in rng.uniform(0.6, 0.9, size=n):
            u = rng.normal(size=d)
            u -= (u @ c) * c
            rows.append(a * c + math.sqrt(1 - a * a) * u / np.linalg.norm(u))
            ids.append(person)
            truth.append(a)
    emb, truth, small = np.array(rows), np.array(truth), np.array(ids) < 3
    debiased, _ = crfiqa_components(emb, ids, centre="debiased")
    loo, _ = crfiqa_components(emb, ids, centre="loo")
    assert np.abs(debiased - truth)[~small].max() < 0.05
    # a 2-image person's pair shares one estimate, sqrt(a_1 a_2): the geometric mean
    np.testing.assert_allclose(debiased[small], np.repeat(np.sqrt(
        truth[small][::2] * truth[small][1::2]), 2), atol=0.05)
    gap = lambda s: (s - truth)[small].mean() - (s - truth)[~small].mean()  # noqa: E731
    assert abs(gap(debiased)) < 0.05
    assert gap(loo) < -0.1


# -------------------------------------------------------------------------------- SER-FIQ


@pytest.fixture(scope="module")
def dlib_model() -> nn.Module:
    from aikd.models.registry import load_backbone

    try:
        return load_backbone("dlib_resnet")
    except FileNotFoundError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"dlib model not available: {exc}")


@pytest.fixture(scope="module")
def lfw_chips(lfw_root: Path, lfw_sample: pd.DataFrame) -> np.ndarray:
    """20 real LFW faces aligned to dlib150 with the reference landmarks, (20,150,150,3)."""
    chips = []
    for _, row in lfw_sample.head(20).iterrows():
        img = read_rgb(lfw_root / row["path"])
        chips.append(align_to_template(img, landmarks_of(row), "dlib150")[0])
    return np.stack(chips)


def _nchw(chips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(chips).permute(0, 3, 1, 2).float()


def _degrade(chip: np.ndarray) -> np.ndarray:
    """Gaussian blur, then down to 1/4 size and back: a low-quality copy of the same face."""
    h, w = chip.shape[:2]
    blurred = cv2.GaussianBlur(chip, (0, 0), sigmaX=2.0)
    small = cv2.resize(blurred, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _darken(chip: np.ndarray) -> np.ndarray:
    """Under-exposure: a quarter of the original intensity (contrast lost with it)."""
    return (chip.astype(np.float32) * 0.25).astype(np.uint8)


@pytest.fixture(scope="module")
def default_serfiq(dlib_model: nn.Module, lfw_chips: np.ndarray) -> dict[str, np.ndarray]:
    """Default SER-FIQ (T=100) of the 20 faces and of two degraded copies, in one call."""
    blurred = np.stack([_degrade(c) for c in lfw_chips])
    dark = np.stack([_darken(c) for c in lfw_chips])
    q = serfiq_scores(dlib_model, _nchw(np.concatenate([lfw_chips, blurred, dark])), T=100)
    return {"orig": q[:20], "blurred": q[20:40], "dark": q[40:]}


@pytest.mark.xfail(
    strict=True,
    reason="measured limitation: on dlib_resnet no dropout placement/rate ranks a "
    "blur + 1/4-downscale copy below its original for >= 15/20 faces (8-13/20 measured; "
    "map dropout even favours smooth images); see docs/serfiq-dropout.md",
)
def test_serfiq_blurred_faces_score_lower(default_serfiq: dict[str, np.ndarray]) -> None:
    orig, low = default_serfiq["orig"], default_serfiq["blurred"]
    assert (orig > low).sum() >= 15, (DEFAULT_PLACEMENT, DEFAULT_RATE, orig - low)


def test_serfiq_darkened_faces_score_lower(default_serfiq: dict[str, np.ndarray]) -> None:
    orig = default_serfiq["orig"]
    assert ((orig > 0) & (orig <= 1)).all()
    assert (orig > default_serfiq["dark"]).sum() >= 15, orig - default_serfiq["dark"]


@pytest.mark.parametrize("placement", ["pooled", "stage4", "stage3", "stage2", "stage1"])
def test_serfiq_rate_zero_is_maximal(
    dlib_model: nn.Module, lfw_chips: np.ndarray, placement: str
) -> None:
    q = serfiq_scores(dlib_model, _nchw(lfw_chips[:2]), T=4, rate=0.0, placement=placement)
    np.testing.assert_array_equal(q, [1.0, 1.0])  # 2 / (1 + e^0)


def test_serfiq_seeded(dlib_model: nn.Module, lfw_chips: np.ndarray) -> None:
    x = _nchw(lfw_chips[:3])
    a = serfiq_scores(dlib_model, x, T=8, seed=1, batch_size=2)
    b = serfiq_scores(dlib_model, x, T=8, seed=1, batch_size=2)
    c = serfiq_scores(dlib_model, x, T=8, seed=2, batch_size=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("common", [True, False])
def test_serfiq_pooled_matches_formula(
    dlib_model: nn.Module, lfw_chips: np.ndarray, common: bool
) -> None:
    """Rebuild the pooled variant by hand: the masks from the same generator stream (one
    set shared by all images, or fresh ones per image), distances from scipy, then
    q = 2 / (1 + exp(mean distance))."""
    T, rate = 6, 0.3
    x = _nchw(lfw_chips[:2])
    got = serfiq_scores(
        dlib_model, x, T=T, rate=rate, placement="pooled", seed=4, common_masks=common
    )
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        f = dlib_model.features(x)
        rows = T if common else 2 * T
        keep = (torch.rand((rows, f.shape[1]), generator=gen) >= rate).float() / (1 - rate)
        if common:
            keep = keep.repeat(2, 1)
        emb = dlib_model.embed_from_features(f.repeat_interleave(T, 0) * keep).double()
    for i in range(2):
        e = emb[i * T : (i + 1) * T].numpy()
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        assert got[i] == pytest.approx(2 / (1 + math.exp(pdist(e).mean())), rel=1e-6)


def test_serfiq_common_masks_independent_of_batching(
    dlib_model: nn.Module, lfw_chips: np.ndarray
) -> None:
    """With shared masks an image's score does not depend on its batch or position."""
    x = _nchw(lfw_chips[:3])
    a = serfiq_scores(dlib_model, x, T=8, batch_size=3)
    b = serfiq_scores(dlib_model, x[[2, 0, 1]], T=8, batch_size=1)
    np.testing.assert_allclose(a[[2, 0, 1]], b, rtol=1e-5)


class _NoBlocks(nn.Module):
    """A backbone with the features/embed_from_features contract but no `blocks`."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def embed_from_features(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f)


class _Down(nn.Module):
    down = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _MaxPooled(_NoBlocks):
    """Has `blocks` with down units, but `features` max-pools: the tail split is invalid."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(_Down(), _Down())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).amax(dim=(2, 3))


def test_serfiq_placement_errors() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8) * 255
    assert serfiq_scores(_NoBlocks(), x, T=3, placement="pooled").shape == (2,)
    with pytest.raises(ValueError, match="blocks"):
        serfiq_scores(_NoBlocks(), x, T=3, placement="stage4")
    with pytest.raises(ValueError, match="placement"):
        serfiq_scores(_NoBlocks(), x, T=3, placement="input")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="does not reproduce"):
        serfiq_scores(_MaxPooled(), x, T=3, placement="stage4")
    with pytest.raises(ValueError, match="T must"):
        serfiq_scores(_NoBlocks(), x, T=1)
    with pytest.raises(ValueError, match="rate"):
        serfiq_scores(_NoBlocks(), x, rate=1.0)


# ------------------------------------------------------------------------------ baselines


def test_flip_consistency_symmetric_face(dlib_model: nn.Module, lfw_chips: np.ndarray) -> None:
    chip = lfw_chips[0].copy()
    w = chip.shape[1]
    chip[:, w - w // 2 :] = chip[:, : w // 2][:, ::-1]  # mirror the left half onto the right
    assert np.array_equal(chip, chip[:, ::-1])
    q = flip_consistency(dlib_model, _nchw(np.stack([chip, lfw_chips[1]])))
    assert q[0] == pytest.approx(1.0, abs=1e-6)
    assert -1 <= q[1] < 1 - 1e-4


def test_sharpness(lfw_chips: np.ndarray) -> None:
    flat = np.full((150, 150, 3), 128, np.uint8)
    s = sharpness(np.stack([lfw_chips[0], _degrade(lfw_chips[0]), flat]))
    assert s[0] > s[1] > s[2] == 0.0
    assert sharpness(lfw_chips[0]).shape == (1,)
    with pytest.raises(ValueError, match="uint8"):
        sharpness(lfw_chips.astype(np.float32))


# ---------------------------------------------------------------------------- CSV import

MANIFEST = pd.DataFrame(
    {
        "path": [
            "images/Ann/Ann_0001.jpg",
            "images/Ann/Ann_0002.jpg",
            "images/Bob/Bob_0001.jpg",
            "other/Bob/Bob_0001.jpg",
        ]
    }
)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return p


def test_csv_import_matches_exact_and_suffix(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "path,quality\n"
        "images/Ann/Ann_0001.jpg,0.5\n"  # exact
        "/data/lfw/images/Ann/Ann_0002.jpg, 1e-3\n"  # absolute: longer suffix
        "\n"
        "Carl/Carl_0001.jpg,0.7\n"  # matches nothing
        "Bob/Bob_0001.jpg,0.9\n"  # two manifest images end like this
        "x/images/Bob/Bob_0001.jpg,0.3\n",  # longest suffix is unique
    )
    labels, unmatched = import_label_csv(p, MANIFEST)
    assert labels.to_dict("list") == {
        "path": ["images/Ann/Ann_0001.jpg", "images/Ann/Ann_0002.jpg", "images/Bob/Bob_0001.jpg"],
        "quality": [0.5, 1e-3, 0.3],
    }
    assert unmatched["line"].tolist() == [5, 6]  # line numbers count the blank line
    assert unmatched["path"].tolist() == ["Carl/Carl_0001.jpg", "Bob/Bob_0001.jpg"]
    assert "ambiguous" in unmatched["reason"].iloc[1]


def test_csv_import_short_paths(tmp_path: Path) -> None:
    p = _write(tmp_path, "quality,path\n1,Ann/Ann_0001.jpg\n2,Ann_0002.jpg\n")
    labels, unmatched = import_label_csv(p, MANIFEST)
    assert labels["path"].tolist() == ["images/Ann/Ann_0001.jpg", "images/Ann/Ann_0002.jpg"]
    assert unmatched.empty


def test_csv_import_rejects_duplicates(tmp_path: Path) -> None:
    p = _write(tmp_path, "path,quality\na.jpg,1\nb.jpg,2\na.jpg,3\n")
    with pytest.raises(ValueError, match=r"labels\.csv.*duplicate.*'a\.jpg'.*lines 2, 4"):
        import_label_csv(p, MANIFEST)
    q = _write(tmp_path, "path,quality\nimages/Ann/Ann_0001.jpg,1\nAnn/Ann_0001.jpg,2\n")
    with pytest.raises(ValueError, match="same manifest image.*lines 2, 3"):
        import_label_csv(q, MANIFEST)


@pytest.mark.parametrize("bad", ["abc", "inf", "nan", ""])
def test_csv_import_rejects_bad_quality(tmp_path: Path, bad: str) -> None:
    p = _write(tmp_path, f"path,quality\nimages/Ann/Ann_0001.jpg,0.1\nimages/Bob/x.jpg,{bad}\n")
    with pytest.raises(ValueError, match=rf"labels\.csv.*line 3: '{bad}'"):
        import_label_csv(p, MANIFEST)


def test_csv_import_rejects_bad_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing column"):
        import_label_csv(_write(tmp_path, "file,score\na.jpg,1\n"), MANIFEST)
    with pytest.raises(ValueError, match="empty"):
        import_label_csv(_write(tmp_path, ""), MANIFEST)


def test_labels_settings_from_the_repo_params() -> None:
    """params.yaml `labels` as typed settings; a typo in a method's section is named."""
    from aikd.config import apply_overrides, load_params
    from aikd.fiqa.settings import labels_settings

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    cfg = labels_settings(params)
    assert cfg.serfiq.T == params["labels"]["serfiq"]["T"]
    assert cfg.sddfiqa.m == params["labels"]["sddfiqa"]["m"] and cfg.csv.path is None
    with pytest.raises(ValueError, match="labels.sddfiqa: unknown key\\(s\\) mm"):
        labels_settings(apply_overrides(params, ["labels.sddfiqa.mm=3"]))
    with pytest.raises(ValueError, match="labels.crfiqa: missing key\\(s\\) centre, variant"):
        labels_settings(apply_overrides(params, ["labels.crfiqa={}"]))
